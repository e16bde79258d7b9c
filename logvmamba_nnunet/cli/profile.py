"""``logvmamba-nnunet profile``: parameters, FLOPs (scan included), activation memory and speed per trainer."""

from __future__ import annotations

import argparse
from pathlib import Path

from logvmamba_nnunet.cli.validation import (
    UserInputError,
    load_json_object,
    reports_user_errors,
    require_at_least,
    require_dataset_name,
    require_environment,
    require_output_folder,
    user_errors,
)

DEFAULT_TRAINERS = ["nnUNetTrainer", "nnUNetTrainerUMambaEnc", "nnUNetTrainerUMambaBot", "nnUNetTrainerVSSMamba",
                    "nnUNetTrainerLVMamba", "nnUNetTrainerGVMamba", "nnUNetTrainerLoGVMamba"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile", help="compare trainers' networks: parameters, FLOPs incl. the scan, memory, speed",
        description="Build each trainer's network for one plan, as nnU-Net does, and report parameters, FLOPs of "
                    "one forward pass at the patch size (convolutions and matrix products plus the selective "
                    "scan, which usual FLOP counters miss), activation memory saved for backward, and optionally "
                    "forward/backward time. The plan comes from a preprocessed dataset (-d/-c/-p) or is "
                    "synthesised for --patch.")
    parser.add_argument("-d", "--dataset", help="dataset id or name in $nnUNet_preprocessed")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="configuration (default: %(default)s)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    parser.add_argument("--patch", type=int, nargs="+", help="synthesise an nnU-Net-style plan for this patch size")
    parser.add_argument("--channels", type=int, default=1, help="input channels with --patch (default: 1)")
    parser.add_argument("--classes", type=int, default=2, help="network outputs with --patch (default: 2)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=DEFAULT_TRAINERS,
                        help="trainer names (default: nnU-Net's default, U-Mamba-Enc/Bot and the LoG family)")
    parser.add_argument("--time", choices=("cpu", "cuda"), help="also time forward and forward+backward here")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (default: %(default)s)")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.set_defaults(func=run)


def load_plan(args: argparse.Namespace) -> tuple[dict, str, int, int]:
    """(plans, configuration, input channels, outputs) from a preprocessed dataset or a synthetic plan."""
    if args.patch:
        from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans

        if len(args.patch) not in (2, 3) or min(args.patch) < 1:
            sizes = " ".join(map(str, args.patch))
            raise UserInputError(f"--patch needs 2 or 3 positive sizes (Y X or Z Y X), got {sizes}")
        require_at_least("--channels", args.channels, 1)
        require_at_least("--classes", args.classes, 1)
        return synthetic_plans(args.patch), "synthetic", args.channels, args.classes
    if not args.dataset:
        raise UserInputError("give a dataset (-d, with -c/-p) or a patch size (--patch)")
    root = Path(require_environment("nnUNet_preprocessed", "profile -d reads the dataset's plans",
                                    "use --patch instead of -d"))
    from logvmamba_nnunet.profiling.profile import network_inputs_and_outputs

    folder = root / require_dataset_name(args.dataset, "nnUNet_preprocessed", root)
    plans_file = folder / f"{args.plans}.json"
    if not plans_file.exists():
        raise UserInputError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {args.dataset} "
                             "first, or check -p")
    fix = f"run nnUNetv2_plan_and_preprocess -d {args.dataset} again"
    plans = load_json_object(plans_file, "plans file", fix)
    if not isinstance(plans.get("configurations"), dict):
        raise UserInputError(f"{plans_file} has no 'configurations'; {fix}")
    if args.configuration not in plans["configurations"]:
        raise UserInputError(f"configuration {args.configuration!r} is not in {plans_file.name}; it has "
                             f"{', '.join(plans['configurations'])}")
    dataset_json = load_json_object(folder / "dataset.json", "dataset.json", fix)
    channels, heads = network_inputs_and_outputs(plans, args.configuration, dataset_json)
    return plans, args.configuration, channels, heads


@reports_user_errors("profile")
def run(args: argparse.Namespace) -> int:
    from logvmamba_nnunet.data.safe_output import staged_files
    from logvmamba_nnunet.profiling.profile import format_table, profile_trainers

    require_at_least("--repeats", args.repeats, 1)
    if args.time == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserInputError("--time cuda, but torch sees no CUDA device; use --time cpu")
    if args.out:
        out = Path(args.out).resolve()
        require_output_folder(out.parent, "--out")
        if not out.parent.is_dir():
            raise UserInputError(f"--out {args.out}: the folder {out.parent} does not exist; create it or choose "
                                 "another file")
        if out.is_dir():
            raise UserInputError(f"--out {args.out} is a folder; give a file name, e.g. {out / 'profile.md'}")
    plans, configuration, channels, classes = load_plan(args)
    with user_errors():
        rows = profile_trainers(args.trainers, plans, configuration, channels, classes, args.time, args.repeats)
    patch = tuple(plans["configurations"][configuration]["patch_size"])
    table = format_table(rows, patch, args.time)
    print(table)
    if args.out:
        with staged_files([args.out]) as (temporary,):
            temporary.write_text(table + "\n")
    return 0

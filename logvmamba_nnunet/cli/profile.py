"""``logvmamba-nnunet profile``: parameters, FLOPs (scan included), activation memory and speed per trainer."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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

        return synthetic_plans(args.patch), "synthetic", args.channels, args.classes
    if not args.dataset:
        raise ValueError("give a dataset (-d, with -c/-p) or a patch size (--patch).")
    if not os.environ.get("nnUNet_preprocessed"):
        raise ValueError("nnUNet_preprocessed is not set; export it or use --patch.")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(args.dataset)
    plans_file = folder / f"{args.plans}.json"
    if not plans_file.exists():
        raise ValueError(f"{plans_file} does not exist: run nnUNetv2_plan_and_preprocess first or check -p.")
    plans = json.loads(plans_file.read_text())
    if args.configuration not in plans["configurations"]:
        raise ValueError(f"configuration {args.configuration!r} is not in {plans_file.name}; it has "
                         f"{', '.join(plans['configurations'])}.")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    heads = PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads
    return plans, args.configuration, channels, heads


def run(args: argparse.Namespace) -> int:
    from logvmamba_nnunet.profiling.profile import format_table, profile_trainers

    try:
        plans, configuration, channels, classes = load_plan(args)
        rows = profile_trainers(args.trainers, plans, configuration, channels, classes, args.time, args.repeats)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    patch = tuple(plans["configurations"][configuration]["patch_size"])
    table = format_table(rows, patch, args.time)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0

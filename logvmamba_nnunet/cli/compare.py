"""``logvmamba-nnunet compare``: trained models side by side: cross-validation metrics, paired tests, network cost."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from logvmamba_nnunet.cli.validation import (
    UserInputError,
    reports_user_errors,
    require_at_least,
    require_dataset_name,
    require_environment,
    require_folder,
    require_output_folder,
    require_positive,
    user_errors,
)

if TYPE_CHECKING:
    from logvmamba_nnunet.evaluation.compare import Model

MAX_DEFAULT_NAME = 200  # file names may have 255 characters; the temporary names add about 25


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare trained models: Dice (HD95, NSD) over folds, Wilcoxon tests, parameters, FLOPs",
        description="Compare models trained with nnU-Net on the same dataset and configuration, read from "
                    "$nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION/fold_K/validation. Per model and "
                    "label/region: Dice (from nnU-Net's summary.json; with --surface-metrics also HD95 and NSD, "
                    "computed from the validation predictions) as mean ± standard error over folds; a paired "
                    "Wilcoxon signed-rank test per case of every model against the reference, Holm-corrected; "
                    "trainable parameters, forward GFLOPs and saved activations of the network at the plan's patch "
                    "size. Every model must have the same folds and validation cases. Writes PREFIX.csv, "
                    "PREFIX.json, PREFIX.md and PREFIX.png (per-case Dice box plots) and prints the tables. See "
                    "docs/usage.md, 'Comparing trainers'.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (e.g. 501 or Dataset501_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 3d_fullres or 2d")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, metavar="TRAINER",
                        help="trainer names, at least two (or one trainer twice with two plans in -p)")
    parser.add_argument("-p", "--plans", nargs="+", default=["nnUNetPlans"], metavar="PLANS",
                        help="plans identifier for all trainers, or one per trainer (default: %(default)s)")
    parser.add_argument("--reference", help="the trainer the others are tested against (default: the first -tr)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="PREFIX",
                        help="output prefix FOLDER/NAME for NAME.csv, .json, .md and .png (default: "
                             "$nnUNet_results/DatasetXXX_Name/compare_CONFIGURATION_TRAINER1_vs_TRAINER2...)")
    parser.add_argument("--surface-metrics", action="store_true",
                        help="also HD95 and NSD (and Dice from the same evaluation) of every validation prediction "
                             "against $nnUNet_preprocessed/DatasetXXX_Name/gt_segmentations; slower")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=2.0,
                        help="NSD tolerance with --surface-metrics (default: %(default)s)")
    parser.add_argument("-np", "--num-processes", type=int, default=None,
                        help="worker processes for --surface-metrics (default: nnU-Net's default, "
                             "$nnUNet_def_n_proc or 8)")
    parser.set_defaults(func=run)


def plans_per_trainer(trainers: list[str], plans: list[str]) -> list[str]:
    """``plans`` expanded to one identifier per trainer; :class:`UserInputError` for duplicate or too few models."""
    if len(plans) not in (1, len(trainers)):
        raise UserInputError(f"-p gives {len(plans)} plans identifiers for {len(trainers)} trainers; give one for "
                             "all trainers or one per trainer")
    plans = plans * len(trainers) if len(plans) == 1 else plans
    pairs = list(zip(trainers, plans, strict=True))
    twice = sorted({f"{trainer} with {plan}" for trainer, plan in pairs if pairs.count((trainer, plan)) > 1})
    if twice:
        raise UserInputError(f"-tr lists {', '.join(twice)} more than once; give each model once")
    if len(pairs) < 2:
        raise UserInputError("compare needs at least two models; give two or more trainers to -tr (or one trainer "
                             "twice with two plans identifiers in -p)")
    return plans


def find_reference(models: list[Model], name: str | None) -> Model:
    """The model named ``name`` (its label or, if unambiguous, its trainer); the first model for None."""
    if name is None:
        return models[0]
    labels = ", ".join(model.label for model in models)
    matches = [m for m in models if m.label == name] or [m for m in models if m.trainer == name]
    if len(matches) > 1:
        raise UserInputError(f"--reference {name} is ambiguous: it is compared with several plans; pass one of "
                             f"{labels}")
    if not matches:
        raise UserInputError(f"--reference {name} is not one of the compared trainers ({labels}); pass one of them, "
                             "or leave it out to test against the first -tr")
    return matches[0]


def default_prefix(dataset_folder: Path, configuration: str, models: list[Model]) -> Path:
    """``dataset_folder/compare_CONFIGURATION_A_vs_B...``; UserInputError when that name is too long for a file."""
    name = f"compare_{configuration}_{'_vs_'.join(model.label for model in models)}"
    if len(name) > MAX_DEFAULT_NAME:
        raise UserInputError(f"the default output name for {len(models)} models is {len(name)} characters, too long "
                             "for a file name; pass a shorter prefix with --output")
    return dataset_folder / name


@reports_user_errors("compare")
def run(args: argparse.Namespace) -> int:
    from nnunetv2.configuration import default_num_processes

    from logvmamba_nnunet.evaluation.compare import compare_models, find_models
    from logvmamba_nnunet.evaluation.compare_report import format_markdown, write_comparison

    results = Path(require_environment("nnUNet_results", "compare reads the trained models from it"))
    require_positive("--nsd-tolerance-mm", args.nsd_tolerance_mm)
    if args.num_processes is not None:
        require_at_least("--num-processes", args.num_processes, 1)
    plans = plans_per_trainer(args.trainers, args.plans)
    dataset = require_dataset_name(args.dataset, "nnUNet_results", results)
    dataset_folder = require_folder(results / dataset, "results folder",
                                    f"train a model of {dataset} first, or check -d and nnUNet_results")
    gt_folder = None
    if args.surface_metrics:
        preprocessed = Path(require_environment("nnUNet_preprocessed", "--surface-metrics reads the references in "
                                                "its gt_segmentations", "leave out --surface-metrics"))
        gt_folder = require_folder(preprocessed / dataset / "gt_segmentations", "reference folder",
                                   f"run nnUNetv2_plan_and_preprocess -d {args.dataset} (it writes gt_segmentations), "
                                   "or leave out --surface-metrics")
    with user_errors():
        models = find_models(dataset_folder, args.configuration, args.trainers, plans)
    reference = find_reference(models, args.reference)
    prefix = args.output if args.output is not None else default_prefix(dataset_folder, args.configuration, models)
    require_output_folder(Path(prefix).parent, "--output")
    num_processes = default_num_processes if args.num_processes is None else args.num_processes
    with user_errors():
        comparison = compare_models(dataset, args.configuration, models, reference.label, gt_folder,
                                    args.nsd_tolerance_mm, num_processes)
    files = write_comparison(comparison, prefix)
    print(format_markdown(comparison))
    print(f"figure: {files['png']}")
    print("wrote " + ", ".join(str(files[kind]) for kind in ("csv", "json", "md")))
    return 0

"""``logvmamba-nnunet evaluate``: Dice, IoU, HD95 and NSD per case and label/region; CSV, JSON and a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from logvmamba_nnunet.cli.validation import (
    UserInputError,
    reports_user_errors,
    require_at_least,
    require_folder,
    require_output_folder,
    require_positive,
    user_errors,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice, IoU, HD95 and NSD of a prediction folder against references",
        description="Score every prediction in PRED_FOLDER against the file of the same name in REF_FOLDER "
                    "(read with nnU-Net's reader for the dataset), per case and per label or region of "
                    "dataset.json. Distances use the image spacing. Empty masks: both empty gives Dice 1, "
                    "HD95 0, NSD 1; exactly one empty gives Dice 0, NSD 0 and HD95 = the image diagonal (or "
                    "--hd95-empty-penalty-mm), flagged in the output. Writes <OUT>.json, <OUT>_per_case.csv "
                    "and <OUT>_summary.csv and prints mean ± standard error over cases. See docs/metrics.md.")
    parser.add_argument("pred_folder", type=Path,
                        help="folder of predictions (e.g. nnU-Net's fold_X/validation)")
    parser.add_argument("ref_folder", type=Path, help="folder of reference segmentations (labelsTr/labelsTs)")
    parser.add_argument("-d", "--dataset-json", type=Path, default=None,
                        help="the dataset's dataset.json (default: PRED_FOLDER/dataset.json, which "
                             "nnUNetv2_predict writes)")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=2.0,
                        help="NSD tolerance in the spacing's unit: mm, or pixels for PNG "
                             "(default: %(default)s)")
    parser.add_argument("--hd95-empty-penalty-mm", type=float, default=None,
                        help="HD95 when exactly one of prediction and reference is empty (default: the image "
                             "diagonal, shape x spacing; 373.13 mm for BraTS)")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output prefix FOLDER/NAME for NAME.json, NAME_per_case.csv, NAME_summary.csv "
                             "(default: PRED_FOLDER/evaluation)")
    parser.add_argument("-np", "--num-processes", type=int, default=None,
                        help="worker processes (default: nnU-Net's default, $nnUNet_def_n_proc or 8)")
    parser.add_argument("--instance-ref", type=Path, default=None,
                        help="cell dataset only: folder of reference instance maps (e.g. instancesTs "
                             "written by `convert neurips-cell`); adds instance F1/Dice of the "
                             "interior/boundary prediction")
    parser.add_argument("--instance-iou-threshold", type=float, default=0.5,
                        help="IoU needed for a predicted cell to match a reference cell "
                             "(default: %(default)s)")
    parser.add_argument("--instance-border-margin", type=int, default=2,
                        help="ignore cells within this many pixels of the image border, as the challenge "
                             "does; 0 keeps all (default: %(default)s)")
    parser.set_defaults(func=run)


@reports_user_errors("evaluate")
def run(args: argparse.Namespace) -> int:
    from nnunetv2.configuration import default_num_processes

    from logvmamba_nnunet.evaluation.evaluate import evaluate_folders
    from logvmamba_nnunet.evaluation.report import format_table, summarize, write_reports

    require_folder(args.pred_folder, "prediction folder", "pass the folder nnUNetv2_predict wrote")
    require_folder(args.ref_folder, "reference folder", "pass the dataset's labelsTr or labelsTs folder")
    if args.instance_ref is not None:
        require_folder(args.instance_ref, "instance reference folder",
                       "pass the instancesTs folder that `logvmamba-nnunet convert neurips-cell` wrote")
    require_positive("--nsd-tolerance-mm", args.nsd_tolerance_mm)
    if args.hd95_empty_penalty_mm is not None:
        require_positive("--hd95-empty-penalty-mm", args.hd95_empty_penalty_mm)
    if args.num_processes is not None:
        require_at_least("--num-processes", args.num_processes, 1)
    if not 0 < args.instance_iou_threshold <= 1:
        raise UserInputError(f"--instance-iou-threshold must be in (0, 1], got {args.instance_iou_threshold:g}")
    require_at_least("--instance-border-margin", args.instance_border_margin, 0)
    out_prefix = args.out if args.out is not None else args.pred_folder / "evaluation"
    require_output_folder(Path(out_prefix).parent, "output prefix folder")
    num_processes = default_num_processes if args.num_processes is None else args.num_processes
    with user_errors():
        evaluation = evaluate_folders(args.pred_folder, args.ref_folder, args.dataset_json,
                                      args.nsd_tolerance_mm, args.hd95_empty_penalty_mm, num_processes,
                                      args.instance_ref, args.instance_iou_threshold,
                                      args.instance_border_margin)
    files = write_reports(evaluation, out_prefix)
    print(format_table(summarize(evaluation), args.nsd_tolerance_mm))
    if evaluation.references_without_prediction:
        missing = evaluation.references_without_prediction
        print(f"note: {len(missing)} reference case(s) have no prediction and were not evaluated: "
              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    print("wrote " + ", ".join(str(path) for path in files.values()))
    return 0

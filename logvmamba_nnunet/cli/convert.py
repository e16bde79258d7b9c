"""``logvmamba-nnunet convert``: the paper's datasets, as downloaded, to nnU-Net raw datasets."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# subcommand -> (module in logvmamba_nnunet.evaluation.converters, converter function, description)
CONVERTERS = {
    "brats2020": ("brats2020", "convert_brats2020",
                  "BraTS 2020 training data (MICCAI_BraTS2020_TrainingData/BraTS20_Training_XXX/...) -> "
                  "4 channels (T1, T1ce, T2, FLAIR), regions whole tumor / tumor core / enhancing tumor."),
    "acdc": ("acdc", "convert_acdc",
             "ACDC ('database' folder with training/ and testing/) -> RV, MYO, LV; test frames in imagesTs; "
             "patient-grouped splits_final.json (nnU-Net's ACDC converter underneath)."),
    "endovis2017": ("endovis2017", "convert_endovis2017",
                    "EndoVis 2017 (instrument_dataset_N/left_frames + ground_truth/<Instrument>_labels) -> "
                    "RGB PNG frames, 7 instrument types; video-grouped splits_final.json."),
    "neurips-cell": ("neurips_cell", "convert_neurips_cell",
                     "NeurIPS 2022 cell segmentation (images/ + labels/*_label.tiff) -> RGB PNG images, "
                     "interior/boundary labels, instance maps in instancesTr/instancesTs."),
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert one of the paper's datasets to nnU-Net raw format",
        description="Convert a dataset in its download layout to an nnU-Net raw dataset folder. The folder "
                    "is written to a temporary sibling and moved into place when complete; an existing "
                    "non-empty folder is only replaced with --overwrite. A splits_final.json (ACDC, EndoVis) "
                    "is also copied to $nnUNet_preprocessed/<dataset>/ when nnUNet_preprocessed is set.")
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True
    for command, (_, _, description) in CONVERTERS.items():
        sub = datasets.add_parser(command, help=description, description=description)
        sub.add_argument("input", type=Path, help="the dataset folder as downloaded (see the description)")
        target = sub.add_mutually_exclusive_group()
        target.add_argument("-o", "--output", type=Path, default=None,
                            help="dataset folder to write (default: $nnUNet_raw/<dataset name>)")
        target.add_argument("-d", "--dataset-id", default=None,
                            help="nnU-Net dataset id (e.g. 27) or full name (e.g. Dataset027_ACDC), written "
                                 "into $nnUNet_raw (default: the converter's id and name, see "
                                 "docs/reproduce.md)")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace an existing non-empty dataset folder (and a different splits file)")
        if command in ("endovis2017", "neurips-cell"):
            sub.add_argument("--test-input", type=Path, default=None,
                             help="test folder of the same layout, converted to imagesTs (and labelsTs where "
                                  "it has ground truth)")
        if command == "endovis2017":
            sub.add_argument("--no-crop", action="store_true",
                             help="keep 1920x1080 frames whole instead of cropping the 1280x1024 camera "
                                  "image")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from logvmamba_nnunet.evaluation.converters.dataset_folder import install_splits, resolve_dataset_folder

    module_name, function_name, _ = CONVERTERS[args.dataset]
    module = importlib.import_module(f"logvmamba_nnunet.evaluation.converters.{module_name}")
    options = {}
    if getattr(args, "test_input", None) is not None:
        options["test_source"] = args.test_input
    if getattr(args, "no_crop", False):
        options["crop"] = False
    try:
        target = resolve_dataset_folder(args.dataset_id, args.output, module.DEFAULT_DATASET_ID,
                                        module.DEFAULT_DATASET_NAME, nnUNet_raw.get())
        folder = getattr(module, function_name)(args.input, target, overwrite=args.overwrite, **options)
        splits = install_splits(folder, nnUNet_preprocessed.get(), args.overwrite)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    if splits is not None:
        print(f"wrote {splits} (cross-validation splits nnU-Net will use)")
    elif (folder / "splits_final.json").is_file():
        print(f"note: copy {folder / 'splits_final.json'} to $nnUNet_preprocessed/{folder.name}/ before "
              "training so that nnU-Net uses these splits.")
    return 0

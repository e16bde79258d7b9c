"""``logvmamba-nnunet convert``: the paper's datasets, as downloaded, to nnU-Net raw datasets."""

from __future__ import annotations

import argparse
import importlib
import zlib
from pathlib import Path

from logvmamba_nnunet.cli.validation import (
    UserInputError,
    report,
    require_folder,
    require_output_folder,
    user_errors,
)

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
    try:
        return _run(args)
    except UserInputError as error:
        report(f"convert {args.dataset}", error)
        return 2


def _run(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from logvmamba_nnunet.evaluation.converters.dataset_folder import install_splits, resolve_dataset_folder

    module_name, function_name, _ = CONVERTERS[args.dataset]
    module = importlib.import_module(f"logvmamba_nnunet.evaluation.converters.{module_name}")
    options = {}
    if getattr(args, "test_input", None) is not None:
        options["test_source"] = args.test_input
    if getattr(args, "no_crop", False):
        options["crop"] = False
    layout = f"pass the {args.dataset} folder as downloaded (see logvmamba-nnunet convert {args.dataset} --help)"
    require_folder(args.input, "input folder", layout)
    if getattr(args, "test_input", None) is not None:
        require_folder(args.test_input, "--test-input folder", layout)
    with user_errors():
        target = resolve_dataset_folder(args.dataset_id, args.output, module.DEFAULT_DATASET_ID,
                                        module.DEFAULT_DATASET_NAME, nnUNet_raw.get())
    require_output_folder(target.parent, "output folder")
    if target.resolve() == args.input.resolve() or target.resolve() in args.input.resolve().parents:
        raise UserInputError(f"output folder {target} is the input folder or contains it; write the converted "
                             "dataset elsewhere (-o or -d)")
    try:
        with user_errors():
            folder = getattr(module, function_name)(args.input, target, overwrite=args.overwrite, **options)
            splits = install_splits(folder, nnUNet_preprocessed.get(), args.overwrite)
    except (OSError, EOFError, zlib.error, RuntimeError) as error:
        raise _file_error(error, args, target) from None
    print(f"wrote {folder}")
    if splits is not None:
        print(f"wrote {splits} (cross-validation splits nnU-Net will use)")
    elif (folder / "splits_final.json").is_file():
        print(f"note: copy {folder / 'splits_final.json'} to $nnUNet_preprocessed/{folder.name}/ before "
              "training so that nnU-Net uses these splits.")
    return 0


def _file_error(error: BaseException, args: argparse.Namespace, target: Path) -> BaseException:
    """A UserInputError for a file the conversion could not read or write; other errors unchanged (bugs)."""
    if isinstance(error, RuntimeError) and not str(error).startswith("Exception thrown in SimpleITK"):
        return error
    name = getattr(error, "filename", None)
    inputs = [args.input.resolve()] + ([args.test_input.resolve()] if getattr(args, "test_input", None) else [])
    if isinstance(error, OSError) and name is not None and not any(
            folder == Path(name).resolve() or folder in Path(name).resolve().parents for folder in inputs):
        return UserInputError(f"cannot write {name}: {error.strerror or error}; check the free space and the "
                              f"permissions of {target.parent}")
    return UserInputError(f"cannot read {name or 'an input file'}: {error}; the download may be incomplete or "
                          f"damaged: download {args.dataset} again")

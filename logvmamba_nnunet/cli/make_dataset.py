"""``logvmamba-nnunet make-dataset``: write a procedural 2D or 3D dataset in nnU-Net raw format."""

from __future__ import annotations

import argparse
import os

from logvmamba_nnunet.cli.validation import (
    UserInputError,
    reports_user_errors,
    require_at_least,
    require_output_folder,
    user_errors,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-dataset", help="generate a synthetic dataset in nnU-Net raw format",
        description="Generate a procedural segmentation dataset (3D: organ + lesions in a textured MRI-like "
                    "volume; 2D: instrument shaft + tip in an RGB endoscopy-like frame) as DatasetXXX_NAME in "
                    "nnU-Net raw format, with held-out test cases and their labels.")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="2D (RGB PNG) or 3D (NIfTI); default 3")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    parser.add_argument("--name", default="LoGVMambaSynthetic", help="dataset name (default: %(default)s)")
    parser.add_argument("--raw-dir", default=os.environ.get("nnUNet_raw"),
                        help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    parser.add_argument("--num-train", type=int, default=8, help="training cases (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=2, help="held-out test cases (default: %(default)s)")
    parser.add_argument("--size", type=int, nargs="+", default=None,
                        help="spatial size, Z Y X or Y X (default: 40 48 40 in 3D, 100 130 in 2D)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset folder this command wrote before (never any other folder)")
    parser.set_defaults(func=run)


@reports_user_errors("make-dataset")
def run(args: argparse.Namespace) -> int:
    from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
    from logvmamba_nnunet.evaluation.converters.dataset_folder import dataset_folder_name

    if not args.raw_dir:
        raise UserInputError("no raw folder: nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw or pass "
                             "--raw-dir")
    require_output_folder(args.raw_dir, "raw folder")
    require_at_least("--num-train", args.num_train, 2, "nnU-Net needs cases to split")
    require_at_least("--num-test", args.num_test, 0)
    with user_errors():
        dataset_folder_name(args.dataset_id, args.name)  # nnU-Net's rules for the id and the name
        folder = make_synthetic_dataset(args.raw_dir, args.dataset_id, args.name, args.dims, args.num_train,
                                        args.num_test, args.size, args.seed, args.overwrite)
    print(f"wrote {folder}")
    return 0

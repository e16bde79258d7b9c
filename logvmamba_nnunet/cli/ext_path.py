"""``logvmamba-nnunet ext-path``: print the folder (or the whole value) for ``nnUNet_extTrainer``."""

from __future__ import annotations

import argparse
import os

from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV, ext_trainer_folder, with_ext_trainer_folder


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ext-path", help="print the folder to add to nnUNet_extTrainer",
        description="Print the folder that holds this package's trainers (nnunet_trainers/ in a clone). "
                    "Editable installs do not run the automatic registration, so use: "
                    "export nnUNet_extTrainer=$(logvmamba-nnunet ext-path --value)")
    parser.add_argument("--value", action="store_true",
                        help="print the current nnUNet_extTrainer with the folder appended (ready for export)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(with_ext_trainer_folder(os.environ.get(EXT_TRAINER_ENV)) if args.value else ext_trainer_folder())
    return 0

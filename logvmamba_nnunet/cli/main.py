"""Entry point of the ``logvmamba-nnunet`` command: one sub-module per subcommand, imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module in logvmamba_nnunet.cli exposing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "doctor": "doctor",
    "ext-path": "ext_path",
    "make-dataset": "make_dataset",
    "demo": "demo",
    "evaluate": "evaluate",
    "convert": "convert",
    "profile": "profile",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logvmamba-nnunet",
        description="LoG-VMamba for nnU-Net v2: checks, trainer discovery, demo, synthetic data, evaluation and "
                    "dataset conversion. Training and prediction use nnU-Net's own commands with "
                    "-tr nnUNetTrainerLoGVMamba.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(f"logvmamba_nnunet.cli.{module_name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Entry point of the ``logvmamba-nnunet`` command: one sub-module per subcommand, imported lazily.

User errors end the command with one line on stderr and a non-zero exit status (``cli.validation``): argument
errors as ``logvmamba-nnunet <command>: error: ...`` with exit status 2 (argparse's convention, without its usage
block), and a :class:`~logvmamba_nnunet.cli.validation.UserInputError` the same way. Other exceptions are bugs
and show their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from logvmamba_nnunet.cli.validation import UserInputError, one_line, report

# subcommand -> module in logvmamba_nnunet.cli exposing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "doctor": "doctor",
    "ext-path": "ext_path",
    "make-dataset": "make_dataset",
    "demo": "demo",
    "evaluate": "evaluate",
    "convert": "convert",
    "profile": "profile",
    "compare": "compare",
    "plan": "plan",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser (and, through ``add_subparsers``, every subparser) whose errors are one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="logvmamba-nnunet",
        description="LoG-VMamba for nnU-Net v2: checks, trainer discovery, demo, synthetic data, evaluation, "
                    "dataset conversion and comparison of trained models. Training and prediction use nnU-Net's own "
                    "commands with -tr nnUNetTrainerLoGVMamba.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(f"logvmamba_nnunet.cli.{module_name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserInputError as error:
        report(args.command, error)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Where the tests' nnU-Net subprocesses find trainers: the package's trainer folder and the tests' own."""

from __future__ import annotations

import os
from pathlib import Path

from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV, with_ext_trainer_folder

TEST_TRAINERS = Path(__file__).resolve().parent / "ext_trainers_for_tests"


def ext_trainer_value(environ: dict[str, str] | None = None) -> str:
    """``nnUNet_extTrainer`` for a subprocess: the tests' trainer folder, what ``environ`` (default: this process's
    environment) already lists, and the package's trainer folder."""
    existing = (os.environ if environ is None else environ).get(EXT_TRAINER_ENV, "")
    return with_ext_trainer_folder(os.pathsep.join([str(TEST_TRAINERS), *[e for e in existing.split(os.pathsep) if e]]))

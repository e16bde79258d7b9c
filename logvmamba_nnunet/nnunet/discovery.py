"""How nnU-Net finds this package's trainers (SPEC §8).

nnU-Net 2.8 looks for ``-tr`` trainer classes in its own package and then in every folder listed in the
``nnUNet_extTrainer`` environment variable (``os.pathsep``-separated), importing the modules found there as top-level
modules. This package ships one such folder, ``logvmamba_nnunet/ext_trainers``, holding a single thin module that
imports the real classes from :mod:`logvmamba_nnunet.nnunet_trainers`, so each class exists once whichever way it
is found.

The wheel installs ``logvmamba_nnunet_ext_trainer.pth``, which calls :func:`register_ext_trainer_path` at
interpreter start: it appends the folder to ``nnUNet_extTrainer`` (never replacing what is there) unless
``LOGVMAMBA_NNUNET_NO_AUTO_DISCOVERY`` is set. This module must stay cheap to import: standard library only.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

EXT_TRAINER_ENV = "nnUNet_extTrainer"
OPT_OUT_ENV = "LOGVMAMBA_NNUNET_NO_AUTO_DISCOVERY"


def ext_trainer_folder() -> str:
    """Absolute path of the folder to put on ``nnUNet_extTrainer``."""
    return str(Path(__file__).resolve().parent.parent / "ext_trainers")


def with_ext_trainer_folder(value: str | None) -> str:
    """``value`` (an ``nnUNet_extTrainer`` setting, possibly empty) with this package's folder appended once."""
    folder = ext_trainer_folder()
    entries = [e for e in (value or "").split(os.pathsep) if e]
    if folder not in entries:
        entries.append(folder)
    return os.pathsep.join(entries)


def register_ext_trainer_path(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Append the trainer folder to ``nnUNet_extTrainer`` in ``environ``; False when opted out."""
    if environ.get(OPT_OUT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    environ[EXT_TRAINER_ENV] = with_ext_trainer_folder(environ.get(EXT_TRAINER_ENV))
    return True

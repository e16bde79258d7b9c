"""How nnU-Net finds this project's trainers, and how each trainer class stays one object per process.

nnU-Net 2.8 looks for ``-tr`` trainer classes in its own package and then in every folder listed in the
``nnUNet_extTrainer`` environment variable (``os.pathsep``-separated). It puts the folder on ``sys.path`` for the
search, imports what it finds there (a package ``p`` in the folder as ``p.<module>``), and afterwards removes from
``sys.modules`` every module that the search loaded from that folder.

The trainers live in one import package with a specific name, ``logvmamba_nnunet_trainers``, inside a folder of
its own (the *trainer folder*), which is the folder ``nnUNet_extTrainer`` points at:

- a clone or an editable install: ``nnunet_trainers/`` at the top of the repository;
- an installed wheel: ``logvmamba-nnunet-trainers/`` in site-packages (a name that cannot be imported, so the
  trainers are reachable under one module name only).

The same folder is on ``sys.path`` (the wheel's ``.pth`` file, or the editable install's path entries), so
``import logvmamba_nnunet_trainers`` works outside nnU-Net's search too, under the same module names. Because
nnU-Net's search removes the modules it loaded, the package's ``__init__`` calls :func:`restore_trainer_modules`
and :func:`remember_trainer_modules`: the first import in a process defines the classes, and every later import
(by nnU-Net's next search, by ``pickle``, by user code) gets the very same module objects back.

The wheel installs ``logvmamba_nnunet_ext_trainer.pth``, which calls :func:`register_ext_trainer_path` at
interpreter start: it appends the trainer folder to ``nnUNet_extTrainer`` (never replacing what is there) unless
``LOGVMAMBA_NNUNET_NO_AUTO_DISCOVERY`` is set. This module must stay cheap to import: standard library only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from types import ModuleType

EXT_TRAINER_ENV = "nnUNet_extTrainer"
OPT_OUT_ENV = "LOGVMAMBA_NNUNET_NO_AUTO_DISCOVERY"
TRAINER_PACKAGE = "logvmamba_nnunet_trainers"
TRAINER_FOLDER_NAMES = ("logvmamba-nnunet-trainers", "nnunet_trainers")
"""Names of the trainer folder beside the ``logvmamba_nnunet`` folder: installed wheel, then repository."""

_KEPT_MODULES: dict[str, ModuleType] = {}


def ext_trainer_folder() -> str:
    """Absolute path of the trainer folder (the one to put on ``nnUNet_extTrainer``).

    Raises FileNotFoundError when neither layout is present (a broken install).
    """
    parent = Path(__file__).resolve().parents[2]
    for name in TRAINER_FOLDER_NAMES:
        folder = parent / name
        if (folder / TRAINER_PACKAGE / "__init__.py").is_file():
            return str(folder)
    raise FileNotFoundError(
        f"no trainer folder ({' or '.join(TRAINER_FOLDER_NAMES)}) with the package {TRAINER_PACKAGE} next to "
        f"{parent / 'logvmamba_nnunet'}; reinstall logvmamba-nnunet (pip install --force-reinstall logvmamba-nnunet)."
    )


def with_ext_trainer_folder(value: str | None) -> str:
    """``value`` (an ``nnUNet_extTrainer`` setting, possibly empty) with the trainer folder appended once."""
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


def remember_trainer_modules(package: str) -> None:
    """Keep references to the submodules of ``package`` as now loaded, for :func:`restore_trainer_modules`."""
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(package + "."):
            _KEPT_MODULES.setdefault(name, module)


def restore_trainer_modules(package: ModuleType) -> None:
    """Put the remembered submodules of ``package`` (a package being imported again after nnU-Net's search
    removed it from ``sys.modules``) back into ``sys.modules`` and onto the new package object, so that importing
    them returns the modules, and classes, defined the first time."""
    prefix = package.__name__ + "."
    for name, module in _KEPT_MODULES.items():
        if name.startswith(prefix):
            sys.modules.setdefault(name, module)
            if "." not in name[len(prefix):]:
                setattr(package, name[len(prefix):], sys.modules[name])

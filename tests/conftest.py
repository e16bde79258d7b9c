"""Shared fixtures: nnU-Net folders in a temporary directory and the environment the stock commands need."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV
from tests.trainer_paths import ext_trainer_value


@pytest.fixture
def nnunet_env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses running nnU-Net's console scripts against temporary folders."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2", "nnUNet_compile": "false",
                "OMP_NUM_THREADS": "2", EXT_TRAINER_ENV: ext_trainer_value(),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])})
    return env

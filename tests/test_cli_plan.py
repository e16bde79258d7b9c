"""``logvmamba-nnunet plan``: plans file written once, bad input refused with one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logvmamba_nnunet.cli.main import main
from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.planner import MEMORY_KEY
from tests.test_planner import DATASET, write_fingerprint


@pytest.fixture
def folders(tmp_path: Path, monkeypatch) -> Path:
    """nnU-Net folders (environment) with a tiny raw dataset and a fingerprint of 64^3 images."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    make_synthetic_dataset(tmp_path / "nnUNet_raw", 871, num_train=2, num_test=0, size=(8, 8, 8))
    write_fingerprint(tmp_path / "nnUNet_preprocessed", [[64, 64, 64]] * 2, [[1.0, 1.0, 1.0]] * 2)
    return tmp_path / "nnUNet_preprocessed" / DATASET


def test_plan_writes_a_plans_file_and_replans_it(folders, capsys):
    assert main(["plan", "-d", "871", "-c", "3d_fullres", "--gpu-memory", "2"]) == 0
    plans_file = folders / "nnUNetLoGVMambaPlans_2G.json"
    plans = json.loads(plans_file.read_text())
    assert plans["plans_name"] == "nnUNetLoGVMambaPlans_2G" and set(plans["configurations"]) == {"3d_fullres"}
    assert plans[MEMORY_KEY]["trainer"] == "nnUNetTrainerLoGVMamba" and plans[MEMORY_KEY]["gpu_memory_gb"] == 2
    out = capsys.readouterr().out
    assert "nnUNetv2_preprocess -d 871 -plans_name nnUNetLoGVMambaPlans_2G -c 3d_fullres" in out
    assert "estimated training memory" in out
    assert main(["plan", "-d", "871", "-c", "3d_fullres", "--gpu-memory", "2"]) == 0  # its own file: replanned
    assert [p.name for p in folders.glob(".*partial")] == []


@pytest.mark.parametrize("arguments, message", [
    (["--gpu-memory", "huge"], "give a number of GB"),
    (["--gpu-memory", "-1"], "give a number of GB"),
    (["--gpu-memory", "8", "-tr", "nnUNetTrainer"], "not a LoG-family trainer"),
    (["--gpu-memory", "8", "-tr", "nnUNetTrainerNoSuchThing"], "cannot find trainer"),
    (["--gpu-memory", "8", "-p", "a/b"], "not a valid plans name"),
    (["--gpu-memory", "8", "-np", "0"], "-np must be at least 1"),
])
def test_bad_input_gives_one_line_and_writes_nothing(folders, capsys, arguments, message):
    before = sorted(p.name for p in folders.iterdir())
    assert main(["plan", "-d", "871", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("logvmamba-nnunet plan: error:") and message in error
    assert sorted(p.name for p in folders.iterdir()) == before


def test_unknown_dataset_and_foreign_plans_file(folders, capsys):
    assert main(["plan", "-d", "872", "--gpu-memory", "8"]) == 2
    assert "unknown dataset id 872" in capsys.readouterr().err
    foreign = folders / "nnUNetPlans.json"
    foreign.write_text('{"plans_name": "nnUNetPlans"}')
    assert main(["plan", "-d", "871", "--gpu-memory", "8", "-p", "nnUNetPlans"]) == 2
    assert "--overwrite" in capsys.readouterr().err and foreign.read_text() == '{"plans_name": "nnUNetPlans"}'

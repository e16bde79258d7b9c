"""End to end on CPU: ``logvmamba-nnunet plan`` makes plans that nnU-Net's stock commands preprocess, train with and
predict with (tiny dataset, one epoch of two iterations)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from logvmamba_nnunet.data.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.e2e

DATASET_ID = 613
TRAINER = "nnUNetTrainerLoGVMamba_Minimal"
PLANS = "nnUNetLoGVMambaPlans_8G_Minimal"


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_plan_preprocess_train_predict(nnunet_env, tmp_path: Path):
    env = nnunet_env
    dataset = make_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, num_train=5, num_test=1, size=(16, 20, 16))
    planned = run([sys.executable, "-m", "logvmamba_nnunet.cli.main", "plan", "-d", str(DATASET_ID),
                   "-c", "3d_fullres", "--gpu-memory", "M", "-tr", TRAINER], env)
    preprocessed = Path(env["nnUNet_preprocessed"]) / dataset.name
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    assert (preprocessed / "dataset_fingerprint.json").is_file()  # extracted by nnU-Net, as none was there
    assert set(plans["configurations"]) == {"3d_fullres"}
    assert f"nnUNetv2_preprocess -d {DATASET_ID} -plans_name {PLANS} -c 3d_fullres" in planned.stdout

    run(["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name", PLANS, "-c", "3d_fullres", "-np", "1"], env)
    assert (preprocessed / f"{PLANS}_3d_fullres").is_dir()
    run(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"], env)
    fold = Path(env["nnUNet_results"]) / dataset.name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    output = tmp_path / "predicted"
    run(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(output), "-d", str(DATASET_ID),
         "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    assert [p.name for p in output.glob("*.nii.gz")] == ["LoGVMambaSynthetic_ts000.nii.gz"]

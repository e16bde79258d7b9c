"""End to end with nnU-Net's stock console scripts on CPU: plan, train (tiny LoG-VMamba trainer), resume,
predict twice, for 3d_fullres with nnU-Net's default and a ResEnc plans file. (2d: ``test_e2e_2d.py`` plans, trains
and predicts, ``test_checkpoints.py`` resumes, ``test_e2e_workflow.py`` runs five folds and the ensemble.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV
from tests.trainer_paths import ext_trainer_value

pytestmark = pytest.mark.e2e

DATASET_ID = 611
TRAINER = "nnUNetTrainerLoGVMamba_Tiny"


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        env[name] = str(root / name)
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2", "nnUNet_compile": "false",
                EXT_TRAINER_ENV: ext_trainer_value(),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])})
    dataset = make_synthetic_dataset(root / "nnUNet_raw", DATASET_ID, num_train=6, num_test=2, size=(20, 28, 24))
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], env)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2",
         "-pl", "nnUNetPlannerResEncM"], env)
    return env, dataset


def read(path: Path):
    import SimpleITK

    image = SimpleITK.ReadImage(str(path))
    return SimpleITK.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def predict(env, dataset: Path, output: Path, configuration: str, plans: str) -> list[Path]:
    run(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(output), "-d", str(DATASET_ID),
         "-c", configuration, "-f", "0", "-tr", TRAINER, "-p", plans, "-device", "cpu", "-npp", "1", "-nps", "1"],
        env)
    return sorted(output.glob("*.nii.gz"))


@pytest.mark.parametrize("configuration, plans", [("3d_fullres", "nnUNetPlans"),
                                                  ("3d_fullres", "nnUNetResEncUNetMPlans")])
def test_train_resume_predict(planned, tmp_path, configuration, plans):
    env, dataset = planned
    train = ["nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", TRAINER, "-p", plans, "-device", "cpu"]
    run(train, env)
    results = Path(env["nnUNet_results"]) / f"Dataset{DATASET_ID}_LoGVMambaSynthetic"
    fold = results / f"{TRAINER}__{plans}__{configuration}" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    assert (fold / "checkpoint_final.pth").exists()
    resumed = run(train + ["--c"], env)  # continues from checkpoint_final: no epoch is trained again
    assert "Epoch 0" not in resumed.stdout and "Mean Validation Dice" in resumed.stdout

    first = predict(env, dataset, tmp_path / "first", configuration, plans)
    second = predict(env, dataset, tmp_path / "second", configuration, plans)
    assert [p.name for p in first] == [p.name for p in second] == [
        "LoGVMambaSynthetic_ts000.nii.gz", "LoGVMambaSynthetic_ts001.nii.gz"]
    for a, b in zip(first, second):
        labels, spacing, origin, direction = read(a)
        again = read(b)
        np.testing.assert_array_equal(labels, again[0])
        assert (spacing, origin, direction) == again[1:]
        image = read(dataset / "imagesTs" / a.name.replace(".nii.gz", "_0000.nii.gz"))
        assert labels.shape == image[0].shape
        np.testing.assert_allclose(spacing, image[1])
        assert set(np.unique(labels)) <= {0, 1, 2}


def test_profile_on_planned_dataset(planned):
    """`logvmamba-nnunet profile` on a preprocessed dataset prints one row per trainer (four here)."""
    env, _ = planned
    trainers = ["nnUNetTrainer", "nnUNetTrainerVSSMamba", "nnUNetTrainerLVMamba", "nnUNetTrainerLoGVMamba"]
    result = run([sys.executable, "-m", "logvmamba_nnunet.cli.main", "profile", "-d", str(DATASET_ID),
                  "-c", "3d_fullres", "-tr", *trainers], env)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| nnUNetTrainer")]
    assert [row.split("|")[1].strip() for row in rows] == trainers

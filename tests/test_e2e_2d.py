"""End to end on CPU with nnU-Net's stock commands: a synthetic RGB 2D dataset, planned by nnU-Net to a patch that
is not a multiple of 32, trained with the paper's 2D model (small variant) from fake VMamba weights, predicted."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.networks.vmamba_pretrained import WEIGHTS_ENV_VAR
from tests.test_pretrained import TINY_TRAINER_ENCODER, write_fake_vmamba_checkpoint

DATASET_ID = 961
TRAINER = "nnUNetTrainerSwinUMambaLoG_Tiny"


def run(command: list[str], env: dict[str, str], timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.mark.e2e
def test_plan_train_predict_2d_rgb(tmp_path: Path, nnunet_env: dict[str, str]):
    raw = Path(nnunet_env["nnUNet_raw"])
    dataset = make_synthetic_dataset(raw, DATASET_ID, dims=2, num_train=5, num_test=1)
    env = {k: v for k, v in nnunet_env.items() if k != WEIGHTS_ENV_VAR}

    result = run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "2"], env)
    assert result.returncode == 0, output_of(result)[-3000:]
    plans_file = Path(env["nnUNet_preprocessed"]) / dataset.name / "nnUNetPlans.json"
    patch = json.loads(plans_file.read_text())["configurations"]["2d"]["patch_size"]
    assert any(p % 32 for p in patch), f"planned patch {patch}; this test needs one that is not a multiple of 32"

    train = ["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"]
    absent = {**env, WEIGHTS_ENV_VAR: str(tmp_path / "absent.pth")}
    result = run(train, absent)
    assert result.returncode != 0 and "not an existing file" in output_of(result)
    assert "Epoch 0" not in output_of(result)

    weights = tmp_path / "vmamba_small.pth"
    write_fake_vmamba_checkpoint(weights, *TINY_TRAINER_ENCODER)
    result = run(train, {**env, WEIGHTS_ENV_VAR: str(weights)})
    assert result.returncode == 0, output_of(result)[-3000:]
    fold = Path(env["nnUNet_results"]) / dataset.name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "loaded 65 of 65 encoder tensors" in log
    assert "pretrained tensors frozen until epoch 1." in log and "pretrained tensors trainable." in log

    predictions = tmp_path / "predictions"  # env has no weights variable: prediction never reloads them
    result = run(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(predictions), "-d", str(DATASET_ID),
                  "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    assert result.returncode == 0, output_of(result)[-3000:]
    images = sorted((dataset / "imagesTs").glob("*_0000.png"))
    outputs = sorted(predictions.glob("*.png"))
    assert [p.name for p in outputs] == [p.name.replace("_0000", "") for p in images]
    for image, output in zip(images, outputs):
        labels = np.asarray(Image.open(output))
        assert labels.shape == np.asarray(Image.open(image)).shape[:2]
        assert set(np.unique(labels)) <= {0, 1, 2}

"""Stock nnU-Net commands (plan, train, predict) with the U-Mamba trainers on tiny synthetic 3D and 2D datasets."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from logvmamba_nnunet.data.synthetic import make_synthetic_dataset

TRAINERS = {"nnUNetTrainerUMambaEnc_Tiny": "every stage", "nnUNetTrainerUMambaBot_Tiny": "bottleneck"}


def run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-4000:]}"


def read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path))
    import SimpleITK

    return SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(path)))


def mamba_stages(checkpoint: Path) -> set[int]:
    """Encoder stages whose stage layer holds a Mamba layer in the trained weights."""
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    return {int(key.split(".")[2]) for key in weights if key.startswith("encoder.stage_layers.") and "A_log" in key}


@pytest.mark.e2e
@pytest.mark.parametrize("dims, configuration, size, dataset_id", [
    (3, "3d_fullres", (16, 24, 20), 951), (2, "2d", (64, 80), 952)])
def test_umamba_trainers_with_stock_commands(tmp_path, nnunet_env, dims, configuration, size, dataset_id):
    dataset = make_synthetic_dataset(tmp_path / "nnUNet_raw", dataset_id, name="UMambaE2E", dims=dims, num_train=6,
                                     num_test=2, size=size)
    ident = str(dataset_id)
    run(["nnUNetv2_plan_and_preprocess", "-d", ident, "-c", configuration, "-np", "1"], nnunet_env)
    ending = ".nii.gz" if dims == 3 else ".png"
    for trainer, where in TRAINERS.items():
        run(["nnUNetv2_train", ident, configuration, "0", "-tr", trainer, "-device", "cpu"], nnunet_env)
        fold = tmp_path / "nnUNet_results" / dataset.name / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"
        assert (fold / "validation" / "summary.json").is_file()
        plans = json.loads((fold.parent / "plans.json").read_text())
        n_stages = plans["configurations"][configuration]["architecture"]["arch_kwargs"]["n_stages"]
        expected = set(range(n_stages)) if where == "every stage" else {n_stages - 1}
        assert mamba_stages(fold / "checkpoint_final.pth") == expected

        output = tmp_path / f"predictions_{trainer}"
        run(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(output), "-d", ident, "-c",
             configuration, "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], nnunet_env)
        predictions = sorted(output.glob(f"*{ending}"))
        assert [p.name for p in predictions] == sorted(p.name for p in (dataset / "labelsTs").glob(f"*{ending}"))
        for prediction in predictions:
            labels = read_labels(prediction)
            assert labels.shape == tuple(size)
            assert set(np.unique(labels)) <= {0, 1, 2}

"""NeurIPS 2022 cell converter on a tiny replica of the images/ + labels/ layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from skimage import io

from logvmamba_nnunet.evaluation.converters.neurips_cell import convert_neurips_cell, to_uint8_rgb
from logvmamba_nnunet.evaluation.instances import instances_to_semantic


def cells(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    instances = np.zeros(shape, dtype=np.uint16)
    for index in range(1, 5):
        y, x = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        instances[y:y + 6, x:x + 6] = index
    return instances


def make_split(root: Path, rng: np.random.Generator,
               unlabelled: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Three images as the challenge ships them: 8-bit gray PNG, 16-bit gray TIFF, 8-bit RGB PNG."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    instance_maps = {}
    images = {"cell_00001.png": rng.integers(0, 256, size=(20, 24), dtype=np.uint8),
              "cell_00002.tif": rng.integers(0, 65536, size=(22, 18), dtype=np.uint16),
              "cell_00003.png": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)}
    for name, image in images.items():
        stem = name.rsplit(".", 1)[0]
        if name.endswith(".tif"):
            tifffile.imwrite(root / "images" / name, image)
        else:
            io.imsave(root / "images" / name, image, check_contrast=False)
        if stem in unlabelled:
            continue
        instance_maps[stem] = cells(rng, image.shape[:2])
        tifffile.imwrite(root / "labels" / f"{stem}_label.tiff", instance_maps[stem])
    return instance_maps


def test_intensities_are_rescaled_per_channel_from_the_1st_to_99th_percentile():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(30, 20, 2)).astype(np.uint16)
    rgb = to_uint8_rgb(image)
    assert rgb.shape == (30, 20, 3) and rgb.dtype == np.uint8
    for c in range(2):
        values = image[..., c].astype(np.float64)
        low, high = np.percentile(values[values > 0], [1, 99])
        expected = np.round(np.clip((values - low) / (high - low), 0, 1) * 255)
        assert np.array_equal(rgb[..., c], expected.astype(np.uint8))
    assert not rgb[..., 2].any()
    gray = to_uint8_rgb(image[..., 0])
    assert np.array_equal(gray[..., 0], rgb[..., 0]) and np.array_equal(gray[..., 2], rgb[..., 0])
    with pytest.raises(ValueError, match="image"):
        to_uint8_rgb(np.zeros((4, 4, 5)))


def test_converted_dataset_passes_nnunet_verification(tmp_path: Path):
    rng = np.random.default_rng(1)
    train = make_split(tmp_path / "Training-labeled", rng)
    test = make_split(tmp_path / "Tuning", rng, unlabelled=("cell_00002",))
    target = convert_neurips_cell(tmp_path / "Training-labeled", tmp_path / "Dataset504_NeurIPSCell",
                                  test_source=tmp_path / "Tuning")
    verify_dataset_integrity(str(target), num_processes=1)

    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "interior": 1, "boundary": 2}
    assert dataset["numTraining"] == 3
    for stem, instances in train.items():
        assert io.imread(target / "imagesTr" / f"{stem}_0000.png").shape == (*instances.shape, 3)
        semantic = io.imread(target / "labelsTr" / f"{stem}.png")
        assert np.array_equal(semantic, instances_to_semantic(instances))
        assert np.array_equal(tifffile.imread(target / "instancesTr" / f"{stem}.tif"), instances)
    assert len(list((target / "imagesTs").iterdir())) == 3
    assert sorted(p.name for p in (target / "labelsTs").iterdir()) == ["cell_00001.png", "cell_00003.png"]
    assert np.array_equal(tifffile.imread(target / "instancesTs" / "cell_00003.tif"), test["cell_00003"])


def test_training_images_need_labels(tmp_path: Path):
    make_split(tmp_path / "train", np.random.default_rng(2), unlabelled=("cell_00003",))
    with pytest.raises(ValueError, match="cell_00003_label.tiff"):
        convert_neurips_cell(tmp_path / "train", tmp_path / "out")
    with pytest.raises(ValueError, match="'images'"):
        convert_neurips_cell(tmp_path / "nothing", tmp_path / "out")

"""BraTS 2020 converter on a tiny replica of MICCAI_BraTS2020_TrainingData."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

from logvmamba_nnunet.evaluation.converters.brats2020 import (
    MODALITIES,
    brats_labels_to_nnunet,
    convert_brats2020,
)

SHAPE = (6, 7, 8)


def write(path: Path, array: np.ndarray) -> None:
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    SimpleITK.WriteImage(image, str(path))


def brats_segmentation(rng: np.random.Generator) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[1:5, 1:6, 1:7] = 2  # edema
    seg[2:4, 2:5, 2:6] = 1  # necrotic core
    seg[2:4, 3:4, 3:5] = 4  # enhancing tumor
    seg[rng.random(SHAPE) < 0.05] = 4
    return seg


def make_replica(root: Path, rng: np.random.Generator, bad_label: bool = False) -> dict[str, np.ndarray]:
    """Two cases like the download; the second has case 355's oddly named segmentation and a .nii image."""
    segmentations = {}
    for index, case in enumerate(("BraTS20_Training_001", "BraTS20_Training_355")):
        folder = root / case
        folder.mkdir(parents=True)
        for modality in MODALITIES:
            suffix = ".nii" if (index == 1 and modality == "t2") else ".nii.gz"
            write(folder / f"{case}_{modality}{suffix}", rng.normal(size=SHAPE).astype(np.float32))
        seg = brats_segmentation(rng)
        if bad_label:
            seg[0, 0, 0] = 3
        seg_name = f"{case}_seg.nii.gz" if index == 0 else "W39_1998.09.19_Segm.nii"
        write(folder / seg_name, seg)
        segmentations[case] = seg
    (root / "name_mapping.csv").write_text("not a case\n")
    return segmentations


def test_brats_labels_are_renumbered_like_nnunets_dataset137():
    seg = np.array([0, 1, 2, 4, 4, 2])
    assert brats_labels_to_nnunet(seg).tolist() == [0, 2, 1, 3, 3, 1]
    with pytest.raises(ValueError, match=r"\[3\]"):
        brats_labels_to_nnunet(np.array([0, 3]))


def test_converted_dataset_passes_nnunet_verification(tmp_path: Path):
    rng = np.random.default_rng(0)
    segmentations = make_replica(tmp_path / "MICCAI_BraTS2020_TrainingData", rng)
    target = convert_brats2020(tmp_path / "MICCAI_BraTS2020_TrainingData", tmp_path / "Dataset501_BraTS2020")
    verify_dataset_integrity(str(target), num_processes=1)

    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                 "enhancing tumor": [3]}
    assert dataset["regions_class_order"] == [1, 2, 3] and dataset["numTraining"] == 2
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert len(list((target / "imagesTr").iterdir())) == 8
    for case, seg in segmentations.items():
        label = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(target / "labelsTr" / f"{case}.nii.gz")))
        assert np.array_equal(label == 3, seg == 4)  # enhancing tumor
        assert np.array_equal(np.isin(label, (2, 3)), np.isin(seg, (1, 4)))  # tumor core
        assert np.array_equal(label > 0, seg > 0)  # whole tumor
        t2 = SimpleITK.ReadImage(str(target / "imagesTr" / f"{case}_0002.nii.gz"))
        assert t2.GetSize() == tuple(reversed(SHAPE))


def test_unexpected_labels_stop_the_conversion_without_leaving_a_folder(tmp_path: Path):
    make_replica(tmp_path / "in", np.random.default_rng(1), bad_label=True)
    with pytest.raises(ValueError, match="BraTS uses 0, 1, 2 and 4"):
        convert_brats2020(tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_missing_inputs_are_named(tmp_path: Path):
    with pytest.raises(ValueError, match="no BraTS20_Training_XXX"):
        convert_brats2020(tmp_path, tmp_path / "out")
    case = tmp_path / "BraTS20_Training_002"
    case.mkdir()
    with pytest.raises(ValueError, match="BraTS20_Training_002_t1.nii.gz"):
        convert_brats2020(tmp_path, tmp_path / "out")

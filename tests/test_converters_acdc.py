"""ACDC converter on a tiny replica of the ACDC 'database' folder, and the convert command end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

from logvmamba_nnunet.cli import convert as convert_cli
from logvmamba_nnunet.evaluation.converters.acdc import convert_acdc

SHAPE = (4, 9, 10)


def write(path: Path, array: np.ndarray) -> None:
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 10.0))
    SimpleITK.WriteImage(image, str(path))


def make_replica(root: Path, rng: np.random.Generator, test_labels: bool = True) -> None:
    """Five training patients (ED and ES frames with ground truth, a 4D file, Info.cfg), one test patient
    (with ground truth, as in the current download, unless ``test_labels`` is False)."""
    for part, patients in (("training", range(1, 6)), ("testing", range(101, 102))):
        for number in patients:
            folder = root / part / f"patient{number:03d}"
            folder.mkdir(parents=True)
            (folder / "Info.cfg").write_text("ED: 1\nES: 7\n")
            write(folder / f"patient{number:03d}_4d.nii.gz", rng.normal(size=(2, *SHAPE)).astype(np.float32))
            for frame in (1, 7):
                stem = f"patient{number:03d}_frame{frame:02d}"
                write(folder / f"{stem}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
                if part == "training" or test_labels:
                    write(folder / f"{stem}_gt.nii.gz", rng.integers(0, 4, size=SHAPE).astype(np.uint8))


def test_converted_dataset_passes_nnunet_verification_with_patient_grouped_splits(tmp_path: Path):
    make_replica(tmp_path / "database", np.random.default_rng(0))
    target = convert_acdc(tmp_path / "database", tmp_path / "Dataset502_ACDC")
    verify_dataset_integrity(str(target), num_processes=1)
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} and dataset["numTraining"] == 10
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == [
        "patient101_frame01_0000.nii.gz", "patient101_frame07_0000.nii.gz"]
    for part, folder, stem in (("training", "labelsTr", "patient003_frame07"),
                               ("testing", "labelsTs", "patient101_frame01")):
        gt = SimpleITK.ReadImage(str(tmp_path / "database" / part / stem[:10] / f"{stem}_gt.nii.gz"))
        label = SimpleITK.ReadImage(str(target / folder / f"{stem}.nii.gz"))
        assert np.array_equal(SimpleITK.GetArrayFromImage(gt), SimpleITK.GetArrayFromImage(label))
    splits = json.loads((target / "splits_final.json").read_text())
    assert len(splits) == 5
    for split in splits:
        val_patients = {case[:len("patient000")] for case in split["val"]}
        train_patients = {case[:len("patient000")] for case in split["train"]}
        assert len(split["val"]) == 2 and not val_patients & train_patients


def test_test_set_without_ground_truth_gets_no_labels_folder(tmp_path: Path):
    make_replica(tmp_path / "database", np.random.default_rng(2), test_labels=False)
    target = convert_acdc(tmp_path / "database", tmp_path / "out")
    assert (target / "imagesTs").is_dir() and not (target / "labelsTs").exists()


def test_missing_testing_folder_is_named(tmp_path: Path):
    (tmp_path / "training").mkdir()
    with pytest.raises(ValueError, match="testing"):
        convert_acdc(tmp_path, tmp_path / "out")


def test_convert_command_writes_into_nnunet_raw_and_installs_the_splits(tmp_path, monkeypatch, capsys):
    make_replica(tmp_path / "database", np.random.default_rng(1))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    parser = argparse.ArgumentParser()
    convert_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["convert", "acdc", str(tmp_path / "database"), "-d", "27"])
    assert args.func(args) == 0
    assert (tmp_path / "raw" / "Dataset027_ACDC" / "labelsTr" / "patient001_frame01.nii.gz").is_file()
    installed = tmp_path / "preprocessed" / "Dataset027_ACDC" / "splits_final.json"
    assert installed.read_text() == (tmp_path / "raw" / "Dataset027_ACDC" / "splits_final.json").read_text()
    capsys.readouterr()
    assert args.func(args) == 2  # the folder now exists
    assert "--overwrite" in capsys.readouterr().err
    overwrite = parser.parse_args(["convert", "acdc", str(tmp_path / "database"), "-d", "27", "--overwrite"])
    assert overwrite.func(overwrite) == 0

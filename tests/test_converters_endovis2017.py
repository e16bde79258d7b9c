"""EndoVis 2017 converter on a tiny replica of the instrument_dataset_N layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from skimage import io

from logvmamba_nnunet.evaluation.converters.endovis2017 import convert_endovis2017, instrument_class

SHAPE = (12, 16)
INSTRUMENT_FOLDERS = ("Left_Prograsp_Forceps_labels", "Maryland_Bipolar_Forceps_labels", "Other_labels")


def make_sequence(folder: Path, rng: np.random.Generator, frames=("frame000", "frame001"), shape=SHAPE,
                  with_ground_truth=True) -> dict[str, dict[str, np.ndarray]]:
    """RGB frames and one binary-ish mask per instrument (values 0/10/20/30 like the part annotations)."""
    (folder / "left_frames").mkdir(parents=True)
    masks: dict[str, dict[str, np.ndarray]] = {}
    for frame in frames:
        frame_rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
        io.imsave(folder / "left_frames" / f"{frame}.png", frame_rgb, check_contrast=False)
        if not with_ground_truth:
            continue
        masks[frame] = {}
        for instrument in INSTRUMENT_FOLDERS:
            parts = rng.choice(np.array([10, 20, 30], dtype=np.uint8), size=shape)
            mask = np.where(rng.random(shape) < 0.3, parts, 0).astype(np.uint8)
            (folder / "ground_truth" / instrument).mkdir(parents=True, exist_ok=True)
            io.imsave(folder / "ground_truth" / instrument / f"{frame}.png", mask, check_contrast=False)
            masks[frame][instrument] = mask
    return masks


def expected_label(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Later folders (alphabetically) win: prograsp 2, then bipolar 1, then other 7."""
    label = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for instrument, class_id in zip(INSTRUMENT_FOLDERS, (2, 1, 7), strict=True):
        label[masks[instrument] > 0] = class_id
    return label


def test_instrument_folder_names_map_to_the_seven_classes():
    names = {"Bipolar_Forceps_labels": 1, "Maryland_Bipolar_Forceps_labels": 1,
             "Right_Prograsp_Forceps_labels": 2, "Large_Needle_Driver_Left_labels": 3,
             "Right_Vessel_Sealer": 4, "Left_Grasping_Retractor_labels": 5,
             "Monopolar_Curved_Scissors_labels": 6, "Other_labels": 7}
    assert {name: instrument_class(name) for name in names} == names
    with pytest.raises(ValueError, match="unknown instrument folder"):
        instrument_class("Stapler_labels")


def test_converted_dataset_passes_nnunet_verification(tmp_path: Path):
    rng = np.random.default_rng(0)
    train = {n: make_sequence(tmp_path / "train" / f"instrument_dataset_{n}", rng) for n in (1, 2)}
    test_masks = make_sequence(tmp_path / "test" / "instrument_dataset_1", rng, frames=("frame225",))
    target = convert_endovis2017(tmp_path / "train", tmp_path / "Dataset503_EndoVis2017",
                                 test_source=tmp_path / "test")
    verify_dataset_integrity(str(target), num_processes=1)

    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dataset["file_ending"] == ".png"
    assert len(dataset["labels"]) == 8 and dataset["numTraining"] == 4
    for number, frames in train.items():
        for frame, masks in frames.items():
            label = io.imread(target / "labelsTr" / f"seq{number}_{frame}.png")
            assert np.array_equal(label, expected_label(masks))
            image = io.imread(target / "imagesTr" / f"seq{number}_{frame}_0000.png")
            sequence = tmp_path / "train" / f"instrument_dataset_{number}"
            original = io.imread(sequence / "left_frames" / f"{frame}.png")
            assert np.array_equal(image, original)
    test_label = io.imread(target / "labelsTs" / "testseq1_frame225.png")
    assert np.array_equal(test_label, expected_label(test_masks["frame225"]))
    splits = json.loads((target / "splits_final.json").read_text())
    assert [sorted({case.split("_")[0] for case in split["val"]}) for split in splits] in (
        [["seq1"], ["seq2"]], [["seq2"], ["seq1"]])


def test_full_frames_are_cropped_to_the_camera_image(tmp_path: Path):
    rng = np.random.default_rng(1)
    sequences = [tmp_path / f"instrument_dataset_{n}" for n in (1, 2)]
    masks = make_sequence(sequences[0], rng, frames=("frame000",), shape=(1080, 1920))
    make_sequence(sequences[1], rng, frames=("frame000",))
    target = convert_endovis2017(tmp_path, tmp_path / "out")
    image = io.imread(target / "imagesTr" / "seq1_frame000_0000.png")
    original = io.imread(sequences[0] / "left_frames" / "frame000.png")
    assert image.shape == (1024, 1280, 3)
    assert np.array_equal(image, original[28:1052, 320:1600])
    label = io.imread(target / "labelsTr" / "seq1_frame000.png")
    assert np.array_equal(label, expected_label(masks["frame000"])[28:1052, 320:1600])
    kept = convert_endovis2017(tmp_path, tmp_path / "uncropped", crop=False)
    assert io.imread(kept / "imagesTr" / "seq1_frame000_0000.png").shape == (1080, 1920, 3)


def test_a_missing_mask_is_named(tmp_path: Path):
    make_sequence(tmp_path / "instrument_dataset_1", np.random.default_rng(2))
    (tmp_path / "instrument_dataset_1" / "ground_truth" / "Other_labels" / "frame001.png").unlink()
    with pytest.raises(ValueError, match="Other_labels/frame001.png is missing"):
        convert_endovis2017(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()

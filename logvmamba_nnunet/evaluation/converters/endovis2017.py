"""EndoVis 2017 robotic instrument (type) segmentation -> nnU-Net 2D raw dataset.

Input: ``instrument_dataset_N/left_frames/frameXXX.png`` (RGB) and per instrument a mask folder
``instrument_dataset_N/ground_truth/<Instrument>_labels/frameXXX.png`` (non-zero = instrument). The folder
name gives the class (case-insensitive substring; ``Left_``/``Right_``/``Maryland_`` prefixes are fine):

====  ===========================  =============================================
 1    Bipolar Forceps              ``bipolar_forceps``
 2    Prograsp Forceps             ``prograsp_forceps``
 3    Large Needle Driver          ``needle_driver``
 4    Vessel Sealer                ``vessel_sealer``
 5    Grasping Retractor           ``grasping_retractor``
 6    Monopolar Curved Scissors    ``monopolar_curved_scissors``
 7    Ultrasound Probe             ``other`` (the drop-in ultrasound probe)
====  ===========================  =============================================

This is the numbering of U-Mamba's Dataset704_Endovis17, which the paper follows. Where masks overlap, the
folder later in alphabetical order wins. Frames of 1920 x 1080 are cropped to the 1280 x 1024 camera image at
(x 320, y 28), as the challenge instructs (``crop=False`` keeps them whole). Output: one RGB PNG per frame
(``_0000.png``, channels R, G, B, nnU-Net's natural-image convention) and a uint8 label PNG, case ids
``seqN_frameXXX`` (training) and ``testseqN_frameXXX`` (test), and (with two or more videos)
``splits_final.json`` keeping each video in one fold.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from skimage import io

from logvmamba_nnunet.evaluation.converters.dataset_folder import (
    grouped_splits,
    staged_dataset_folder,
    write_splits,
)

DEFAULT_DATASET_ID = 503
DEFAULT_DATASET_NAME = "EndoVis2017"
INSTRUMENT_KEYWORDS = (
    ("bipolar_forceps", 1),
    ("prograsp_forceps", 2),
    ("needle_driver", 3),
    ("vessel_sealer", 4),
    ("grasping_retractor", 5),
    ("monopolar_curved_scissors", 6),
    ("other", 7),
)
LABELS = {"background": 0, "Bipolar Forceps": 1, "Prograsp Forceps": 2, "Large Needle Driver": 3,
          "Vessel Sealer": 4, "Grasping Retractor": 5, "Monopolar Curved Scissors": 6, "Ultrasound Probe": 7}
FULL_FRAME_SHAPE = (1080, 1920)
CAMERA_CROP = (slice(28, 28 + 1024), slice(320, 320 + 1280))
SEQUENCE_PATTERN = re.compile(r"^instrument_dataset_(\d+)$")


def instrument_class(mask_folder_name: str) -> int:
    """Class id (1-7) of a ground-truth mask folder name such as ``Left_Prograsp_Forceps_labels``."""
    lowered = mask_folder_name.lower()
    for keyword, class_id in INSTRUMENT_KEYWORDS:
        if keyword in lowered:
            return class_id
    raise ValueError(f"unknown instrument folder {mask_folder_name!r}; expected a name containing one of "
                     f"{[k for k, _ in INSTRUMENT_KEYWORDS]}.")


def _crop(array: np.ndarray, crop: bool) -> np.ndarray:
    return array[CAMERA_CROP] if crop and array.shape[:2] == FULL_FRAME_SHAPE else array


def _read_rgb(path: Path) -> np.ndarray:
    """An RGB(A) or grayscale image file -> (H, W, 3) uint8."""
    image = np.asarray(io.imread(path))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB image, got shape {image.shape}.")
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit colour, got {image.dtype}.")
    return image[..., :3]


def _read_mask(path: Path) -> np.ndarray:
    """A mask PNG (grayscale, or colour with equal channels) -> (H, W) boolean, non-zero = instrument."""
    mask = np.asarray(io.imread(path))
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, min(mask.shape[-1], 3))):
            raise ValueError(f"{path}: a colour mask with differing channels; expected a grayscale mask.")
        mask = mask[..., 0]
    return mask > 0


def _frame_label(ground_truth: Path, frame_name: str) -> np.ndarray:
    """(H, W) uint8 class map of one frame from all instrument folders of ``ground_truth``."""
    label: np.ndarray | None = None
    for mask_folder in sorted(p for p in ground_truth.iterdir() if p.is_dir()):
        class_id = instrument_class(mask_folder.name)
        mask_file = mask_folder / frame_name
        if not mask_file.is_file():
            raise ValueError(f"{mask_file} is missing; every instrument folder needs a mask for every frame.")
        mask = _read_mask(mask_file)
        if label is None:
            label = np.zeros(mask.shape, dtype=np.uint8)
        if mask.shape != label.shape:
            raise ValueError(f"{mask_file}: shape {mask.shape} differs from the other masks {label.shape}.")
        label[mask] = class_id
    if label is None:
        raise ValueError(f"{ground_truth} has no instrument mask folder.")
    return label


def _sequences(source: Path) -> list[tuple[int, Path]]:
    found = sorted((int(m.group(1)), p) for p in source.iterdir()
                   if p.is_dir() and (m := SEQUENCE_PATTERN.match(p.name)))
    if not found:
        raise ValueError(f"no instrument_dataset_N folder in {source}.")
    return found


def _convert_split(source: Path, prefix: str, images: Path, labels: Path | None,
                   crop: bool) -> dict[str, str]:
    """Write every frame of ``source``; returns case id -> sequence id. ``labels`` None skips ground truth."""
    groups = {}
    for number, sequence in _sequences(source):
        frames_folder = sequence / "left_frames"
        frames = sorted(frames_folder.glob("*.png")) if frames_folder.is_dir() else []
        if not frames:
            raise ValueError(f"{frames_folder} has no PNG frame.")
        ground_truth = sequence / "ground_truth"
        if labels is not None and not ground_truth.is_dir():
            raise ValueError(f"{ground_truth} does not exist; training sequences need ground truth.")
        for frame in frames:
            case = f"{prefix}{number}_{frame.stem}"
            image = _read_rgb(frame)
            io.imsave(images / f"{case}_0000.png", _crop(image, crop), check_contrast=False)
            if labels is not None:
                label = _frame_label(ground_truth, frame.name)
                if label.shape != image.shape[:2]:
                    raise ValueError(f"{frame}: frame shape {image.shape[:2]} differs from mask shape "
                                     f"{label.shape}.")
                io.imsave(labels / f"{case}.png", _crop(label, crop), check_contrast=False)
            groups[case] = f"{prefix}{number}"
    return groups


def convert_endovis2017(source: str | Path, target: str | Path, overwrite: bool = False,
                        test_source: str | Path | None = None, crop: bool = True) -> Path:
    """Convert the EndoVis 2017 training folder ``source`` (and optionally the test folder) into ``target``.

    Args:
        source: folder with ``instrument_dataset_1`` ... ``instrument_dataset_8``.
        target: nnU-Net raw dataset folder to create.
        overwrite: replace a non-empty ``target``.
        test_source: test folder of the same layout; its frames go to ``imagesTs`` and, where a
            ``ground_truth`` folder exists, its labels to ``labelsTs``.
        crop: crop 1920 x 1080 frames to the 1280 x 1024 camera image.
    Returns:
        ``target``.
    """
    source = Path(source)
    if not source.is_dir():
        raise ValueError(f"EndoVis 2017 folder {source} does not exist.")
    with staged_dataset_folder(target, overwrite) as folder:
        images, labels = folder / "imagesTr", folder / "labelsTr"
        images.mkdir()
        labels.mkdir()
        groups = _convert_split(source, "seq", images, labels, crop)
        if test_source is not None:
            test_source = Path(test_source)
            (folder / "imagesTs").mkdir()
            has_labels = all((p / "ground_truth").is_dir() for _, p in _sequences(test_source))
            if has_labels:
                (folder / "labelsTs").mkdir()
            _convert_split(test_source, "testseq", folder / "imagesTs",
                           folder / "labelsTs" if has_labels else None, crop)
        generate_dataset_json(str(folder), channel_names={0: "R", 1: "G", 2: "B"}, labels=dict(LABELS),
                              num_training_cases=len(groups), file_ending=".png",
                              dataset_name=Path(target).name,
                              reference="https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/",
                              license="see the EndoVis 2017 challenge data terms",
                              converted_by="logvmamba-nnunet convert endovis2017")
        num_videos = len(set(groups.values()))
        if num_videos >= 2:
            write_splits(folder, grouped_splits(groups, num_folds=min(5, num_videos)))
    return Path(target)

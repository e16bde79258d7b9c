"""Procedural segmentation datasets in nnU-Net raw format.

3D cases imitate an abdominal MRI: a textured body, an organ (label 1) whose outline is a randomly deformed
ellipsoid, and one or two brighter lesions (label 2, each about a fifth to a third of the organ's radius) inside
it, with a smooth bias field and Gaussian noise; saved as NIfTI with an anisotropic spacing. 2D cases imitate an
endoscopic RGB frame: reddish textured tissue, a shaft-like instrument (label 1) and a brighter tool tip (label 2);
saved as RGB PNG (nnU-Net's natural-image reader).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from logvmamba_nnunet.data.safe_output import staged_folder

SPACING_3D = (2.0, 1.5, 1.5)  # z, y, x in mm


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.linspace(-1.0, 1.0, s) for s in shape], indexing="ij")


def synthetic_case_3d(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One 3D case: image (Z, Y, X) float32 and labels (Z, Y, X) uint8 in {0, 1, 2}."""
    coords = _grid(shape)
    body = sum((c / r) ** 2 for c, r in zip(coords, (0.95, 0.85, 0.9))) < 1
    centre = rng.uniform(-0.2, 0.2, 3)
    radii = rng.uniform(0.45, 0.65, 3)
    level = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii))
    organ = (level + 0.35 * _smooth_noise(rng, shape, 4.0) < 1) & body
    lesions = np.zeros(shape, bool)
    inside = np.argwhere(organ)
    for _ in range(rng.integers(1, 3)):
        if len(inside) == 0:
            break
        seed = inside[rng.integers(len(inside))]
        radius = rng.uniform(0.2, 0.3)
        lesion_level = sum(((c - (2 * s / (n - 1) - 1)) / radius) ** 2 for c, s, n in zip(coords, seed, shape))
        lesions |= (lesion_level + 0.3 * _smooth_noise(rng, shape, 2.0) < 1) & organ
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[lesions] = 2
    texture = _smooth_noise(rng, shape, 1.2)
    image = np.where(body, 0.35 + 0.05 * texture, 0.02)
    image = np.where(organ, 0.62 + 0.06 * texture, image)
    image = np.where(lesions, 0.88 + 0.05 * texture, image)
    bias = 1.0 + 0.12 * _smooth_noise(rng, shape, 8.0)
    image = image * bias + rng.normal(0.0, 0.04, shape)
    return (1000.0 * image).astype(np.float32), labels


def synthetic_case_2d(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One 2D case: RGB image (Y, X, 3) uint8 and labels (Y, X) uint8 in {0, 1, 2}."""
    y, x = _grid(shape)
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.3, 0.3)
    across = np.cos(angle) * x + np.sin(angle) * y - offset
    along = -np.sin(angle) * x + np.cos(angle) * y
    tip = rng.uniform(-0.3, 0.3)
    width = rng.uniform(0.08, 0.14) * (1 + 0.15 * _smooth_noise(rng, shape, 6.0))
    shaft = (np.abs(across) < width) & (along > tip)
    head = ((across / (1.6 * width.mean())) ** 2 + ((along - tip + 0.12) / 0.14) ** 2 < 1) & ~shaft
    labels = np.zeros(shape, np.uint8)
    labels[shaft] = 1
    labels[head] = 2
    texture = _smooth_noise(rng, shape, 2.0)
    light = 0.75 + 0.25 * np.exp(-(x ** 2 + y ** 2) / 0.8)
    tissue = np.stack([0.70 + 0.08 * texture, 0.28 + 0.05 * texture, 0.25 + 0.05 * texture], -1)
    metal = np.stack([0.62 + 0.05 * texture] * 3, -1)
    bright = np.stack([0.85 + 0.04 * texture, 0.80 + 0.04 * texture, 0.55 + 0.04 * texture], -1)
    image = np.where(shaft[..., None], metal, tissue)
    image = np.where(head[..., None], bright, image) * light[..., None]
    image = image + rng.normal(0.0, 0.03, image.shape)
    return (255 * np.clip(image, 0, 1)).astype(np.uint8), labels


def _write_3d(path: Path, array: np.ndarray, is_label: bool) -> None:
    import SimpleITK

    image = SimpleITK.GetImageFromArray(array.astype(np.uint8 if is_label else np.float32))
    image.SetSpacing(tuple(reversed(SPACING_3D)))
    SimpleITK.WriteImage(image, str(path), useCompression=True)


def _write_2d(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def make_synthetic_dataset(raw_folder: str | Path, dataset_id: int, name: str = "LoGVMambaSynthetic",
                           dims: int = 3, num_train: int = 8, num_test: int = 2,
                           size: Sequence[int] | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """Write ``DatasetXXX_name`` under ``raw_folder`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json).

    Args:
        dims: 3 (NIfTI, 1 channel) or 2 (RGB PNG, 3 channels).
        size: spatial size, (Z, Y, X) or (Y, X); defaults (40, 48, 40) and (100, 130).
    Returns the dataset folder. Refuses to replace a folder it did not create (see ``safe_output``).
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}.")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be between 1 and 999 (nnU-Net's DatasetXXX), got {dataset_id}.")
    size = tuple(size) if size is not None else ((40, 48, 40) if dims == 3 else (100, 130))
    if len(size) != dims or min(size) < 8:
        raise ValueError(f"size must have {dims} entries of at least 8 voxels, got {list(size)}.")
    if num_train < 2 or num_test < 0:
        raise ValueError("num_train must be at least 2 (nnU-Net needs cases to split) and num_test >= 0.")
    raw_folder = Path(raw_folder)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    clashes = [p.name for p in raw_folder.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name]
    if clashes:
        raise FileExistsError(f"dataset id {dataset_id} is already used by {clashes[0]} in {raw_folder}; "
                              "choose another id.")
    destination = raw_folder / folder_name
    rng = np.random.default_rng(seed)
    ending = ".nii.gz" if dims == 3 else ".png"
    with staged_folder(destination, overwrite, "dataset folder") as staging:
        for split, count in (("Tr", num_train), ("Ts", num_test)):
            (staging / f"images{split}").mkdir()
            (staging / f"labels{split}").mkdir()
            for index in range(count):
                case = f"{name}_{split.lower()}{index:03d}"
                if dims == 3:
                    image, labels = synthetic_case_3d(rng, size)
                    _write_3d(staging / f"images{split}" / f"{case}_0000{ending}", image, False)
                    _write_3d(staging / f"labels{split}" / f"{case}{ending}", labels, True)
                else:
                    image, labels = synthetic_case_2d(rng, size)
                    _write_2d(staging / f"images{split}" / f"{case}_0000{ending}", image)
                    _write_2d(staging / f"labels{split}" / f"{case}{ending}", labels)
        channels = {"0": "MRI"} if dims == 3 else {"0": "R", "1": "G", "2": "B"}
        label_names = {"background": 0, "organ": 1, "lesion": 2} if dims == 3 else \
            {"background": 0, "shaft": 1, "tip": 2}
        (staging / "dataset.json").write_text(json.dumps({
            "channel_names": channels, "labels": label_names, "numTraining": num_train,
            "file_ending": ending, "name": name,
            "description": f"Synthetic {dims}D dataset generated by logvmamba-nnunet (seed {seed})."}, indent=2))
    return destination

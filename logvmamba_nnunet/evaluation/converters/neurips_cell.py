"""NeurIPS 2022 cell segmentation challenge -> nnU-Net 2D raw dataset of interior/boundary labels.

Input: ``images/<name>.{png,bmp,tif,tiff,jpg}`` (grayscale, RGB, 8 or 16 bit; sizes differ) and
``labels/<name>_label.tiff`` instance maps (0 background, k > 0 cell k), e.g. the challenge's
``Training-labeled`` folder; the tuning set (``Tuning``) has the same layout and can be the test split.

Output: every image as an 8-bit RGB PNG (``<name>_0000.png``, channels R, G, B): each channel rescaled from
its 1st-99th percentile of non-zero intensities to 0-255 (a grayscale image is repeated 3 times); labels
0 background, 1 interior, 2 boundary (:func:`~logvmamba_nnunet.evaluation.instances.instances_to_semantic`);
and the instance maps as ``instancesTr/<name>.tif`` (``instancesTs`` for the test split) for the instance
evaluation (``logvmamba-nnunet evaluate --instance-ref``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from skimage import io

from logvmamba_nnunet.evaluation.converters.dataset_folder import staged_dataset_folder
from logvmamba_nnunet.evaluation.instances import instances_to_semantic

DEFAULT_DATASET_ID = 504
DEFAULT_DATASET_NAME = "NeurIPSCell"
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = ("_label.tiff", "_label.tif", "_label.png")
LABELS = {"background": 0, "interior": 1, "boundary": 2}
PERCENTILES = (1.0, 99.0)


def _read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W) or (H, W, C) array (TIFF through tifffile, channel-first TIFFs transposed)."""
    image = np.asarray(tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else io.imread(path))
    if image.ndim == 3 and image.shape[0] <= 4 < image.shape[-1]:
        image = np.moveaxis(image, 0, -1)
    return image


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image of any numeric type -> (H, W, 3) uint8.

    Each channel is rescaled linearly so that the 1st and 99th percentiles of its non-zero values map to 0
    and 255 (clipped); an all-zero channel stays 0, a constant one becomes 255 where non-zero. Grayscale is
    repeated to 3 channels, a fourth (alpha) channel is dropped, a 2-channel image gets a zero third channel.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or not 1 <= image.shape[-1] <= 4:
        raise ValueError(f"expected an (H, W) or (H, W, C<=4) image, got shape {image.shape}.")
    channels = image.shape[-1]
    if channels == 4:
        image = image[..., :3]
    output = np.zeros(image.shape[:2] + (3,), dtype=np.uint8)
    for c in range(image.shape[-1]):
        output[..., c] = _rescale_channel(image[..., c].astype(np.float64))
    if channels == 1:
        output[..., 1] = output[..., 2] = output[..., 0]
    return output


def _rescale_channel(channel: np.ndarray) -> np.ndarray:
    non_zero = channel[channel > 0]
    if non_zero.size == 0:
        return np.zeros(channel.shape, dtype=np.uint8)
    low, high = np.percentile(non_zero, PERCENTILES)
    if high <= low:
        return np.where(channel > 0, 255, 0).astype(np.uint8)
    return np.round(np.clip((channel - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)


def _find_label(labels_folder: Path, stem: str) -> Path | None:
    """``<stem>_label.tiff`` (or ``.tif``/``.png``) in ``labels_folder``, or None."""
    for suffix in LABEL_SUFFIXES:
        path = labels_folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _convert_split(source: Path, images_out: Path, labels_out: Path | None, instances_out: Path | None,
                   require_labels: bool) -> int:
    """Write every image of ``source/images`` (and its labels); returns the number of images."""
    images_folder, labels_folder = source / "images", source / "labels"
    if not images_folder.is_dir():
        raise ValueError(f"{images_folder} does not exist; pass the folder that holds 'images' and 'labels'.")
    files = sorted(p for p in images_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image ({', '.join(IMAGE_SUFFIXES)}) in {images_folder}.")
    for path in files:
        image = _read_image(path)
        io.imsave(images_out / f"{path.stem}_0000.png", to_uint8_rgb(image), check_contrast=False)
        label_file = _find_label(labels_folder, path.stem) if labels_folder.is_dir() else None
        if label_file is None:
            if require_labels:
                raise ValueError(f"no instance map {path.stem}_label.tiff in {labels_folder}.")
            continue
        instances = _read_image(label_file)
        if instances.shape != image.shape[:2]:
            raise ValueError(f"{label_file}: shape {instances.shape} differs from image shape "
                             f"{image.shape[:2]}.")
        io.imsave(labels_out / f"{path.stem}.png", instances_to_semantic(instances), check_contrast=False)
        tifffile.imwrite(instances_out / f"{path.stem}.tif", instances.astype(np.uint32))
    return len(files)


def convert_neurips_cell(source: str | Path, target: str | Path, overwrite: bool = False,
                         test_source: str | Path | None = None) -> Path:
    """Convert the cell training folder ``source`` (``images``, ``labels``) and optionally a test folder.

    Args:
        source: labelled training folder; every image needs an instance map.
        target: nnU-Net raw dataset folder to create.
        overwrite: replace a non-empty ``target``.
        test_source: folder of the same layout (e.g. the tuning set); its images go to ``imagesTs``, its
            labels (where present) to ``labelsTs`` and ``instancesTs``.
    Returns:
        ``target``.
    """
    source = Path(source)
    with staged_dataset_folder(target, overwrite) as folder:
        outputs = [folder / name for name in ("imagesTr", "labelsTr", "instancesTr")]
        for output in outputs:
            output.mkdir()
        num_training = _convert_split(source, *outputs, require_labels=True)
        if test_source is not None:
            test_outputs = [folder / name for name in ("imagesTs", "labelsTs", "instancesTs")]
            for output in test_outputs:
                output.mkdir()
            _convert_split(Path(test_source), *test_outputs, require_labels=False)
        generate_dataset_json(str(folder), channel_names={0: "R", 1: "G", 2: "B"}, labels=dict(LABELS),
                              num_training_cases=num_training, file_ending=".png",
                              dataset_name=Path(target).name,
                              reference="https://neurips22-cellseg.grand-challenge.org/",
                              license="see the NeurIPS 2022 cell segmentation challenge data terms",
                              converted_by="logvmamba-nnunet convert neurips-cell")
    return Path(target)

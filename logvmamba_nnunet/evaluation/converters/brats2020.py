"""BraTS 2020 training data -> nnU-Net raw dataset with the ET/TC/WT regions.

Input: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_XXX/`` holding
``BraTS20_Training_XXX_{t1,t1ce,t2,flair,seg}.nii.gz`` (``.nii`` also accepted; case 355's segmentation,
shipped under another name, is found as the case folder's only other file with "seg" in its name).

Output, following nnU-Net's own BraTS converter (Dataset137): channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR; labels
renumbered so the regions nest, 1 = edema (BraTS 2), 2 = necrotic/non-enhancing core (BraTS 1),
3 = enhancing tumor (BraTS 4); regions whole tumor (1, 2, 3), tumor core (2, 3), enhancing tumor (3) with
``regions_class_order`` (1, 2, 3), so nnU-Net trains ET/TC/WT with sigmoid outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from logvmamba_nnunet.evaluation.converters.dataset_folder import staged_dataset_folder

DEFAULT_DATASET_ID = 501
DEFAULT_DATASET_NAME = "BraTS2020"
MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}
LABELS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)


def _nifti(case_folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = case_folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def find_segmentation(case_folder: Path) -> Path:
    """``<case>_seg.nii[.gz]``, else the folder's one NIfTI file with "seg" in its name that is no image."""
    case = case_folder.name
    named = _nifti(case_folder, f"{case}_seg")
    if named is not None:
        return named
    images = {f"{case}_{m}{s}" for m in MODALITIES for s in (".nii.gz", ".nii")}
    candidates = [p for p in case_folder.iterdir() if "seg" in p.name.lower() and p.name not in images
                  and p.name.lower().endswith((".nii", ".nii.gz"))]
    if len(candidates) != 1:
        raise ValueError(f"{case_folder}: expected {case}_seg.nii.gz (or one other '*seg*' NIfTI file), "
                         f"found {sorted(p.name for p in candidates) or 'none'}.")
    return candidates[0]


def brats_labels_to_nnunet(segmentation: np.ndarray, source: str = "segmentation") -> np.ndarray:
    """BraTS labels (0, 1 NCR, 2 ED, 4 ET) -> nested labels (0, 1 ED, 2 NCR, 3 ET), uint8, same shape."""
    unexpected = sorted(set(np.unique(segmentation).tolist()) - set(BRATS_TO_NNUNET))
    if unexpected:
        raise ValueError(f"{source} has labels {unexpected}; BraTS uses 0, 1, 2 and 4.")
    lookup = np.zeros(max(BRATS_TO_NNUNET) + 1, dtype=np.uint8)
    for brats, nnunet in BRATS_TO_NNUNET.items():
        lookup[brats] = nnunet
    return lookup[segmentation.astype(np.int64)]


def _copy_image(source: Path, destination: Path) -> None:
    """Copy a ``.nii.gz``; rewrite a ``.nii`` as ``.nii.gz``."""
    if source.name.endswith(".nii.gz"):
        shutil.copyfile(source, destination)
    else:
        SimpleITK.WriteImage(SimpleITK.ReadImage(str(source)), str(destination))


def _convert_case(case_folder: Path, images_folder: Path, labels_folder: Path) -> None:
    case = case_folder.name
    for channel, modality in enumerate(MODALITIES):
        source = _nifti(case_folder, f"{case}_{modality}")
        if source is None:
            raise ValueError(f"{case_folder}: missing {case}_{modality}.nii.gz.")
        _copy_image(source, images_folder / f"{case}_{channel:04d}.nii.gz")
    segmentation_file = find_segmentation(case_folder)
    image = SimpleITK.ReadImage(str(segmentation_file))
    labels = brats_labels_to_nnunet(SimpleITK.GetArrayFromImage(image), str(segmentation_file))
    converted = SimpleITK.GetImageFromArray(labels)
    converted.CopyInformation(image)
    SimpleITK.WriteImage(converted, str(labels_folder / f"{case}.nii.gz"))


def convert_brats2020(source: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Convert the BraTS 2020 training folder ``source`` into the nnU-Net raw dataset folder ``target``.

    Returns:
        ``target``.
    """
    source = Path(source)
    if not source.is_dir():
        raise ValueError(f"BraTS 2020 folder {source} does not exist.")
    cases = sorted(p for p in source.iterdir() if p.is_dir() and p.name.startswith("BraTS"))
    if not cases:
        raise ValueError(f"no BraTS20_Training_XXX case folder in {source}; pass the "
                         "MICCAI_BraTS2020_TrainingData folder.")
    with staged_dataset_folder(target, overwrite) as folder:
        images, labels = folder / "imagesTr", folder / "labelsTr"
        images.mkdir()
        labels.mkdir()
        for case_folder in cases:
            _convert_case(case_folder, images, labels)
        generate_dataset_json(str(folder), channel_names={0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"},
                              labels=dict(LABELS), num_training_cases=len(cases), file_ending=".nii.gz",
                              regions_class_order=REGIONS_CLASS_ORDER, dataset_name=Path(target).name,
                              reference="https://www.med.upenn.edu/cbica/brats2020/",
                              license="see the BraTS 2020 data usage agreement",
                              converted_by="logvmamba-nnunet convert brats2020")
    return Path(target)

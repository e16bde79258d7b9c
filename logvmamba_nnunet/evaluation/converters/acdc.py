"""ACDC -> nnU-Net raw dataset, reusing nnU-Net's own converter (``Dataset027_ACDC``) for files and splits.

Input: the ACDC ``database`` folder with ``training/patientXXX/patientXXX_frameYY.nii.gz`` (+ ``_gt``) and
``testing/patientXXX/...``. Output: one case per frame (end-diastole and end-systole), labels 1 RV,
2 MYO (myocardium), 3 LV (cavity) as in nnU-Net's converter, test frames in ``imagesTs`` and, where the
download has them, their ground truths in ``labelsTs`` (nnU-Net's converter leaves those out), and
``splits_final.json`` with both frames of a patient in the same fold (nnU-Net's ACDC split).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nnunetv2.dataset_conversion.Dataset027_ACDC import copy_files, create_ACDC_split
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from logvmamba_nnunet.evaluation.converters.dataset_folder import staged_dataset_folder, write_splits

DEFAULT_DATASET_ID = 502
DEFAULT_DATASET_NAME = "ACDC"
LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}


def copy_test_labels(testing_folder: Path, labels_folder: Path) -> int:
    """Copy each ``patientXXX/patientXXX_frameYY_gt.nii.gz`` of ``testing_folder`` to
    ``labels_folder/patientXXX_frameYY.nii.gz``; returns the number copied."""
    ground_truths = sorted(testing_folder.glob("patient*/patient*_frame*_gt.nii.gz"))
    for ground_truth in ground_truths:
        shutil.copyfile(ground_truth, labels_folder / ground_truth.name.replace("_gt", ""))
    return len(ground_truths)


def convert_acdc(source: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Convert the ACDC folder ``source`` (with ``training`` and ``testing``) into the raw dataset ``target``.

    Returns:
        ``target``.
    """
    source = Path(source)
    for part in ("training", "testing"):
        if not (source / part).is_dir():
            raise ValueError(f"{source / part} does not exist; pass ACDC's 'database' folder, which holds "
                             "'training' and 'testing'.")
    with staged_dataset_folder(target, overwrite) as folder:
        images, labels, test_images = folder / "imagesTr", folder / "labelsTr", folder / "imagesTs"
        for sub_folder in (images, labels, test_images):
            sub_folder.mkdir()
        num_training_cases = copy_files(source, images, labels, test_images)
        if num_training_cases == 0:
            raise ValueError(f"no patientXXX_frameYY.nii.gz image in {source / 'training'}.")
        generate_dataset_json(str(folder), channel_names={0: "cineMRI"}, labels=dict(LABELS),
                              num_training_cases=num_training_cases, file_ending=".nii.gz",
                              dataset_name=Path(target).name,
                              reference="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
                              license="see the ACDC data usage terms",
                              converted_by="logvmamba-nnunet convert acdc")
        test_labels = folder / "labelsTs"
        test_labels.mkdir()
        if copy_test_labels(source / "testing", test_labels) == 0:
            test_labels.rmdir()
        write_splits(folder, create_ACDC_split(str(labels)))
    return Path(target)

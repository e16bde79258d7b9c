"""Where a converted dataset goes and how it gets there: nnU-Net dataset names, a staging folder moved into
place only when the conversion succeeded, and cross-validation splits."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DATASET_NAME_PATTERN = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9][A-Za-z0-9_-]*)$")
SPLITS_FILE = "splits_final.json"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset%03d_<name>``, checked against nnU-Net's rules (id 1-999, no ``__`` in the name)."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be in 1..999, got {dataset_id}.")
    folder = f"Dataset{dataset_id:03d}_{name}"
    if "__" in name or not DATASET_NAME_PATTERN.match(folder):
        raise ValueError(f"dataset name {name!r} is not valid for nnU-Net: use letters, digits, '-' and "
                         "single '_' only.")
    return folder


def resolve_dataset_folder(dataset: str | None, output: str | Path | None, default_id: int, default_name: str,
                           raw_folder: str | None) -> Path:
    """The folder a converter writes.

    Args:
        dataset: dataset id (``"27"``, the default name is used) or full name (``"Dataset027_ACDC"``),
            placed in ``raw_folder``; None and no ``output`` means the converter's default id and name.
        output: explicit folder (wins over ``dataset``).
        default_id, default_name: the converter's defaults.
        raw_folder: nnU-Net's raw folder (``$nnUNet_raw``); needed unless ``output`` is given.
    Raises:
        ValueError: ``raw_folder`` missing, a bad name, or another dataset with the same id in ``raw_folder``.
    """
    if output is not None:
        return Path(output)
    if dataset is None:
        name = dataset_folder_name(default_id, default_name)
    elif dataset.isdigit():
        name = dataset_folder_name(int(dataset), default_name)
    else:
        match = DATASET_NAME_PATTERN.match(dataset)
        if match is None or "__" in dataset:
            raise ValueError(f"{dataset!r} is neither a dataset id nor a name like Dataset027_ACDC.")
        name = dataset
    if not raw_folder:
        raise ValueError("no output folder: set nnUNet_raw or pass --output.")
    raw = Path(raw_folder)
    prefix = name[:len("Dataset000_")]
    clashes = sorted(p.name for p in raw.glob(f"{prefix}*") if p.is_dir() and p.name != name) \
        if raw.is_dir() else []
    if clashes:
        raise ValueError(f"{raw} already holds {clashes[0]} with the id of {name}; nnU-Net needs unique ids: "
                         "choose another id (-d) or remove that folder.")
    return raw / name


@contextmanager
def staged_dataset_folder(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to ``target``; move it to ``target`` when the block succeeds.

    A failure removes the staging folder and leaves ``target`` untouched. A non-empty ``target`` is only
    replaced with ``overwrite``.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass --overwrite to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def grouped_splits(groups: Mapping[str, str], num_folds: int = 5,
                   seed: int = 12345) -> list[dict[str, list[str]]]:
    """Cross-validation splits that keep each group (patient, video) in one fold.

    Args:
        groups: case id -> group id.
        num_folds: number of folds; at most the number of groups.
        seed: shuffles the groups before dealing them round-robin to the folds.
    Returns:
        nnU-Net's ``splits_final.json`` content: one ``{"train": [...], "val": [...]}`` per fold, sorted ids.
    """
    group_ids = sorted(set(groups.values()))
    if len(group_ids) < num_folds:
        raise ValueError(f"{len(group_ids)} groups cannot fill {num_folds} folds; every fold needs a group.")
    order = np.random.RandomState(seed).permutation(len(group_ids))
    fold_of_group = {group_ids[index]: position % num_folds for position, index in enumerate(order)}
    splits = []
    for fold in range(num_folds):
        val = sorted(case for case, group in groups.items() if fold_of_group[group] == fold)
        train = sorted(case for case, group in groups.items() if fold_of_group[group] != fold)
        splits.append({"train": train, "val": val})
    return splits


def write_splits(dataset_folder: Path, splits: list[dict[str, list[str]]]) -> Path:
    """Save ``splits_final.json`` in the raw dataset folder (nnU-Net reads it from the preprocessed folder:
    :func:`install_splits` copies it there)."""
    path = dataset_folder / SPLITS_FILE
    path.write_text(json.dumps(splits, indent=1))
    return path


def install_splits(dataset_folder: Path, preprocessed_folder: str | None,
                   overwrite: bool = False) -> Path | None:
    """Copy the raw folder's ``splits_final.json`` to ``<preprocessed_folder>/<dataset name>/``.

    Returns the copy, or None when there is nothing to copy or no preprocessed folder is set.
    Raises:
        FileExistsError: a different splits file is already there and ``overwrite`` is False.
    """
    source = dataset_folder / SPLITS_FILE
    if not source.is_file() or not preprocessed_folder:
        return None
    destination = Path(preprocessed_folder) / dataset_folder.name / SPLITS_FILE
    if destination.is_file() and destination.read_text() != source.read_text() and not overwrite:
        raise FileExistsError(f"{destination} exists with other splits; pass --overwrite to replace it.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination

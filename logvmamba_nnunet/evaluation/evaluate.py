"""Evaluate a folder of predictions against a folder of references, the nnU-Net way.

Files are read with the reader/writer nnU-Net picks for the dataset (``dataset.json``: ``file_ending`` and
``overwrite_image_reader_writer``), so every format nnU-Net supports works. The labels or regions to
evaluate come from ``dataset.json`` ``labels``: an integer entry is one label, a list entry is a region (the
union of its labels), as in nnU-Net's region-based training (BraTS). Voxels labelled ``ignore`` in the
reference count as background in both maps.

Bad input raises ``ValueError`` with a message that names the file and the fix: a missing folder or dataset.json, a
damaged image (truncated NIfTI or PNG), a prediction whose grid (shape, spacing) differs from its reference's,
label values that dataset.json does not define.

For the cell dataset an instance evaluation can be added: the predicted interior/boundary map is turned into
instances (:mod:`logvmamba_nnunet.evaluation.instances`) and matched to the reference instance maps.
"""

from __future__ import annotations

import json
import multiprocessing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from skimage import io as skimage_io

from logvmamba_nnunet.evaluation.instances import (
    DEFAULT_BORDER_MARGIN,
    DEFAULT_IOU_THRESHOLD,
    InstanceMetrics,
    match_instances,
    remove_border_instances,
    semantic_to_instances,
)
from logvmamba_nnunet.evaluation.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    BinaryMetrics,
    compute_binary_metrics,
)

INSTANCE_FILE_SUFFIXES = (".tif", ".tiff", "_label.tiff", "_label.tif", ".png")


@dataclass(frozen=True)
class Target:
    """A label (one entry in ``labels``) or region (several) to evaluate, named as in dataset.json."""

    name: str
    labels: tuple[int, ...]

    def mask(self, segmentation: np.ndarray) -> np.ndarray:
        """Boolean mask of the voxels of ``segmentation`` (any shape) whose label is in this target."""
        return np.isin(segmentation, self.labels)


@dataclass(frozen=True)
class InstanceSettings:
    """Instance evaluation of interior/boundary predictions against instance maps in ``reference_folder``."""

    reference_folder: Path
    interior_label: int
    boundary_label: int
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    border_margin: int = DEFAULT_BORDER_MARGIN


@dataclass
class CaseResult:
    """Metrics of one case: per target, plus instance scores when requested."""

    case: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    metrics: dict[str, BinaryMetrics]
    instances: InstanceMetrics | None = None


@dataclass
class Evaluation:
    """All case results of a folder evaluation with the settings that produced them."""

    targets: list[Target]
    cases: list[CaseResult]
    settings: dict
    references_without_prediction: list[str] = field(default_factory=list)


def targets_from_dataset_json(dataset_json: dict) -> list[Target]:
    """The foreground labels/regions of ``dataset_json['labels']``, in file order (``background`` and
    ``ignore`` excluded)."""
    if "labels" not in dataset_json:
        raise ValueError("dataset.json has no 'labels' entry; pass the dataset.json of the dataset the "
                         "predictions belong to.")
    targets = []
    for name, value in dataset_json["labels"].items():
        if name in ("background", "ignore"):
            continue
        labels = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        if not labels or 0 in labels:
            raise ValueError(f"dataset.json label {name!r} = {value!r}: a label or region must list "
                             "labels > 0.")
        targets.append(Target(name, labels))
    if not targets:
        raise ValueError("dataset.json 'labels' has no foreground label to evaluate.")
    return targets


def label_values_of(dataset_json: dict) -> set[int]:
    """Every value a segmentation of the dataset may hold: all labels of dataset.json, background and ignore
    included (for regions: every label a region lists)."""
    values = set()
    for value in dataset_json["labels"].values():
        values.update(int(v) for v in value) if isinstance(value, (list, tuple)) else values.add(int(value))
    return values


def _ignore_label_of(dataset_json: dict) -> int | None:
    """The ``ignore`` label of dataset.json, or None."""
    value = dataset_json["labels"].get("ignore")
    return None if value is None else int(value)


def find_case_files(pred_folder: Path, ref_folder: Path, file_ending: str
                    ) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair predictions with references by file name.

    Returns:
        ``([(case, prediction file, reference file), ...], [reference cases without a prediction])``.
    Raises:
        ValueError: no prediction, or a prediction without a reference.
    """
    predictions = sorted(p for p in pred_folder.iterdir() if p.name.endswith(file_ending) and p.is_file())
    references = {p.name for p in ref_folder.iterdir() if p.name.endswith(file_ending) and p.is_file()}
    if not predictions:
        raise ValueError(f"no '*{file_ending}' prediction in {pred_folder}.")
    orphans = [p.name for p in predictions if p.name not in references]
    if orphans:
        raise ValueError(f"{len(orphans)} prediction(s) without a reference in {ref_folder}: {orphans[:5]}; "
                         "check that both folders belong to the same dataset.")
    predicted = {p.name for p in predictions}
    pairs = [(p.name[:-len(file_ending)], p, ref_folder / p.name) for p in predictions]
    missing = sorted(name[:-len(file_ending)] for name in references - predicted)
    return pairs, missing


def _find_instance_file(folder: Path, case: str) -> Path:
    """The reference instance map of ``case`` in ``folder`` (``<case>.tif``, ``.tiff``, ``_label.tiff``,
    ``_label.tif`` or ``.png``)."""
    for suffix in INSTANCE_FILE_SUFFIXES:
        candidate = folder / f"{case}{suffix}"
        if candidate.is_file():
            return candidate
    raise ValueError(f"no instance map for case {case!r} in {folder} (looked for "
                     f"{', '.join(case + s for s in INSTANCE_FILE_SUFFIXES)}).")


def _check_nifti_complete(path: Path) -> None:
    """ValueError if the NIfTI file ``path`` is truncated or damaged (SimpleITK reads a truncated .nii.gz
    without complaint, so nibabel reads it once fully)."""
    import nibabel

    try:
        np.asanyarray(nibabel.load(str(path)).dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nibabel.filebasedimages.ImageFileError) as error:
        raise ValueError(f"cannot read {path}: {' '.join(str(error).split())} (the file is truncated or damaged); "
                         "write or copy it again.") from None


def read_segmentation(reader: BaseReaderWriter, path: Path) -> tuple[np.ndarray, dict]:
    """``reader.read_seg(path)``, with a damaged or unreadable file reported as a ValueError that names it."""
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)
    try:
        return reader.read_seg(str(path))
    except (RuntimeError, OSError, EOFError, SyntaxError, zlib.error) as error:  # SimpleITK, PIL, gzip
        raise ValueError(f"cannot read {path}: {' '.join(str(error).split())[:300]} (the file is damaged or not "
                         "an image of the dataset's file_ending); write or copy it again.") from None


def _dimensions(shape: tuple[int, ...]) -> str:
    """'3D (20x30x40)' or '2D (30x40)' for nnU-Net's (X, Y, Z) layout, where 2D images have X = 1."""
    spatial = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    return f"{len(spatial)}D ({'x'.join(map(str, spatial))})"


def check_label_values(case: str, segmentation: np.ndarray, path: Path, role: str, allowed: set[int]) -> None:
    """ValueError if ``segmentation`` holds a value that is not a label of dataset.json."""
    unknown = sorted(int(v) for v in np.unique(segmentation) if int(v) not in allowed or v != int(v))
    if unknown:
        raise ValueError(f"case {case}: {role} {path} holds label value(s) {unknown[:10]} that dataset.json does "
                         f"not define (its labels: {sorted(allowed)}); pass the dataset.json of the dataset the "
                         "files belong to (-d), or fix the file.")


def evaluate_case(case: str, pred_file: Path, ref_file: Path, reader_writer_class: type[BaseReaderWriter],
                  targets: Sequence[Target], nsd_tolerance_mm: float, hd95_penalty_mm: float | None,
                  ignore_label: int | None, instance_settings: InstanceSettings | None,
                  label_values: set[int] | None = None) -> CaseResult:
    """Read one prediction/reference pair (nnU-Net layout (1, X, Y, Z); 2D images have X = 1) and score it.

    ``label_values``: the values the maps may hold (every label of dataset.json); None skips that check.
    """
    reader = reader_writer_class()
    pred, pred_properties = read_segmentation(reader, pred_file)
    ref, ref_properties = read_segmentation(reader, ref_file)
    spacing = tuple(float(s) for s in ref_properties["spacing"])
    fix = "predictions must be on their reference's grid (nnUNetv2_predict writes them so); check both folders."
    if pred.shape != ref.shape:
        raise ValueError(f"case {case}: prediction shape {pred.shape[1:]}, {_dimensions(pred.shape[1:])}, differs "
                         f"from reference shape {ref.shape[1:]}, {_dimensions(ref.shape[1:])} ({pred_file}, "
                         f"{ref_file}); {fix}")
    if not np.allclose(pred_properties["spacing"], spacing, rtol=1e-4):
        raise ValueError(f"case {case}: the geometry differs: prediction spacing "
                         f"{tuple(float(s) for s in pred_properties['spacing'])} ({pred_file}), reference spacing "
                         f"{spacing} ({ref_file}); {fix}")
    pred, ref = pred[0], ref[0]
    if label_values is not None:
        check_label_values(case, pred, pred_file, "prediction", label_values)
        check_label_values(case, ref, ref_file, "reference", label_values)
    if ignore_label is not None:
        ignored = ref == ignore_label
        pred = np.where(ignored, 0, pred)
        ref = np.where(ignored, 0, ref)
    metrics = {t.name: compute_binary_metrics(t.mask(pred), t.mask(ref), spacing, nsd_tolerance_mm,
                                              hd95_penalty_mm) for t in targets}
    instances = None
    if instance_settings is not None:
        instances = _evaluate_instances(case, pred, instance_settings)
    return CaseResult(case, tuple(int(s) for s in ref.shape), spacing, metrics, instances)


def _evaluate_instances(case: str, pred: np.ndarray, settings: InstanceSettings) -> InstanceMetrics:
    """Instance scores of one 2D interior/boundary prediction (shape (1, H, W) or (H, W))."""
    reference = np.asarray(skimage_io.imread(_find_instance_file(settings.reference_folder, case)))
    semantic = pred.reshape(pred.shape[-2:]) if pred.ndim == 3 and pred.shape[0] == 1 else pred
    if reference.shape != semantic.shape:
        raise ValueError(f"case {case}: instance map shape {reference.shape} differs from prediction shape "
                         f"{semantic.shape}.")
    predicted = semantic_to_instances(semantic, settings.interior_label, settings.boundary_label)
    return match_instances(remove_border_instances(reference.astype(np.int64), settings.border_margin),
                           remove_border_instances(predicted, settings.border_margin), settings.iou_threshold)


def _instance_settings_for(dataset_json: dict, reference_folder: Path, iou_threshold: float,
                          border_margin: int) -> InstanceSettings:
    """Instance settings with the ``interior`` and ``boundary`` labels of dataset.json."""
    labels = dataset_json["labels"]
    if "interior" not in labels or "boundary" not in labels:
        raise ValueError("instance evaluation needs dataset.json labels named 'interior' and 'boundary' (as "
                         "written by `logvmamba-nnunet convert neurips-cell`); found "
                         f"{sorted(labels)}.")
    if not reference_folder.is_dir():
        raise ValueError(f"instance reference folder {reference_folder} does not exist.")
    return InstanceSettings(reference_folder, int(labels["interior"]), int(labels["boundary"]), iou_threshold,
                            border_margin)


def _load_dataset_json(dataset_json: str | Path | dict | None, pred_folder: Path) -> dict:
    """dataset.json as a dict: given, read from a path, or (None) the copy nnU-Net writes with predictions."""
    if isinstance(dataset_json, dict):
        return dataset_json
    path = Path(dataset_json) if dataset_json is not None else pred_folder / "dataset.json"
    fix = "pass the dataset.json of the dataset the predictions belong to (-d)."
    if not path.is_file():
        raise ValueError(f"dataset.json not found at {path}; {fix}")
    try:
        dataset = load_json(str(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {fix}") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"{path} is not a dataset.json (a JSON object with 'labels' and 'file_ending'); {fix}")
    return dataset


def _check_dataset_json(dataset: dict) -> None:
    """ValueError unless ``dataset`` has what the evaluation reads: ``file_ending`` and integer ``labels``."""
    fix = "pass the dataset.json of the dataset the predictions belong to (-d)."
    if not isinstance(dataset.get("file_ending"), str) or not dataset["file_ending"]:
        raise ValueError(f"dataset.json has no 'file_ending' (e.g. \".nii.gz\"); {fix}")
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        raise ValueError(f"dataset.json has no 'labels' object; {fix}")
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"dataset.json label {name!r} = {value!r} is not a label value (an integer >= 0) or a "
                             f"region (a list of them); {fix}")


def evaluate_folders(pred_folder: str | Path, ref_folder: str | Path,
                     dataset_json: str | Path | dict | None = None,
                     nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, hd95_penalty_mm: float | None = None,
                     num_processes: int = 1, instance_ref_folder: str | Path | None = None,
                     instance_iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                     instance_border_margin: int = DEFAULT_BORDER_MARGIN) -> Evaluation:
    """Score every prediction in ``pred_folder`` against the file of the same name in ``ref_folder``.

    Args:
        pred_folder: predictions (e.g. nnU-Net's ``validation`` or ``nnUNetv2_predict`` output folder).
        ref_folder: references (``labelsTr``/``labelsTs``).
        dataset_json: the dataset's dataset.json (path or dict); None reads ``pred_folder/dataset.json``.
        nsd_tolerance_mm: NSD tolerance in the spacing's unit (pixels for PNG images).
        hd95_penalty_mm: HD95 when exactly one mask is empty; None means the image diagonal.
        num_processes: worker processes (1 evaluates in this process).
        instance_ref_folder: reference instance maps for the cell instance evaluation; None skips it.
        instance_iou_threshold, instance_border_margin: instance matching threshold and border exclusion.
    """
    pred_folder, ref_folder = Path(pred_folder), Path(ref_folder)
    for folder, role, fix in ((pred_folder, "prediction", "pass the folder nnUNetv2_predict wrote."),
                              (ref_folder, "reference", "pass the dataset's labelsTr or labelsTs folder.")):
        if not folder.is_dir():
            state = "is not a folder" if folder.exists() else "does not exist"
            raise ValueError(f"{role} folder {folder} {state}; {fix}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
    dataset = _load_dataset_json(dataset_json, pred_folder)
    if "labels" in dataset:
        _check_dataset_json(dataset)
    targets = targets_from_dataset_json(dataset)
    pairs, missing = find_case_files(pred_folder, ref_folder, dataset["file_ending"])
    reader_writer_class = determine_reader_writer_from_dataset_json(dataset, str(pairs[0][2]), verbose=False)
    instance_settings = None
    if instance_ref_folder is not None:
        instance_settings = _instance_settings_for(dataset, Path(instance_ref_folder), instance_iou_threshold,
                                                  instance_border_margin)
    jobs = [(case, pred, ref, reader_writer_class, targets, nsd_tolerance_mm, hd95_penalty_mm,
             _ignore_label_of(dataset), instance_settings, label_values_of(dataset)) for case, pred, ref in pairs]
    if num_processes == 1 or len(jobs) == 1:
        cases = [evaluate_case(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            cases = pool.starmap(evaluate_case, jobs)
    settings = {
        "prediction_folder": str(pred_folder),
        "reference_folder": str(ref_folder),
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "hd95_empty_penalty_mm": "image diagonal" if hd95_penalty_mm is None else hd95_penalty_mm,
        "ignore_label": _ignore_label_of(dataset),
        "reader_writer": reader_writer_class.__name__,
    }
    if instance_settings is not None:
        settings["instances"] = {"reference_folder": str(instance_settings.reference_folder),
                                 "iou_threshold": instance_iou_threshold,
                                 "border_margin": instance_border_margin}
    return Evaluation(targets, cases, settings, missing)

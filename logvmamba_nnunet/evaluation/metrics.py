"""Metrics of one binary prediction/reference pair: Dice, IoU, HD95 and Normalized Surface Dice (NSD).

Distances are in physical units (the spacing's, mm for medical images). Surfaces and surface distances come
from MONAI (``compute_hausdorff_distance``, ``compute_surface_dice``): the surface of a mask is its set of
voxels with at least one face neighbour outside the mask, and the distance of a surface voxel is the Euclidean
distance (with spacing) from its centre to the nearest surface voxel centre of the other mask.

- HD95: the larger of the two directed 95th percentiles (prediction -> reference, reference -> prediction),
  percentiles linearly interpolated.
- NSD at tolerance tau: the number of surface voxels of both masks whose distance to the other surface is
  <= tau, divided by the number of surface voxels of both masks (Nikolov et al. 2021, voxel-counting form).

Empty-mask conventions (docs/metrics.md): both empty gives Dice 1, IoU 1, HD95 0, NSD 1; exactly one empty
gives Dice 0, IoU 0, NSD 0 and HD95 = a finite penalty (by default the image diagonal, shape x spacing), and
the result says that the penalty was used (``hd95_penalized``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

HD95_PERCENTILE = 95.0
DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of one mask pair; ``n_pred``/``n_ref`` count foreground voxels.

    ``hd95_penalized`` is True when exactly one mask is empty: ``hd95`` then holds the penalty, not a
    distance.
    """

    dice: float
    iou: float
    hd95: float
    nsd: float
    n_pred: int
    n_ref: int
    hd95_penalized: bool

    @property
    def pred_empty(self) -> bool:
        return self.n_pred == 0

    @property
    def ref_empty(self) -> bool:
        return self.n_ref == 0

    @property
    def both_empty(self) -> bool:
        return self.pred_empty and self.ref_empty

    def as_dict(self) -> dict[str, float | int | bool]:
        """The fields plus ``pred_empty``, ``ref_empty`` and ``both_empty``, for CSV/JSON output."""
        return {**asdict(self), "pred_empty": self.pred_empty, "ref_empty": self.ref_empty,
                "both_empty": self.both_empty}


def prepare_mask_pair(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Check a mask pair and drop the axes of size 1 (with their spacing): a single slice is a 2D image.

    Args:
        pred, ref: masks of the same shape (any dtype; non-zero is foreground).
        spacing: one positive spacing per axis of the masks.
    Returns:
        ``(pred, ref, spacing)``: boolean masks of shape (X, Y) or (X, Y, Z) and the matching spacing.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    spacing = tuple(float(s) for s in spacing)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}; resample the "
                         "prediction to the reference grid first.")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values but the masks have {pred.ndim} axes; "
                         "give one spacing per axis.")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}.")
    kept = [axis for axis, size in enumerate(pred.shape) if size > 1]
    if len(kept) not in (2, 3):
        raise ValueError(f"masks of shape {pred.shape} have {len(kept)} axes longer than 1; surface metrics "
                         "need 2D or 3D masks.")
    new_shape = tuple(pred.shape[axis] for axis in kept)
    return (pred.reshape(new_shape).astype(bool), ref.reshape(new_shape).astype(bool),
            tuple(spacing[axis] for axis in kept))


def dice_iou(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice ``2|P&R| / (|P|+|R|)`` and IoU ``|P&R| / |P|R|`` of two masks of equal shape (non-zero is
    foreground); (1, 1) if both are empty."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}.")
    pred = pred.astype(bool, copy=False)
    ref = ref.astype(bool, copy=False)
    intersection = int(np.count_nonzero(pred & ref))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0, 1.0
    return 2.0 * intersection / total, intersection / (total - intersection)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus one voxel (within the image): surfaces and
    distances are unchanged, and MONAI gets small tensors instead of whole volumes."""
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    return pred[tuple(box)], ref[tuple(box)]


def _as_monai_input(mask: np.ndarray) -> torch.Tensor:
    """(X, Y[, Z]) boolean mask -> (1, 1, X, Y[, Z]) float tensor (MONAI's one-hot batch layout)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence the deprecation warning MONAI 1.5+ raises about an argument it passes to itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        yield


def _require_non_empty(pred: np.ndarray, ref: np.ndarray, metric: str) -> None:
    if not pred.any() or not ref.any():
        raise ValueError(f"{metric} is undefined when a mask is empty (prediction empty: {not pred.any()}, "
                         f"reference empty: {not ref.any()}); use compute_binary_metrics, which applies the "
                         "documented empty-mask conventions.")


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two non-empty masks.

    Args:
        pred, ref: non-empty masks of the same shape, (X, Y) or (X, Y, Z) (size-1 axes are dropped).
        spacing: voxel spacing per axis; the result is in its unit.
    """
    pred, ref, spacing = prepare_mask_pair(pred, ref, spacing)
    _require_non_empty(pred, ref, "HD95")
    pred, ref = _crop_to_union(pred, ref)
    with _quiet_monai():
        distance = compute_hausdorff_distance(_as_monai_input(pred), _as_monai_input(ref),
                                              include_background=True, percentile=HD95_PERCENTILE,
                                              spacing=list(spacing))
    return float(distance[0, 0])


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float) -> float:
    """Normalized Surface Dice of two non-empty masks at ``tolerance_mm`` (in the spacing's unit).

    Args:
        pred, ref: non-empty masks of the same shape, (X, Y) or (X, Y, Z) (size-1 axes are dropped).
        spacing: voxel spacing per axis.
        tolerance_mm: largest surface distance that counts as correct; >= 0.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"NSD tolerance must be finite and >= 0, got {tolerance_mm}.")
    pred, ref, spacing = prepare_mask_pair(pred, ref, spacing)
    _require_non_empty(pred, ref, "NSD")
    pred, ref = _crop_to_union(pred, ref)
    with _quiet_monai():
        nsd = compute_surface_dice(_as_monai_input(pred), _as_monai_input(ref),
                                   class_thresholds=[tolerance_mm], include_background=True,
                                   spacing=list(spacing), use_subvoxels=False)
    return float(nsd[0, 0])


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's diagonal, ``sqrt(sum((shape_i * spacing_i)^2))``: the default HD95 penalty.

    For BraTS (240 x 240 x 155 at 1 mm) this is 373.13 mm, the value the BraTS challenge uses.
    """
    if len(shape) != len(spacing):
        raise ValueError(f"shape {tuple(shape)} and spacing {tuple(spacing)} have different lengths.")
    return math.sqrt(sum((size * step) ** 2 for size, step in zip(shape, spacing, strict=True)))


def compute_binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                           nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                           hd95_penalty_mm: float | None = None) -> BinaryMetrics:
    """Dice, IoU, HD95 and NSD of one mask pair with the empty-mask conventions of the module docstring.

    Args:
        pred, ref: masks of the same shape, (X, Y) or (X, Y, Z); non-zero is foreground; size-1 axes dropped.
        spacing: voxel spacing per axis of ``pred``.
        nsd_tolerance_mm: NSD tolerance in the spacing's unit.
        hd95_penalty_mm: HD95 when exactly one mask is empty; None means the image diagonal.
    """
    if hd95_penalty_mm is not None and not (math.isfinite(hd95_penalty_mm) and hd95_penalty_mm >= 0):
        raise ValueError(f"the HD95 penalty must be finite and >= 0, got {hd95_penalty_mm}.")
    pred, ref, spacing = prepare_mask_pair(pred, ref, spacing)
    dice, iou = dice_iou(pred, ref)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_pred == 0 and n_ref == 0:
        return BinaryMetrics(dice, iou, 0.0, 1.0, n_pred, n_ref, hd95_penalized=False)
    if n_pred == 0 or n_ref == 0:
        penalty = image_diagonal_mm(pred.shape, spacing) if hd95_penalty_mm is None else hd95_penalty_mm
        return BinaryMetrics(dice, iou, float(penalty), 0.0, n_pred, n_ref, hd95_penalized=True)
    distance = hd95(pred, ref, spacing)
    nsd = normalized_surface_dice(pred, ref, spacing, nsd_tolerance_mm)
    return BinaryMetrics(dice, iou, distance, nsd, n_pred, n_ref, hd95_penalized=False)

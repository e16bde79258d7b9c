"""Cell instances <-> interior/boundary semantic maps, and instance F1 (instance Dice) at an IoU threshold.

The NeurIPS 2022 cell segmentation data gives instance maps (0 background, k > 0 cell k). Networks are trained
on a semantic map: 0 background, 1 cell interior, 2 cell boundary (the cell's pixels that touch another label,
4-neighbourhood). A predicted semantic map goes back to instances by labelling the connected components of the
interior and growing them into the boundary pixels of their own foreground component.

Instance matching: a predicted and a reference cell match when their IoU is >= the threshold (0.5); the
matching is one-to-one (maximum number of matches, ties broken by larger IoU). F1 = 2TP / (2TP + FP + FN)
(the paper's instance Dice), IoU = TP / (TP + FP + FN). Both maps without cells: all scores 1; exactly one
without cells: all scores 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

INTERIOR_LABEL = 1
BOUNDARY_LABEL = 2
DEFAULT_IOU_THRESHOLD = 0.5
DEFAULT_BORDER_MARGIN = 2


def _check_instance_map(instances: np.ndarray, name: str) -> np.ndarray:
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"{name} must be an integer instance map (0 background, k > 0 instance k), got "
                         f"dtype {instances.dtype}.")
    if instances.size and instances.min() < 0:
        raise ValueError(f"{name} has negative labels; instance ids must be >= 0.")
    return instances


def instances_to_semantic(instances: np.ndarray) -> np.ndarray:
    """Instance map (H, W) or (X, Y, Z), integers -> uint8 map of the same shape: 0 background, 1 interior,
    2 boundary (instance pixels with a face neighbour of another label, background included; the image border
    itself makes no boundary)."""
    instances = _check_instance_map(instances, "instances")
    boundary = find_boundaries(instances, connectivity=1, mode="inner") & (instances > 0)
    semantic = np.zeros(instances.shape, dtype=np.uint8)
    semantic[instances > 0] = INTERIOR_LABEL
    semantic[boundary] = BOUNDARY_LABEL
    return semantic


def semantic_to_instances(semantic: np.ndarray, interior_label: int = INTERIOR_LABEL,
                          boundary_label: int = BOUNDARY_LABEL, min_interior_size: int = 0) -> np.ndarray:
    """Interior/boundary map -> instance map (int32, ids 1..N, same shape).

    Connected components (face connectivity) of the interior become the instances; components smaller than
    ``min_interior_size`` pixels are dropped. Each instance then grows into the boundary pixels reachable from
    it inside its foreground component (interior + boundary), nearer pixels first; boundary components
    without interior stay background.
    """
    semantic = np.asarray(semantic)
    interior = semantic == interior_label
    foreground = interior | (semantic == boundary_label)
    seeds, _ = ndimage.label(interior)
    if min_interior_size > 0:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_interior_size
        small[0] = False
        seeds[small[seeds]] = 0
        seeds, _, _ = relabel_sequential(seeds)
    if not seeds.any():
        return np.zeros(semantic.shape, dtype=np.int32)
    distance_to_interior = ndimage.distance_transform_edt(seeds == 0)
    grown = watershed(distance_to_interior, markers=seeds, mask=foreground)
    return grown.astype(np.int32, copy=False)


def remove_border_instances(instances: np.ndarray, margin: int = DEFAULT_BORDER_MARGIN) -> np.ndarray:
    """Drop the instances with a pixel within ``margin`` pixels of the image border and renumber 1..N
    (the challenge's evaluation ignores cells cut by the border). ``margin`` 0 keeps all instances."""
    instances = _check_instance_map(instances, "instances")
    if margin < 0:
        raise ValueError(f"border margin must be >= 0, got {margin}.")
    if margin == 0:
        return relabel_sequential(instances)[0]
    inner = np.zeros(instances.shape, dtype=bool)
    inner[tuple(slice(margin, max(size - margin, margin)) for size in instances.shape)] = True
    touching = np.unique(instances[~inner])
    kept = np.where(np.isin(instances, touching[touching > 0]), 0, instances)
    return relabel_sequential(kept)[0]


@dataclass(frozen=True)
class InstanceMetrics:
    """Detection scores of one image: counts, precision, recall, F1 (instance Dice) and TP/(TP+FP+FN)."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    iou: float

    @property
    def n_ref(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "n_ref": self.n_ref, "n_pred": self.n_pred}


def pairwise_iou(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (reference, prediction) instance pair.

    Returns:
        ``(ref_ids, pred_ids, iou)``: 1D arrays of equal length, one entry per pair with a common pixel.
    """
    overlap = (reference > 0) & (prediction > 0)
    pairs, intersection = np.unique(np.stack([reference[overlap], prediction[overlap]]), axis=1,
                                    return_counts=True)
    ref_sizes = np.bincount(reference.ravel())
    pred_sizes = np.bincount(prediction.ravel())
    ref_ids, pred_ids = pairs[0], pairs[1]
    union = ref_sizes[ref_ids] + pred_sizes[pred_ids] - intersection
    return ref_ids, pred_ids, intersection / union


def match_instances(reference: np.ndarray, prediction: np.ndarray,
                    iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> InstanceMetrics:
    """Match reference and predicted instances one-to-one at IoU >= ``iou_threshold`` and score the matching.

    Args:
        reference, prediction: integer instance maps of the same shape (0 background); ids need not be
            consecutive.
        iou_threshold: in (0, 1].
    """
    reference = _check_instance_map(reference, "reference")
    prediction = _check_instance_map(prediction, "prediction")
    if reference.shape != prediction.shape:
        raise ValueError(f"reference and prediction shapes differ: {reference.shape} vs {prediction.shape}.")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold}.")
    reference = relabel_sequential(reference)[0]
    prediction = relabel_sequential(prediction)[0]
    n_ref, n_pred = int(reference.max(initial=0)), int(prediction.max(initial=0))
    if n_ref == 0 and n_pred == 0:
        return InstanceMetrics(0, 0, 0, 1.0, 1.0, 1.0, 1.0)
    ref_ids, pred_ids, iou = pairwise_iou(reference, prediction)
    candidate = iou >= iou_threshold
    tp = _maximum_matching(ref_ids[candidate], pred_ids[candidate], iou[candidate])
    fp, fn = n_pred - tp, n_ref - tp
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return InstanceMetrics(tp, fp, fn, precision, recall, f1, tp / (tp + fp + fn))


def _maximum_matching(ref_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray) -> int:
    """Size of the largest one-to-one matching among candidate pairs (ties: larger total IoU)."""
    if ref_ids.size == 0:
        return 0
    rows, row_index = np.unique(ref_ids, return_inverse=True)
    cols, col_index = np.unique(pred_ids, return_inverse=True)
    cost = np.zeros((rows.size, cols.size))
    # each match is worth 1 plus a tie-breaking bonus below 1 / min(rows, cols), so count always wins
    cost[row_index, col_index] = -(1.0 + iou / (2 * min(rows.size, cols.size)))
    matched_rows, matched_cols = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[matched_rows, matched_cols] < 0))

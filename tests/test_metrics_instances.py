"""Cell instances <-> interior/boundary maps and instance F1 at IoU 0.5."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from logvmamba_nnunet.evaluation.instances import (
    BOUNDARY_LABEL,
    INTERIOR_LABEL,
    instances_to_semantic,
    match_instances,
    pairwise_iou,
    remove_border_instances,
    semantic_to_instances,
)


def random_cells(rng: np.random.Generator, shape=(48, 56), count=6, touching=False) -> np.ndarray:
    """Instance map of random rectangles at least 4 pixels wide; non-touching unless ``touching``."""
    cells = np.zeros(shape, dtype=np.int32)
    placed = 0
    while placed < count:
        h, w = rng.integers(4, 10, size=2)
        y, x = rng.integers(1, shape[0] - h - 1), rng.integers(1, shape[1] - w - 1)
        margin = 0 if touching else 1
        window = cells[max(y - margin, 0):y + h + margin, max(x - margin, 0):x + w + margin]
        if window.any():
            continue
        placed += 1
        cells[y:y + h, x:x + w] = placed
    return cells


def loop_boundary(instances: np.ndarray) -> np.ndarray:
    """Instance pixels with an in-image 4-neighbour of another label, by an explicit loop."""
    boundary = np.zeros(instances.shape, dtype=bool)
    height, width = instances.shape
    for y, x in itertools.product(range(height), range(width)):
        if instances[y, x] == 0:
            continue
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ny, nx = y + dy, x + dx
            if 0 <= ny < height and 0 <= nx < width and instances[ny, nx] != instances[y, x]:
                boundary[y, x] = True
    return boundary


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two instance maps describe the same cells up to renumbering."""
    pairs = {(int(p), int(q)) for p, q in zip(a.ravel(), b.ravel(), strict=True)}
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs}) and (0, 0) in pairs


def brute_force_tp(reference: np.ndarray, prediction: np.ndarray, threshold: float) -> int:
    """Largest one-to-one matching with IoU >= threshold, by trying every assignment (few instances only)."""
    ref_ids = [i for i in np.unique(reference) if i]
    pred_ids = [j for j in np.unique(prediction) if j]

    def iou(i, j):
        a, b = reference == i, prediction == j
        return (a & b).sum() / (a | b).sum()

    good = {(i, j) for i in ref_ids for j in pred_ids if iou(i, j) >= threshold}
    best = 0
    padded = pred_ids + [None] * len(ref_ids)
    for assignment in itertools.permutations(padded, len(ref_ids)):
        best = max(best, sum((i, j) in good for i, j in zip(ref_ids, assignment, strict=True)))
    return best


def test_instances_to_semantic_marks_inner_boundaries_of_every_cell():
    cells = random_cells(np.random.default_rng(0), touching=True)
    semantic = instances_to_semantic(cells)
    boundary = loop_boundary(cells)
    assert np.array_equal(semantic == BOUNDARY_LABEL, boundary)
    assert np.array_equal(semantic == INTERIOR_LABEL, (cells > 0) & ~boundary)
    assert np.array_equal(semantic == 0, cells == 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_separate_cells_survive_the_round_trip_exactly(seed: int):
    cells = random_cells(np.random.default_rng(seed))
    recovered = semantic_to_instances(instances_to_semantic(cells))
    assert same_partition(cells, recovered)


def test_touching_cells_are_separated_again():
    cells = np.zeros((20, 30), dtype=np.int32)
    cells[3:15, 2:12] = 1
    cells[3:15, 12:24] = 2  # shares a whole edge with cell 1
    cells[15:19, 5:20] = 3  # touches both from below
    recovered = semantic_to_instances(instances_to_semantic(cells))
    assert recovered.max() == 3
    ref_ids, pred_ids, iou = pairwise_iou(cells, recovered)
    best = {int(i): float(iou[ref_ids == i].max()) for i in (1, 2, 3)}
    assert min(best.values()) > 0.8


def test_small_interior_fragments_and_boundary_only_blobs_are_dropped():
    semantic = np.zeros((12, 12), dtype=np.uint8)
    semantic[1:6, 1:6] = BOUNDARY_LABEL
    semantic[2:5, 2:5] = INTERIOR_LABEL  # a real cell, 9 interior pixels
    semantic[8, 8] = INTERIOR_LABEL  # a 1-pixel fragment
    semantic[9:11, 1:4] = BOUNDARY_LABEL  # boundary without interior
    kept = semantic_to_instances(semantic, min_interior_size=2)
    expected = np.zeros((12, 12), dtype=bool)
    expected[1:6, 1:6] = True  # the cell grown over its whole boundary ring, nothing else
    assert np.array_equal(kept > 0, expected) and kept.max() == 1
    assert semantic_to_instances(semantic).max() == 2


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_matching_agrees_with_brute_force(seed: int):
    rng = np.random.default_rng(seed)
    reference = random_cells(rng, shape=(32, 32), count=4)
    prediction = np.zeros_like(reference)
    for cell in range(1, 5):  # shift, grow or drop each cell at random
        ys, xs = np.nonzero(reference == cell)
        if rng.random() < 0.2:
            continue
        dy, dx = rng.integers(-3, 4, size=2)
        prediction[np.clip(ys + dy, 0, 31), np.clip(xs + dx, 0, 31)] = cell + 10
    prediction[rng.integers(0, 30):, :2] = 99  # a spurious prediction
    for threshold in (0.3, 0.5, 0.7):
        result = match_instances(reference, prediction, threshold)
        tp = brute_force_tp(reference, prediction, threshold)
        n_ref, n_pred = len(np.unique(reference)) - 1, len(np.unique(prediction)) - 1
        assert (result.tp, result.fp, result.fn) == (tp, n_pred - tp, n_ref - tp)
        assert result.f1 == pytest.approx(2 * tp / (n_ref + n_pred))
        assert result.iou == pytest.approx(tp / (n_ref + n_pred - tp))
        assert result.precision == pytest.approx(tp / n_pred)
        assert result.recall == pytest.approx(tp / n_ref)


def test_matching_is_one_to_one_at_exactly_half_iou():
    """A 2-pixel cell and two 1-pixel predictions inside it: each IoU is exactly 0.5; only one may match."""
    reference = np.array([[1, 1, 0]])
    prediction = np.array([[1, 2, 0]])
    result = match_instances(reference, prediction, 0.5)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)


def test_empty_instance_maps_follow_the_conventions():
    empty = np.zeros((8, 8), dtype=np.int32)
    cells = empty.copy()
    cells[2:5, 2:5] = 7
    assert match_instances(empty, empty).f1 == 1.0
    for reference, prediction in ((cells, empty), (empty, cells)):
        result = match_instances(reference, prediction)
        assert (result.f1, result.iou, result.precision, result.recall) == (0.0, 0.0, 0.0, 0.0)


def test_border_cells_are_removed_and_the_rest_renumbered():
    cells = np.zeros((10, 10), dtype=np.int32)
    cells[0:3, 4:6] = 5  # touches the top border
    cells[4:7, 4:7] = 8  # inside
    cells[7:9, 1:3] = 9  # within 2 pixels of the left border (column 1)
    kept = remove_border_instances(cells, margin=2)
    assert set(np.unique(kept)) == {0, 1}
    assert np.array_equal(kept == 1, cells == 8)
    assert set(np.unique(remove_border_instances(cells, margin=0))) == {0, 1, 2, 3}


def test_bad_instance_inputs_raise():
    with pytest.raises(ValueError, match="integer"):
        match_instances(np.zeros((3, 3)), np.zeros((3, 3), dtype=int))
    with pytest.raises(ValueError, match="shapes differ"):
        match_instances(np.zeros((3, 3), dtype=int), np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="threshold"):
        match_instances(np.zeros((3, 3), dtype=int), np.zeros((3, 3), dtype=int), 0.0)
    with pytest.raises(ValueError, match="margin"):
        remove_border_instances(np.zeros((3, 3), dtype=int), -1)

"""Dice, IoU, HD95 and NSD on one mask pair: hand-computed cases and an independent float64 reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from logvmamba_nnunet.evaluation.metrics import (
    compute_binary_metrics,
    dice_iou,
    hd95,
    image_diagonal_mm,
    normalized_surface_dice,
    prepare_mask_pair,
)


def reference_surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one face neighbour outside the mask (outside the image = background),
    by an explicit loop. Returns an (N, ndim) array of voxel indices."""
    surface = []
    for index in zip(*np.nonzero(mask), strict=True):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            inside = 0 <= neighbour[axis] < mask.shape[axis]
            if not inside or not mask[tuple(neighbour)]:
                surface.append(index)
                break
    return np.array(surface, dtype=np.float64)


def reference_directed_distances(source: np.ndarray, target: np.ndarray, spacing) -> np.ndarray:
    """For each surface voxel of ``source``, the distance in mm to the nearest surface voxel of ``target``
    (all pairs, float64)."""
    a = reference_surface(source) * np.asarray(spacing)
    b = reference_surface(target) * np.asarray(spacing)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


def reference_hd95_nsd(pred, ref, spacing, tolerance) -> tuple[float, float]:
    forward = reference_directed_distances(pred, ref, spacing)
    backward = reference_directed_distances(ref, pred, spacing)
    hd = max(np.percentile(forward, 95), np.percentile(backward, 95))
    nsd = ((forward <= tolerance).sum() + (backward <= tolerance).sum()) / (forward.size + backward.size)
    return float(hd), float(nsd)


def random_blob(rng: np.random.Generator, shape: tuple[int, ...], fraction: float = 0.35) -> np.ndarray:
    """A random lumpy mask: thresholded box-smoothed noise, never empty."""
    noise = rng.random(shape)
    smooth = noise.copy()
    for axis in range(len(shape)):
        smooth = (np.roll(smooth, 1, axis) + smooth + np.roll(smooth, -1, axis)) / 3
    mask = smooth > np.quantile(smooth, 1 - fraction)
    mask[tuple(s // 2 for s in shape)] = True
    return mask


# --- known answers ---


def test_identical_masks_are_perfect():
    rng = np.random.default_rng(0)
    mask = random_blob(rng, (9, 11, 7))
    result = compute_binary_metrics(mask, mask.copy(), (0.7, 1.3, 2.9), nsd_tolerance_mm=0.0)
    assert (result.dice, result.iou, result.hd95, result.nsd) == (1.0, 1.0, 0.0, 1.0)
    assert not result.hd95_penalized
    assert result.n_pred == result.n_ref == int(mask.sum())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cube_shifted_by_k_voxels_at_anisotropic_spacing(axis: int):
    """Reference: a cube of n = 6 voxels per side; prediction: the same cube moved k = 2 voxels along
    ``axis``. Spacing along the shift s = 0.5 mm, across it 2.0 and 1.5 mm (both >= k*s, so no side face is
    closer than the faces along the shift).

    Dice = 2 * 4*6*6 / (2 * 216) = 2/3; IoU = 144 / (216 + 216 - 144) = 1/2.

    Surface of one cube: 6n^2 - 12n + 8 = 152 voxels. Directed distances reference -> prediction, by layer i
    (0..5) along the shift:
      - layer 0 (36 voxels, the face the prediction moved away from): nearest prediction surface is its first
        layer, k*s = 1.0 mm away;
      - layer 1, its ring of 4(n-1) = 20 voxels: (k-1)*s = 0.5 mm;
      - layers 2..5, rings (4 x 20 = 80 voxels): on the prediction's side faces, 0 mm;
      - layer 5, interior of the far face ((n-2)^2 = 16 voxels): the prediction's last layer is k*s = 1.0 mm
        away, its first layer (n-1-k)*s = 1.5 mm, its side faces >= 1.5 mm: 1.0 mm.
    So 80 voxels at 0, 20 at 0.5, 52 at 1.0 mm; by symmetry the same for prediction -> reference.
    HD95: the 95th percentile lies among the 52 largest values (index 0.95 * 151 = 143.45 >= 100): 1.0 mm.
    NSD: tolerance 0.25 -> 2*80 / (2*152) = 80/152; 0.5 -> 100/152; 1.0 -> 1.
    """
    n, k, offset = 6, 2, 2
    spacing_along, spacing_across = 0.5, (2.0, 1.5)
    spacing = list(spacing_across)
    spacing.insert(axis, spacing_along)
    shape = [n + 2 * offset] * 3
    shape[axis] += k
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    box = [slice(offset, offset + n)] * 3
    ref[tuple(box)] = True
    box[axis] = slice(offset + k, offset + k + n)
    pred[tuple(box)] = True

    for tolerance, expected_nsd in ((0.25, 80 / 152), (0.5, 100 / 152), (0.75, 100 / 152), (1.0, 1.0)):
        result = compute_binary_metrics(pred, ref, spacing, nsd_tolerance_mm=tolerance)
        assert result.dice == pytest.approx(2 / 3)
        assert result.iou == pytest.approx(1 / 2)
        assert result.hd95 == pytest.approx(1.0, rel=1e-6)
        assert result.nsd == pytest.approx(expected_nsd, rel=1e-6)


def test_hd95_ignores_a_small_remote_outlier_that_the_full_hausdorff_would_count():
    """Identical 4-voxel cubes (surface 6*16 - 48 + 8 = 56 voxels) plus one far prediction voxel.
    Prediction -> reference distances: 56 zeros and one ~20 mm value; the linearly interpolated 95th
    percentile sits at index 0.95 * 56 = 53.2, between two zeros: HD95 = 0.
    NSD (1 mm): (57 - 1 + 56) / 113."""
    ref = np.zeros((30, 8, 8), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = ref.copy()
    pred[25, 4, 4] = True
    result = compute_binary_metrics(pred, ref, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert result.hd95 == pytest.approx(0.0, abs=1e-6)
    assert result.nsd == pytest.approx(112 / 113, rel=1e-6)


@pytest.mark.parametrize("empty", ["pred", "ref"])
def test_exactly_one_empty_mask_gets_zero_scores_and_the_diagonal_penalty(empty: str):
    rng = np.random.default_rng(1)
    mask = random_blob(rng, (10, 12, 8))
    spacing = (1.0, 0.5, 2.0)
    pred, ref = (np.zeros_like(mask), mask) if empty == "pred" else (mask, np.zeros_like(mask))
    result = compute_binary_metrics(pred, ref, spacing)
    diagonal = math.sqrt((10 * 1.0) ** 2 + (12 * 0.5) ** 2 + (8 * 2.0) ** 2)  # sqrt(100 + 36 + 256)
    assert (result.dice, result.iou, result.nsd) == (0.0, 0.0, 0.0)
    assert result.hd95 == pytest.approx(diagonal)
    assert result.hd95_penalized
    assert result.pred_empty == (empty == "pred") and result.ref_empty == (empty == "ref")
    assert compute_binary_metrics(pred, ref, spacing, hd95_penalty_mm=373.13).hd95 == 373.13


def test_both_empty_is_a_perfect_score_and_not_penalized():
    empty = np.zeros((5, 6, 7), dtype=bool)
    result = compute_binary_metrics(empty, empty, (1.0, 2.0, 3.0))
    assert (result.dice, result.iou, result.hd95, result.nsd) == (1.0, 1.0, 0.0, 1.0)
    assert result.both_empty and not result.hd95_penalized
    assert result.as_dict()["both_empty"] is True


def test_brats_image_diagonal_is_the_challenge_penalty():
    assert image_diagonal_mm((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.13, abs=0.005)
    with pytest.raises(ValueError, match="different lengths"):
        image_diagonal_mm((2, 3), (1.0,))


# --- independent reference on random masks ---


@pytest.mark.parametrize("shape", [(17, 13), (9, 8, 10)])
@pytest.mark.parametrize("seed", [2, 3])
def test_hd95_and_nsd_match_an_all_pairs_float64_reference(shape, seed):
    rng = np.random.default_rng(seed)
    pred, ref = random_blob(rng, shape), random_blob(rng, shape)
    spacing = tuple(rng.uniform(0.4, 2.5, size=len(shape)))
    tolerance = float(rng.uniform(0.5, 2.0))
    expected_hd95, expected_nsd = reference_hd95_nsd(pred, ref, spacing, tolerance)
    assert hd95(pred, ref, spacing) == pytest.approx(expected_hd95, rel=1e-5, abs=1e-6)
    assert normalized_surface_dice(pred, ref, spacing, tolerance) == pytest.approx(expected_nsd, rel=1e-5)


def test_dice_and_iou_match_the_set_formulas():
    rng = np.random.default_rng(4)
    pred, ref = rng.random((12, 9, 5)) > 0.6, rng.random((12, 9, 5)) > 0.5
    both = sum(1 for p, r in zip(pred.ravel(), ref.ravel(), strict=True) if p and r)
    either = sum(1 for p, r in zip(pred.ravel(), ref.ravel(), strict=True) if p or r)
    dice, iou = dice_iou(pred, ref)
    assert dice == pytest.approx(2 * both / (pred.sum() + ref.sum()))
    assert iou == pytest.approx(both / either)
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)


def test_a_single_slice_is_evaluated_as_a_2d_image():
    """nnU-Net reads a 2D image as (1, X, Y) with a dummy spacing of 999 on the first axis."""
    rng = np.random.default_rng(5)
    pred, ref = random_blob(rng, (15, 12)), random_blob(rng, (15, 12))
    flat = compute_binary_metrics(pred, ref, (0.8, 1.1), nsd_tolerance_mm=1.0)
    stacked = compute_binary_metrics(pred[None], ref[None], (999.0, 0.8, 1.1), nsd_tolerance_mm=1.0)
    assert stacked == flat
    squeezed_pred, _, squeezed_spacing = prepare_mask_pair(pred[None], ref[None], (999.0, 0.8, 1.1))
    assert squeezed_pred.shape == (15, 12) and squeezed_spacing == (0.8, 1.1)


# --- bad input ---


def test_bad_inputs_raise_clear_errors():
    mask = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="shapes differ"):
        compute_binary_metrics(mask, mask[:3], (1, 1, 1))
    with pytest.raises(ValueError, match="one spacing per axis"):
        compute_binary_metrics(mask, mask, (1, 1))
    with pytest.raises(ValueError, match="positive"):
        compute_binary_metrics(mask, mask, (1, 0, 1))
    with pytest.raises(ValueError, match="2D or 3D"):
        compute_binary_metrics(np.ones((1, 1, 5)), np.ones((1, 1, 5)), (1, 1, 1))
    with pytest.raises(ValueError, match="empty"):
        hd95(mask, np.zeros_like(mask), (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(mask, mask, (1, 1, 1), -1.0)
    with pytest.raises(ValueError, match="penalty"):
        compute_binary_metrics(mask, np.zeros_like(mask), (1, 1, 1), hd95_penalty_mm=math.inf)

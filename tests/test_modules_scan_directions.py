"""Scan directions: orders of K = 1, 2, 4 and the per-direction sequences with global tokens."""

import itertools
import math

import pytest
import torch

from logvmamba_nnunet.modules.scan_directions import ScanLayout, direction_orders, slot_runs
from logvmamba_nnunet.modules.token_placement import TokenPlacement


def test_orders_2d():
    orders = direction_orders((2, 3), 4).tolist()
    assert orders == [
        [0, 1, 2, 3, 4, 5],
        [0, 3, 1, 4, 2, 5],
        [5, 4, 3, 2, 1, 0],
        [5, 2, 4, 1, 3, 0],
    ]
    assert direction_orders((2, 3), 1).tolist() == orders[:1]
    assert direction_orders((2, 3), 2).tolist() == [orders[0], orders[2]]


def test_orders_3d_transpose_swaps_the_last_two_axes():
    depth, height, width = 2, 3, 4
    raster = {pos: i for i, pos in enumerate(itertools.product(range(depth), range(height), range(width)))}
    column_major = itertools.product(range(depth), range(width), range(height))
    transposed = [raster[(z, y, x)] for z, x, y in column_major]
    orders = direction_orders((depth, height, width), 4).tolist()
    assert orders[1] == transposed
    assert orders[3] == transposed[::-1]
    assert orders[0] == list(range(24))


def test_bad_direction_count_raises():
    with pytest.raises(ValueError, match=r"directions=3 .*\(1, 2, 4\)"):
        direction_orders((2, 2), 3)


@pytest.mark.parametrize("placement", ["head", "middle", "split", "interleaved"])
@pytest.mark.parametrize(("spatial_size", "n_global", "directions"), [((3, 4), 5, 4), ((2, 3, 2), 2, 2),
                                                                      ((2, 2, 3), 0, 4), ((1, 5), 7, 1)])
def test_each_direction_sequence_and_the_way_back(placement, spatial_size, n_global, directions):
    torch.manual_seed(0)
    n_local = torch.Size(spatial_size).numel()
    layout = ScanLayout(directions, placement)
    tokens = torch.randn(2, 3, n_local + n_global)
    sequences = layout.to_sequences(tokens, spatial_size, n_global)
    assert sequences.shape == (2, directions, 3, n_local + n_global)
    orders = direction_orders(spatial_size, directions)
    placement_of = TokenPlacement(placement)
    for k in range(directions):
        expected = placement_of.place(tokens[:, :, orders[k]], tokens[:, :, n_local:])
        assert torch.equal(sequences[:, k], expected)
    outputs = torch.randn(2, directions, 3, n_local + n_global)
    back = layout.to_raster(outputs, spatial_size, n_global)
    assert back.shape == (2, directions, 3, n_local)
    for k in range(directions):
        in_scan_order = placement_of.remove(outputs[:, k], n_global)
        expected = torch.empty_like(in_scan_order)
        expected[:, :, orders[k]] = in_scan_order
        assert torch.equal(back[:, k], expected)


def test_index_maps_are_cached_per_shape_and_device():
    layout = ScanLayout(2, "interleaved")
    first = layout.indices((4, 5), 3, torch.device("cpu"))
    second = layout.indices([4, 5], 3, torch.device("cpu"))
    assert first[0] is second[0] and first[1] is second[1]
    assert layout.indices((5, 4), 3, torch.device("cpu"))[0] is not first[0]


@pytest.mark.parametrize("placement", ["head", "middle", "split", "interleaved"])
@pytest.mark.parametrize(("spatial_size", "n_global", "directions"), [((3, 4), 5, 4), ((2, 3, 2), 2, 2),
                                                                      ((2, 2, 3), 0, 4), ((1, 5), 7, 1),
                                                                      ((4, 6), 3, 1), ((3, 5), 0, 2)])
def test_sequences_and_merge_with_gradients_against_indexing(placement, spatial_size, n_global, directions):
    """The copy-lean maps (strided runs, gathers by the inverse permutation in backward) give exactly what advanced
    indexing gives, forward and backward, also for channels-last (non-unit stride) locals and globals."""
    torch.manual_seed(0)
    n_local = math.prod(spatial_size)
    layout = ScanLayout(directions, placement)
    gather, to_raster = layout.indices(spatial_size, n_global, torch.device("cpu"))
    local = torch.randn(2, n_local, 3, dtype=torch.float64).transpose(1, 2).requires_grad_()
    global_tokens = torch.randn(2, n_global, 3, dtype=torch.float64).transpose(1, 2).requires_grad_()
    weights = torch.randn(2, directions, 3, n_local + n_global, dtype=torch.float64)

    def reference():
        sequences = torch.cat([local, global_tokens], dim=-1)[:, :, gather].transpose(1, 2)
        merged = (sequences * weights).transpose(1, 2).flatten(2)[:, :, to_raster].sum(2)  # (B, W, L)
        return sequences, merged.transpose(1, 2)

    def copy_lean():
        sequences = layout.sequences(local, global_tokens if n_global else None, spatial_size)
        return sequences, layout.merge(sequences * weights, spatial_size, n_global)

    results = []
    for function in (reference, copy_lean):
        local.grad = global_tokens.grad = None
        sequences, merged = function()
        assert merged.shape == (2, n_local, 3)
        (sequences.square().sum() + (merged * torch.arange(merged.numel()).view_as(merged)).sum()).backward()
        results.append((sequences.detach(), merged.detach(), local.grad.clone(),
                        None if global_tokens.grad is None else global_tokens.grad.clone()))
    (sequences, merged, local_grad, global_grad), expected = results[1], results[0]
    assert torch.equal(sequences, expected[0]) and torch.equal(merged, expected[1])
    torch.testing.assert_close(local_grad, expected[2], rtol=0, atol=1e-12)
    if n_global:
        torch.testing.assert_close(global_grad, expected[3], rtol=0, atol=1e-12)


def test_one_direction_without_globals_copies_nothing():
    layout = ScanLayout(1, "interleaved")
    local = torch.randn(2, 3, 20)
    sequences = layout.sequences(local, None, (4, 5))
    assert sequences.shape == (2, 1, 3, 20) and sequences.data_ptr() == local.data_ptr()
    merged = layout.merge(sequences, (4, 5), 0)
    assert merged.shape == (2, 20, 3) and torch.equal(merged, local.transpose(1, 2))


@pytest.mark.parametrize("placement", ["head", "middle", "split", "interleaved"])
@pytest.mark.parametrize(("n_local", "n_global"), [(1, 1), (5, 4), (11, 5), (6, 4), (64, 40), (35840, 54),
                                                   (100, 0), (3, 9)])
def test_slot_runs_rebuild_the_slots_in_few_groups(placement, n_local, n_global):
    local_slots, global_slots = TokenPlacement(placement).slots(n_local, n_global)
    for slots in (local_slots, global_slots):
        runs = slot_runs(slots)
        rebuilt = [run.start + i * run.step + j for run in runs for i in range(run.count) for j in range(run.length)]
        sources = [run.source + i * run.length + j for run in runs for i in range(run.count)
                   for j in range(run.length)]
        assert rebuilt == slots.tolist() and sources == list(range(len(slots)))
        assert len(runs) <= 3

"""Scan directions: orders of K = 1, 2, 4 and the per-direction sequences with global tokens."""

import itertools

import pytest
import torch

from logvmamba_nnunet.modules.scan_directions import ScanLayout, direction_orders
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

"""Token extractors (paper §3.2): unfold, vanilla, LTX and GTX in 2D and 3D."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from logvmamba_nnunet.modules.token_extractors import (
    GlobalTokenExtractor,
    LocalTokenExtractor,
    VanillaTokenExtractor,
    compressed_length,
    gtx_conv_geometry,
    unfold_neighbourhood,
)

CONV = {2: F.conv2d, 3: F.conv3d}


def test_unfold_2d_equals_torch_unfold():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    expected = F.unfold(x, 3, padding=1).view(2, 27, 5, 6)
    assert torch.equal(unfold_neighbourhood(x), expected)


def test_unfold_3d_places_the_27_zero_padded_neighbours():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, 5, dtype=torch.float64)
    out = unfold_neighbourhood(x)
    assert out.shape == (2, 2 * 27, 3, 4, 5)
    expected = torch.zeros_like(out)
    offsets = list(itertools.product((-1, 0, 1), repeat=3))
    for c, (o, (dz, dy, dx)) in itertools.product(range(2), enumerate(offsets)):
        for z, y, w in itertools.product(range(3), range(4), range(5)):
            zz, yy, ww = z + dz, y + dy, w + dx
            if 0 <= zz < 3 and 0 <= yy < 4 and 0 <= ww < 5:
                expected[:, c * 27 + o, z, y, w] = x[:, c, zz, yy, ww]
    assert torch.equal(out, expected)


def test_unfold_rejects_even_window():
    with pytest.raises(ValueError, match="window"):
        unfold_neighbourhood(torch.randn(1, 1, 3, 3), window=2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vanilla_extractor_is_depthwise_conv_then_silu(spatial_dims):
    torch.manual_seed(0)
    extractor = VanillaTokenExtractor(4, spatial_dims).double()
    x = torch.randn(2, 4, *(5,) * spatial_dims, dtype=torch.float64)
    per_channel = [
        CONV[spatial_dims](x[:, c : c + 1], extractor.conv.weight[c : c + 1], extractor.conv.bias[c : c + 1],
                           padding=1)
        for c in range(4)
    ]
    expected = F.silu(torch.cat(per_channel, dim=1))
    torch.testing.assert_close(extractor(x), expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_local_extractor_squeezes_groups_then_unfolds(spatial_dims):
    torch.manual_seed(0)
    channels, squeeze = 8, 4
    extractor = LocalTokenExtractor(channels, spatial_dims, squeeze).double()
    window = 3**spatial_dims
    assert extractor.out_channels == (channels // squeeze) * window
    assert set(extractor.state_dict()) == {"squeeze.weight", "squeeze.bias"}
    assert extractor.squeeze.weight.shape == (channels // squeeze, squeeze) + (3,) * spatial_dims
    x = torch.randn(2, channels, *(4,) * spatial_dims, dtype=torch.float64)
    out = extractor(x)
    assert out.shape == (2, extractor.out_channels) + (4,) * spatial_dims
    for group in range(channels // squeeze):
        inputs = x[:, group * squeeze : (group + 1) * squeeze]
        weight = extractor.squeeze.weight[group : group + 1]
        squeezed = F.silu(CONV[spatial_dims](inputs, weight, extractor.squeeze.bias[group : group + 1],
                                             padding=1))
        centre = group * window + window // 2
        torch.testing.assert_close(out[:, centre : centre + 1], squeezed)
        corner = out[:, group * window]
        if spatial_dims == 2:
            torch.testing.assert_close(corner[:, 1:, 1:], squeezed[:, 0, :-1, :-1])
            assert torch.all(corner[:, 0] == 0) and torch.all(corner[:, :, 0] == 0)
        else:
            torch.testing.assert_close(corner[:, 1:, 1:, 1:], squeezed[:, 0, :-1, :-1, :-1])
            assert torch.all(corner[:, 0] == 0)


def test_local_extractor_rejects_non_dividing_squeeze():
    with pytest.raises(ValueError, match=r"squeeze=3 does not divide channels=8.*\[1, 2, 4, 8\]"):
        LocalTokenExtractor(8, 2, 3)


@pytest.mark.parametrize(
    ("spatial_dims", "stride", "expected"),
    [
        (3, 1, (1, 1, 0)), (3, 2, (3, 1, 1)), (3, 4, (3, 2, 2)), (3, 8, (5, 2, 3)),
        (2, 2, (3, 1, 1)), (2, 4, (5, 1, 2)),
    ],
)
def test_gtx_geometry_keeps_the_authors_kernels(spatial_dims, stride, expected):
    assert gtx_conv_geometry(stride, spatial_dims) == expected


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gtx_compressed_length_is_ceil_and_matches_the_conv(spatial_dims):
    for stride, length in itertools.product(range(1, 7), range(1, 14)):
        kernel, dilation, padding = gtx_conv_geometry(stride, spatial_dims)
        assert kernel % 2 == 1
        conv_out = F.conv1d(torch.ones(1, 1, length), torch.ones(1, 1, kernel), stride=stride,
                            padding=padding, dilation=dilation).shape[-1]
        assert compressed_length(length, stride, spatial_dims) == conv_out == math.ceil(length / stride)


@pytest.mark.parametrize("length", [8, 16, 24, 64])
def test_gtx_stride_8_in_3d_gives_one_eighth_of_the_grid(length):
    """The authors' 3D stride 8 (kernel 5, dilation 2, padding 3) compresses n to n / 8 for n a multiple of 8."""
    gtx = GlobalTokenExtractor(4, 3, (length, 16, 8), stride=(8, 8, 8))
    assert gtx.compress.kernel_size == (5, 5, 5) and gtx.compress.dilation == (2, 2, 2)
    assert gtx.compress.padding == (3, 3, 3)
    assert gtx.planned_grid == (length // 8, 2, 1)
    features = torch.randn(1, 4, length, 16, 8)
    assert tuple(gtx.compress(features).shape[2:]) == gtx.planned_grid


def test_gtx_stride_8_in_3d_accepts_axes_shorter_than_its_kernel():
    """Axes of 1 or 2 positions are zero-padded to the 3 the conv needs; the grid is then resampled as usual."""
    assert [compressed_length(n, 8, 3) for n in (1, 2, 3, 9, 10, 11)] == [1, 1, 1, 1, 1, 2]
    gtx = GlobalTokenExtractor(4, 3, (8, 8, 8), stride=8)
    assert gtx(torch.randn(1, 4, 1, 2, 8)).shape == (1, 4, 4)


def reference_global_tokens(gtx, features, kernel, dilation, padding, stride, squeeze):
    """Explicit GTX: per-group conv, adaptive average pool to the planned grid, Linear, SiLU."""
    spatial_dims = features.dim() - 2
    groups = []
    for g in range(gtx.n_tokens):
        inputs = features[:, g * squeeze : (g + 1) * squeeze]
        groups.append(CONV[spatial_dims](inputs, gtx.compress.weight[g : g + 1], gtx.compress.bias[g : g + 1],
                                         stride=stride, padding=padding, dilation=dilation))
    grid = torch.cat(groups, dim=1)
    if tuple(grid.shape[2:]) != gtx.planned_grid:
        grid = (F.adaptive_avg_pool2d if spatial_dims == 2 else F.adaptive_avg_pool3d)(grid, gtx.planned_grid)
    tokens = F.silu(grid.flatten(2) @ gtx.project.weight.T + gtx.project.bias)
    return tokens.transpose(1, 2)


@pytest.mark.parametrize(
    ("spatial_dims", "planned", "stride", "squeeze", "geometry", "other_sizes"),
    [
        (3, (8, 6, 5), 4, 1, (3, 2, 2), [(5, 9, 3), (1, 1, 2)]),
        (3, (6, 6, 4), 2, 2, (3, 1, 1), [(11, 3, 4)]),
        (3, (3, 2, 2), 1, 4, (1, 1, 0), [(4, 4, 3)]),
        (2, (8, 12), 2, 2, (3, 1, 1), [(5, 7), (1, 1)]),
        (2, (9, 8), 4, 1, (5, 1, 2), [(16, 4)]),
    ],
)
def test_gtx_matches_reference_at_planned_and_other_sizes(spatial_dims, planned, stride, squeeze, geometry,
                                                          other_sizes):
    torch.manual_seed(0)
    channels = 8
    gtx = GlobalTokenExtractor(channels, spatial_dims, planned, stride, squeeze).double()
    assert gtx.planned_grid == tuple(math.ceil(n / stride) for n in planned)
    assert gtx.project.in_features == math.prod(gtx.planned_grid)
    for size in [planned, *other_sizes]:
        features = torch.randn(2, channels, *size, dtype=torch.float64)
        tokens = gtx(features)
        assert tokens.shape == (2, channels, channels // squeeze)
        torch.testing.assert_close(tokens, reference_global_tokens(gtx, features, *geometry, stride, squeeze))


def test_gtx_resamples_a_larger_grid_by_block_averaging():
    torch.manual_seed(0)
    gtx = GlobalTokenExtractor(2, 2, (3, 2), stride=1).double()
    features = torch.randn(1, 2, 6, 4, dtype=torch.float64)
    compressed = gtx.compress(features)
    averaged = compressed.view(1, 2, 3, 2, 2, 2).mean(dim=(3, 5))
    expected = F.silu(averaged.flatten(2) @ gtx.project.weight.T + gtx.project.bias).transpose(1, 2)
    torch.testing.assert_close(gtx(features), expected)


def test_gtx_planned_size_below_stride_gives_one_position():
    gtx = GlobalTokenExtractor(4, 3, (1, 2, 3), stride=4)
    assert gtx.planned_grid == (1, 1, 1)
    assert gtx(torch.randn(1, 4, 1, 2, 3)).shape == (1, 4, 4)
    assert gtx(torch.randn(1, 4, 9, 1, 5)).shape == (1, 4, 4)


def test_gtx_accepts_one_stride_per_axis():
    gtx = GlobalTokenExtractor(4, 3, (4, 8, 8), stride=(1, 2, 4))
    assert gtx.compress.stride == (1, 2, 4)
    assert gtx.compress.kernel_size == (1, 3, 3)
    assert gtx.compress.dilation == (1, 1, 2)
    assert gtx.planned_grid == (4, 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"squeeze": 3}, r"squeeze=3 does not divide channels=8"),
        ({"planned_size": (4, 4)}, r"planned_size=\(4, 4\) has 2 entries but spatial_dims=3"),
        ({"stride": 0}, r"stride=0: every entry must be a positive integer"),
        ({"planned_size": (4, 0, 4)}, r"planned_size=\(4, 0, 4\): every entry must be a positive integer"),
    ],
)
def test_gtx_rejects_bad_arguments(kwargs, message):
    arguments = {"channels": 8, "spatial_dims": 3, "planned_size": (4, 4, 4)} | kwargs
    with pytest.raises(ValueError, match=message):
        GlobalTokenExtractor(**arguments)

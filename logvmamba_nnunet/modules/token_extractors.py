"""Token extractors of paper §3.2 for 2D and 3D feature maps (channels-first, (B, C, *S)).

* ``VanillaTokenExtractor`` (VSS): depthwise conv k3 + SiLU.
* ``LocalTokenExtractor`` (LTX): grouped squeeze conv k3 + SiLU + fixed 3^dim unfold (no weights).
* ``GlobalTokenExtractor`` (GTX): strided depthwise/grouped conv, flatten, Linear(Ng -> Cg) + SiLU.

Every extractor returns a map whose spatial positions flattened row-major are the local tokens; the GTX
returns its global tokens channels-first, (B, Cg, n_tokens), ready to be concatenated to them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logvmamba_nnunet.modules.validation import check_divides, check_spatial_dims, per_axis

LTX_WINDOW = 3
DEFAULT_LTX_SQUEEZE = {2: 8, 3: 16}

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_ADAPTIVE_AVG_POOL = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def unfold_neighbourhood(x: Tensor, window: int = LTX_WINDOW) -> Tensor:
    """Put each position's zero-padded ``window``^dim neighbourhood on the channel axis.

    x: (B, C, H, W) or (B, C, D, H, W). Returns (B, C * window**dim, *S) where output channel
    ``c * window**dim + o`` holds input channel c at window offset o (offsets row-major over the window,
    centred on the position): the layout of ``F.unfold``. Has no parameters or buffers.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window} must be a positive odd integer (the window is centred).")
    spatial = x.shape[2:]
    check_spatial_dims(len(spatial))
    radius = window // 2
    if len(spatial) == 2:
        return F.unfold(x, window, padding=radius).view(x.shape[0], -1, *spatial)
    # the 27 shifted copies read channels-first far faster than channels-last (x is window^3 times smaller)
    padded = F.pad(x.contiguous(), (radius,) * 6)
    depth, height, width = spatial
    shifted = [
        padded[:, :, i : i + depth, j : j + height, k : k + width]
        for i, j, k in itertools.product(range(window), repeat=3)
    ]
    return torch.stack(shifted, dim=2).flatten(1, 2)


class VanillaTokenExtractor(nn.Module):
    """VSS token extractor: depthwise conv (kernel 3, padding 1, bias) + SiLU. (B, C, *S) -> (B, C, *S)."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.out_channels = channels
        self.conv = _CONV[spatial_dims](channels, channels, 3, padding=1, groups=channels, bias=True)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *S) -> (B, C, *S)."""
        return self.act(self.conv(x))


class LocalTokenExtractor(nn.Module):
    """LTX: grouped squeeze conv (C -> C/squeeze, kernel 3, padding 1, bias, each output channel sees
    ``squeeze`` input channels) + SiLU + ``unfold_neighbourhood`` with a 3^dim window.

    (B, C, *S) -> (B, C', *S) with C' = (C / squeeze) * 3**dim.
    """

    def __init__(self, channels: int, spatial_dims: int, squeeze: int) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_divides("squeeze", squeeze, channels, "channels")
        squeezed = channels // squeeze
        self.out_channels = squeezed * LTX_WINDOW**spatial_dims
        self.squeeze = _CONV[spatial_dims](channels, squeezed, 3, padding=1, groups=squeezed, bias=True)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *S) -> (B, C', *S), layout (squeezed channel, window offset)."""
        return unfold_neighbourhood(self.act(self.squeeze(x)), LTX_WINDOW)


AUTHORS_GTX_GEOMETRY_3D = {1: (1, 1, 0), 2: (3, 1, 1), 4: (3, 2, 2), 8: (5, 2, 3)}
"""(kernel, dilation, padding) of the authors' 3D GTX conv per stride."""


def gtx_conv_geometry(stride: int, spatial_dims: int) -> tuple[int, int, int]:
    """(kernel, dilation, padding) of the GTX compression conv along an axis with stride ``stride``.

    The authors' settings, kept exactly: 3D: stride 1 -> k1; 2 -> k3 (padding 1); 4 -> k3 dilation 2
    padding 2; 8 -> k5 dilation 2 padding 3. 2D: kernel 1 + stride, padding stride // 2 (k3 for 2, k5
    for 4). Generalisation to other strides s (and stride 1 in 2D, where 1 + s = 2 would shrink the map):
    3D: k3 with dilation s // 2 and padding s // 2; 2D: kernel 2 * (s // 2) + 1, padding s // 2. Their
    receptive extent is odd with "same" padding, so the compressed length is ceil(n / s) for every n >= 1;
    see ``compressed_length`` for the authors' 3D stride 8.
    """
    if spatial_dims == 3 and stride in AUTHORS_GTX_GEOMETRY_3D:
        return AUTHORS_GTX_GEOMETRY_3D[stride]
    half = stride // 2
    if stride == 1:
        return 1, 1, 0
    if spatial_dims == 3:
        return 3, half, half
    return 2 * half + 1, 1, half


def minimum_length(stride: int, spatial_dims: int) -> int:
    """Shortest axis the GTX conv accepts: 1, except 3 for the authors' 3D stride 8 (extent 9, padding 3)."""
    kernel, dilation, padding = gtx_conv_geometry(stride, spatial_dims)
    return max(1, dilation * (kernel - 1) + 1 - 2 * padding)


def compressed_length(length: int, stride: int, spatial_dims: int) -> int:
    """Length along one axis after the GTX compression conv, an axis shorter than ``minimum_length`` being
    zero-padded to it first. ceil(n / s), except for the authors' 3D stride 8: one less when n mod 8 is 1 or 2
    (exactly n / 8 for n a multiple of 8)."""
    kernel, dilation, padding = gtx_conv_geometry(stride, spatial_dims)
    length = max(length, minimum_length(stride, spatial_dims))
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class GlobalTokenExtractor(nn.Module):
    """GTX: compress each group of ``squeeze`` channels over all positions into one global token.

    1. conv Cg -> Cg/squeeze, groups Cg/squeeze, stride ``stride`` (kernel rule: ``gtx_conv_geometry``).
    2. flatten the compressed grid: (B, Cg/squeeze, Ng), Ng = prod(ceil(planned_size / stride)) (see
       ``compressed_length``).
    3. Linear(Ng -> Cg) + SiLU: Cg/squeeze tokens of width Cg.

    Ng is fixed at construction from ``planned_size``. An input of another spatial size gives another
    compressed grid, which is resampled to the planned grid by adaptive average pooling (averaging where
    it is larger, repeating where it is smaller) so that any input size works.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int,
        planned_size: Sequence[int],
        stride: int | Sequence[int] = 1,
        squeeze: int = 1,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_divides("squeeze", squeeze, channels, "channels")
        planned = per_axis("planned_size", planned_size, spatial_dims)
        strides = per_axis("stride", stride, spatial_dims)
        geometry = [gtx_conv_geometry(s, spatial_dims) for s in strides]
        kernel, dilation, padding = (tuple(values) for values in zip(*geometry, strict=True))
        self.n_tokens = channels // squeeze
        self.planned_grid = tuple(
            compressed_length(n, s, spatial_dims) for n, s in zip(planned, strides, strict=True)
        )
        self.minimum_size = tuple(minimum_length(s, spatial_dims) for s in strides)
        self.compress = _CONV[spatial_dims](
            channels, self.n_tokens, kernel, stride=strides, padding=padding, dilation=dilation,
            groups=self.n_tokens, bias=True,
        )
        self.project = nn.Linear(math.prod(self.planned_grid), channels)
        self.act = nn.SiLU()

    def forward(self, features: Tensor) -> Tensor:
        """features: (B, Cg, *S) -> global tokens channels-first (B, Cg, Cg/squeeze)."""
        shortfall = [max(0, m - n) for m, n in zip(self.minimum_size, features.shape[2:], strict=True)]
        if any(shortfall):
            features = F.pad(features, [p for amount in reversed(shortfall) for p in (0, amount)])
        grid = self.compress(features)
        if tuple(grid.shape[2:]) != self.planned_grid:
            grid = _ADAPTIVE_AVG_POOL[grid.dim() - 2](grid, self.planned_grid)
        return self.act(self.project(grid.flatten(2))).transpose(1, 2)

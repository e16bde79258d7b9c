"""The VMamba (v0) encoder of Swin-UMamba-dagger, 2D, channels-last (paper §3.4).

    x (B, C_in, H, W)
    patch embedding: Conv2d(C_in -> w0, kernel 4, stride 4) + LayerNorm(w0)        -> (B, H/4, W/4, w0)
    stage 0: depth[0] VSS blocks                                                    -> feature 0
    patch merging: 2x2 phases -> LayerNorm(4 w0) -> Linear(4 w0 -> 2 w0, no bias)   -> (B, H/8, W/8, w1)
    stage 1 ... stage 3                                                             -> features 1..3

VMamba-Tiny: depths (2, 2, 9, 2), widths (96, 192, 384, 768); every block is a VSS block (vanilla extractor,
K = 4 directions, E = 2, d_state 16, dt rank ceil(width / 16) as in VMamba's SS2D so that its ImageNet weights
load one to one) with drop path rising linearly from 0 at the first block to ``drop_path_rate`` at the last.
Module names (``patch_embed``, ``stages``, ``merges``) are what ``logvmamba_nnunet.networks.vmamba_pretrained`` maps
VMamba's checkpoint keys to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.modules.validation import check_positive_int

VMAMBA_TINY_DEPTHS = (2, 2, 9, 2)
VMAMBA_TINY_WIDTHS = (96, 192, 384, 768)
VMAMBA_PATCH_SIZE = 4
VMAMBA_DIRECTIONS = 4
VMAMBA_EXPAND = 2.0


def vmamba_dt_rank(width: int) -> int:
    """VMamba's SS2D dt rank: ceil(block width / 16) (6 for 96)."""
    return math.ceil(width / 16)


class PatchEmbedding2D(nn.Module):
    """Conv2d(in_channels -> width, kernel 4, stride 4, bias) + LayerNorm(width).

    x: (B, in_channels, H, W), H and W multiples of 4 -> channels-last (B, H/4, W/4, width).
    """

    def __init__(self, in_channels: int, width: int, patch_size: int = VMAMBA_PATCH_SIZE) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) -> (B, H/4, W/4, width)."""
        return self.norm(self.proj(x).movedim(1, -1))


class PatchMerging2D(nn.Module):
    """Halve the resolution and double the width: (B, H, W, C) -> (B, H/2, W/2, 2C), H and W even.

    The four phases of every 2x2 window are concatenated on the channel axis in Swin's / VMamba's order
    (row, column) = (even, even), (odd, even), (even, odd), (odd, odd) -- the order VMamba's pretrained
    ``reduction`` expects -- then LayerNorm(4C) and Linear(4C -> 2C, no bias).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        check_positive_int("width", width)
        self.norm = nn.LayerNorm(4 * width)
        self.reduction = nn.Linear(4 * width, 2 * width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) -> (B, H/2, W/2, 2C)."""
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(f"patch merging needs an even height and width, got {height}x{width}; pad the input "
                             "to a multiple of 32 (the network does this itself).")
        phases = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(phases, dim=-1)))


class VMambaEncoder2D(nn.Module):
    """VMamba v0 encoder: patch embedding, ``len(depths)`` stages of VSS blocks, patch merging in between.

    Args:
        input_channels: channels of the input image.
        widths: block width per stage; each must be twice the previous one (patch merging doubles it).
        depths: VSS blocks per stage.
        drop_path_rate: drop path of the last block; rises linearly from 0 over all blocks.
        d_state: N of the SSMs.
        scan_backend: ``backend`` of ``selective_scan``.

    Forward: x (B, input_channels, H, W), H and W multiples of ``size_multiple`` (4 * 2^(stages - 1)) ->
    list of channels-last features, stage s: (B, H / (4 * 2^s), W / (4 * 2^s), widths[s]).
    """

    def __init__(self, input_channels: int, widths: Sequence[int] = VMAMBA_TINY_WIDTHS,
                 depths: Sequence[int] = VMAMBA_TINY_DEPTHS, drop_path_rate: float = 0.2, d_state: int = 16,
                 scan_backend: str = "auto") -> None:
        super().__init__()
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {depths} must have one entry per stage (VMamba-Tiny: "
                             f"widths {list(VMAMBA_TINY_WIDTHS)}, depths {list(VMAMBA_TINY_DEPTHS)}).")
        for name, values in (("widths", widths), ("depths", depths)):
            for value in values:
                check_positive_int(name, value)
        if any(b != 2 * a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"widths {widths} must double from stage to stage (patch merging maps C to 2C), "
                             "e.g. [96, 192, 384, 768].")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1).")
        self.widths = tuple(widths)
        self.size_multiple = VMAMBA_PATCH_SIZE * 2 ** (len(widths) - 1)
        n_blocks = sum(depths)
        rates = [drop_path_rate * index / max(n_blocks - 1, 1) for index in range(n_blocks)]
        self.patch_embed = PatchEmbedding2D(input_channels, widths[0])
        self.stages = nn.ModuleList()
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            first = sum(depths[:stage])
            self.stages.append(nn.ModuleList(
                LoGVMambaBlock(width, 2, kind="vss", expand=VMAMBA_EXPAND, d_state=d_state,
                               directions=VMAMBA_DIRECTIONS, drop_path=rates[first + index],
                               scan_backend=scan_backend, dt_rank=vmamba_dt_rank(width))
                for index in range(depth)))
        self.merges = nn.ModuleList(PatchMerging2D(width) for width in widths[:-1])

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, C_in, H, W) -> per-stage channels-last features (B, H_s, W_s, widths[s])."""
        height, width = x.shape[2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"the encoder needs height and width that are multiples of {self.size_multiple}, got "
                             f"{height}x{width}; pad the input (LoGVMambaSwinUMamba2D does this itself).")
        features = []
        x = self.patch_embed(x)
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = self.merges[stage - 1](x)
            for block in blocks:
                x = block(x)
            features.append(x)
        return features

"""The Swin-UMamba-dagger decoder with LoG-VMamba blocks, 2D, channels-last inside (paper §3.4).

Per level, deepest first (level l rebuilds the resolution of encoder stage S - 2 - l, width C = that stage's width):

    patch expand: Linear(2C -> 4C, no bias), 2x pixel shuffle (channels ordered (p1 p2 c)) -> C, LayerNorm(C)
    concatenate the encoder feature of that stage -> 2C; Linear(2C -> C)
    ``blocks_per_level`` LoG-VMamba blocks of width C

then the final 4x patch expand (Linear(C0 -> 16 C0, no bias), 4x pixel shuffle -> C0, LayerNorm(C0)) back to the
input resolution. 1x1 convolutions give the logits: at full resolution, and for deep supervision at every level
(1/4, 1/8, 1/16 of the input for VMamba's four stages). The heads always exist, so the parameters do not depend on
``deep_supervision``.

GTX defaults are the authors' decoder settings, deepest level first: stride Ks = (2, 2, 4), channel squeeze
q = (2, 1, 1); LTX squeeze 8 (the 2D default of the blocks). Drop path falls linearly from ``drop_path_rate`` at the
first (deepest) block to 0 at the last, as in Swin-UMamba-dagger.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.modules.mixer import GLOBAL_KINDS, MIXER_KINDS
from logvmamba_nnunet.modules.validation import check_choice, check_positive_int

DEFAULT_DECODER_GTX_STRIDES = (2, 2, 4)
DEFAULT_DECODER_GTX_SQUEEZES = (2, 1, 1)
DECODER_KINDS = (*MIXER_KINDS, "none")


class PatchExpand2D(nn.Module):
    """Upsample by ``scale`` with a linear layer and a pixel shuffle: (B, H, W, C_in) -> (B, sH, sW, C_out).

    Linear(C_in -> C_out * scale^2, no bias), pixel shuffle, LayerNorm(C_out). The shuffle takes output channel c at
    offset (i, j) from channel (i * scale + j) * C_out + c, i.e. einops' 'b h w (p1 p2 c) -> b (h p1) (w p2) c' as in
    Swin-Unet and the authors' code (``F.pixel_shuffle`` would read c * scale^2 + i * scale + j), so that weights
    trained there load unchanged.
    """

    def __init__(self, in_width: int, out_width: int, scale: int) -> None:
        super().__init__()
        for name, value in (("in_width", in_width), ("out_width", out_width), ("scale", scale)):
            check_positive_int(name, value)
        self.scale = scale
        self.expand = nn.Linear(in_width, out_width * scale**2, bias=False)
        self.norm = nn.LayerNorm(out_width)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C_in) -> (B, scale * H, scale * W, C_out)."""
        batch, height, width = x.shape[:3]
        s = self.scale
        y = self.expand(x).view(batch, height, width, s, s, -1)
        shuffled = y.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, y.shape[-1])
        return self.norm(shuffled)


class DecoderLevel2D(nn.Module):
    """Patch expand the deeper feature, concatenate the skip, Linear(2C -> C), then LoG-VMamba blocks.

    Forward: deeper (B, h, w, 2C) and skip (B, 2h, 2w, C), channels-last -> (B, 2h, 2w, C).
    """

    def __init__(self, width: int, blocks: Sequence[LoGVMambaBlock]) -> None:
        super().__init__()
        self.expand = PatchExpand2D(2 * width, width, 2)
        self.merge = nn.Linear(2 * width, width)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, deeper: Tensor, skip: Tensor) -> Tensor:
        """deeper: (B, h, w, 2C), skip: (B, 2h, 2w, C) -> (B, 2h, 2w, C)."""
        x = self.merge(torch.cat([self.expand(deeper), skip], dim=-1))
        for block in self.blocks:
            x = block(x)
        return x


def _per_level(name: str, values: Sequence[int] | None, default: Sequence[int], n_levels: int) -> list[int]:
    if values is None:
        if len(default) != n_levels:
            raise ValueError(f"the default {name} {list(default)} is for 3 decoder levels (4 encoder stages) but "
                             f"this decoder has {n_levels}; give {name} with one entry per level, deepest first.")
        values = default
    values = [int(v) for v in values]
    if len(values) != n_levels:
        raise ValueError(f"{name} has {len(values)} entries but the decoder has {n_levels} levels; give one per "
                         "level, deepest first.")
    return values


class LoGVMambaDecoder2D(nn.Module):
    """Swin-UMamba-dagger decoder with LoG-family blocks.

    Args:
        widths: encoder widths per stage (shallowest first), each twice the previous one.
        num_classes: output channels of the heads.
        level_sizes: planned spatial size (h, w) of every encoder stage (the padded patch size / 4 / 2^s);
            fixes the GTX grids (inputs of other sizes still work).
        deep_supervision: return every head's output (highest resolution first) instead of the full-size one.
        kind: mixer kind of every decoder block, one of ``DECODER_KINDS``; ``vss`` gives Swin-UMamba-dagger;
            ``none`` builds no block (each level is the patch expand and the merge only, the backbone-only
            baseline).
        gtx_strides, gtx_squeezes: per level, deepest first; None -> the authors' (2, 2, 4) and (2, 1, 1).
        blocks_per_level: LoG-VMamba blocks per level.
        directions, placement, ltx_squeeze, expand, d_state, scan_backend: passed to every block.
        drop_path_rate: drop path of the deepest block, falling linearly to 0 at the last one.

    Forward: channels-last encoder features (stage s: (B, H_s, W_s, widths[s])) -> logits (B, num_classes, 4 H_0,
    4 W_0), or with deep supervision the list [full, level of stage 0, stage 1, ...] of (B, num_classes, ...).
    """

    def __init__(self, widths: Sequence[int], num_classes: int, level_sizes: Sequence[Sequence[int]],
                 deep_supervision: bool = True, kind: str = "local_global",
                 gtx_strides: Sequence[int] | None = None, gtx_squeezes: Sequence[int] | None = None,
                 blocks_per_level: int = 2, directions: int = 1, placement: str = "interleaved",
                 ltx_squeeze: int | None = None, expand: float = 2.0, d_state: int = 16,
                 drop_path_rate: float = 0.2, scan_backend: str = "auto") -> None:
        super().__init__()
        check_choice("kind", kind, DECODER_KINDS)
        check_positive_int("num_classes", num_classes)
        check_positive_int("blocks_per_level", blocks_per_level)
        widths = [int(w) for w in widths]
        if len(widths) < 2 or len(level_sizes) != len(widths):
            raise ValueError(f"need at least two encoder stages and one planned size per stage, got widths {widths} "
                             f"and level_sizes {[list(s) for s in level_sizes]}.")
        n_levels = len(widths) - 1
        strides = _per_level("gtx_strides", gtx_strides, DEFAULT_DECODER_GTX_STRIDES, n_levels)
        squeezes = _per_level("gtx_squeezes", gtx_squeezes, DEFAULT_DECODER_GTX_SQUEEZES, n_levels)
        has_gtx = kind in GLOBAL_KINDS
        blocks_per_level = 0 if kind == "none" else blocks_per_level
        n_blocks = n_levels * blocks_per_level
        rates = [drop_path_rate * (1 - index / max(n_blocks - 1, 1)) for index in range(n_blocks)]
        self.deep_supervision = deep_supervision
        self.levels = nn.ModuleList()
        for level in range(n_levels):
            stage = n_levels - 1 - level
            blocks = [
                LoGVMambaBlock(widths[stage], 2, kind=kind, planned_size=tuple(level_sizes[stage]), expand=expand,
                               d_state=d_state, directions=directions, placement=placement, ltx_squeeze=ltx_squeeze,
                               gtx_stride=strides[level] if has_gtx else 1,
                               gtx_squeeze=squeezes[level] if has_gtx else 1,
                               drop_path=rates[level * blocks_per_level + index], scan_backend=scan_backend)
                for index in range(blocks_per_level)]
            self.levels.append(DecoderLevel2D(widths[stage], blocks))
        self.final_expand = PatchExpand2D(widths[0], widths[0], 4)
        self.heads = nn.ModuleList(nn.Conv2d(w, num_classes, 1) for w in [widths[0], *widths[:-1]])

    def forward(self, features: Sequence[Tensor]) -> Tensor | list[Tensor]:
        """features: channels-last per encoder stage -> full-size logits, or all heads' logits (largest first)."""
        x = features[-1]
        level_outputs = []
        for level, module in enumerate(self.levels):
            x = module(x, features[-2 - level])
            level_outputs.append(x)
        full = self.heads[0](self.final_expand(x).movedim(-1, 1))
        if not self.deep_supervision:
            return full
        shallow_first = level_outputs[::-1]
        return [full] + [head(y.movedim(-1, 1)) for head, y in zip(self.heads[1:], shallow_first)]

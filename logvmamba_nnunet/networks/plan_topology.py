"""An nnU-Net plan's U-Net topology (``architecture.arch_kwargs``), normalised and checked in one place.

Both networks built on ``ResidualUNetWithStageLayers`` (the LoG-VMamba U-Net and the U-Mamba baselines) take the
plan's kwargs as nnU-Net writes them: classes or dotted names, a value per stage or one value for all stages, a
stride or kernel size per axis or one int for all axes, and either ``n_conv_per_stage`` (default plans) or
``n_blocks_per_stage`` (ResEnc presets). ``PlanTopology.from_arch_kwargs`` turns them into one checked record.
"""

from __future__ import annotations

import dataclasses
import pydoc
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from logvmamba_nnunet.modules.validation import per_axis

CONV_DIMS: dict[type[nn.Module], int] = {nn.Conv2d: 2, nn.Conv3d: 3}


def locate_class(value, what: str):
    """``value`` itself, or the object a dotted name from a plans file points to (ValueError if none)."""
    if not isinstance(value, str):
        return value
    located = pydoc.locate(value)
    if located is None:
        raise ValueError(f"cannot import {what} {value!r} named in the plans; check the spelling "
                         "(e.g. 'torch.nn.modules.conv.Conv3d').")
    return located


def per_stage_list(value, n: int, name: str) -> list:
    """An int repeated ``n`` times, or a sequence checked to have ``n`` entries."""
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries, expected one per stage ({n}).")
    return value


@dataclass(frozen=True)
class PlanTopology:
    """The residual U-Net of a plan: per encoder stage its width, kernel, stride and residual blocks; per decoder
    level (n_stages - 1, lowest resolution first) its residual blocks; the conv, norm, dropout and nonlinearity.

    Kernel sizes and strides hold one tuple of ``spatial_dims`` ints per stage.
    """

    conv_op: type[nn.Module]
    n_stages: int
    features_per_stage: list[int]
    kernel_sizes: list[tuple[int, ...]]
    strides: list[tuple[int, ...]]
    n_blocks_per_stage: list[int]
    n_conv_per_stage_decoder: list[int]
    conv_bias: bool = False
    norm_op: type[nn.Module] | None = None
    norm_op_kwargs: dict | None = None
    dropout_op: type[nn.Module] | None = None
    dropout_op_kwargs: dict | None = None
    nonlin: type[nn.Module] | None = None
    nonlin_kwargs: dict | None = None

    @property
    def spatial_dims(self) -> int:
        """2 (Conv2d) or 3 (Conv3d)."""
        return CONV_DIMS[self.conv_op]

    def with_block_counts(self, encoder: Sequence[int], decoder: Sequence[int]) -> PlanTopology:
        """The same topology with other residual block counts per encoder stage and per decoder level."""
        return dataclasses.replace(self, n_blocks_per_stage=list(encoder), n_conv_per_stage_decoder=list(decoder))

    @classmethod
    def from_arch_kwargs(cls, *, n_stages: int, features_per_stage: Sequence[int] | int, conv_op, kernel_sizes,
                         strides, n_conv_per_stage_decoder: Sequence[int] | int,
                         n_blocks_per_stage: Sequence[int] | int | None = None,
                         n_conv_per_stage: Sequence[int] | int | None = None, conv_bias: bool = False,
                         norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                         dropout_op_kwargs: dict | None = None, nonlin=None,
                         nonlin_kwargs: dict | None = None) -> PlanTopology:
        """Normalise and check nnU-Net ``arch_kwargs`` (``PlainConvUNet`` or ResEnc style).

        ``conv_op``, ``norm_op``, ``dropout_op`` and ``nonlin`` may be classes or dotted names. The residual blocks
        per encoder stage come from ``n_blocks_per_stage`` (ResEnc plans) or else ``n_conv_per_stage`` (default
        plans). Raises ValueError naming the argument for an unsupported conv, missing block counts, or per-stage
        or per-axis lists of the wrong length.
        """
        conv_op = locate_class(conv_op, "conv_op")
        if conv_op not in CONV_DIMS:
            raise ValueError(f"conv_op {getattr(conv_op, '__name__', conv_op)} is not supported: these networks are "
                             "2D (Conv2d) or 3D (Conv3d). For other data, use a 2d or 3d_fullres configuration.")
        dims = CONV_DIMS[conv_op]
        blocks = n_blocks_per_stage if n_blocks_per_stage is not None else n_conv_per_stage
        if blocks is None:
            raise ValueError("give n_blocks_per_stage (ResEnc plans) or n_conv_per_stage (default plans).")
        return cls(
            conv_op=conv_op,
            n_stages=n_stages,
            features_per_stage=per_stage_list(features_per_stage, n_stages, "features_per_stage"),
            kernel_sizes=[per_axis("kernel_sizes", k, dims)
                          for k in per_stage_list(kernel_sizes, n_stages, "kernel_sizes")],
            strides=[per_axis("strides", s, dims) for s in per_stage_list(strides, n_stages, "strides")],
            n_blocks_per_stage=per_stage_list(blocks, n_stages, "n_blocks_per_stage"),
            n_conv_per_stage_decoder=per_stage_list(n_conv_per_stage_decoder, n_stages - 1,
                                                    "n_conv_per_stage_decoder"),
            conv_bias=conv_bias,
            norm_op=locate_class(norm_op, "norm_op"),
            norm_op_kwargs=norm_op_kwargs,
            dropout_op=locate_class(dropout_op, "dropout_op"),
            dropout_op_kwargs=dropout_op_kwargs,
            nonlin=locate_class(nonlin, "nonlin"),
            nonlin_kwargs=nonlin_kwargs,
        )

"""The U-Mamba baselines (Ma et al., 2024) on this package's residual U-Net: U-Mamba-Enc and U-Mamba-Bot.

- ``UMambaEncUNet``: a ``UMambaLayer`` (LayerNorm + 1D Mamba over the flattened map, fp32) after every encoder
  stage.
- ``UMambaBotUNet``: one ``UMambaLayer`` after the last encoder stage (the bottleneck), nothing elsewhere.

Both share ``ResidualUNetWithStageLayers`` (residual encoder, residual decoder with deep supervision) with the
LoG-VMamba network. The topology comes from an nnU-Net plan's ``architecture.arch_kwargs`` (``n_conv_per_stage`` of
the default plans, or ``n_blocks_per_stage`` of the ResEnc presets), 2D or 3D, with U-Mamba's depth rule applied
to the block counts (``umamba_block_counts``; ``umamba_depth_rule=False`` keeps the plan's counts). The layers do
not depend on the patch size: any input size works.

Either class can be named in a plans file (``network_class_name``), e.g.
``"logvmamba_nnunet.networks.umamba.UMambaEncUNet"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from logvmamba_nnunet.modules.mamba1d import UMambaLayer
from logvmamba_nnunet.networks.plan_arguments import locate_class, per_axis, per_stage_list
from logvmamba_nnunet.networks.residual_unet import ResidualUNetWithStageLayers

_CONV_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}


def umamba_block_counts(encoder_blocks: Sequence[int], decoder_blocks: Sequence[int]
                        ) -> tuple[list[int], list[int]]:
    """U-Mamba's depth rule: with n stages, one residual block in encoder stages s >= ceil(n/2) (the deeper half)
    and in decoder stages with index >= ceil(n/2), where decoder index 0 is the lowest resolution (so the
    highest-resolution decoder stages get one block). Other counts are kept.

    Args: encoder_blocks (n entries) and decoder_blocks (n - 1 entries). Returns the two new lists.
    """
    n_stages = len(encoder_blocks)
    if len(decoder_blocks) != n_stages - 1:
        raise ValueError(f"decoder_blocks has {len(decoder_blocks)} entries; with {n_stages} encoder stages it "
                         f"needs {n_stages - 1}.")
    first_single = math.ceil(n_stages / 2)
    return ([count if stage < first_single else 1 for stage, count in enumerate(encoder_blocks)],
            [count if stage < first_single else 1 for stage, count in enumerate(decoder_blocks)])


class _UMambaUNet(ResidualUNetWithStageLayers):
    """Plan kwargs -> residual U-Net with a ``UMambaLayer`` after every encoder stage, or, when the class attribute
    ``bottleneck_only`` is set, after the last stage only.

    Args (nnU-Net ``arch_kwargs`` plus the Mamba settings):
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage_decoder, conv_bias, norm_op,
            norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs: from the plan (classes or dotted
            names).
        n_blocks_per_stage / n_conv_per_stage: residual blocks per encoder stage (ResEnc plans / default plans).
        d_state, d_conv, expand, scan_backend: passed to every ``UMambaLayer``.
        umamba_depth_rule: apply ``umamba_block_counts`` to the plan's block counts (U-Mamba does).

    Forward: x (B, input_channels, *S) -> logits (B, num_classes, *S), or with deep supervision a list of logits,
    full resolution first.
    """

    bottleneck_only: bool = False

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True, *,
                 n_stages: int, features_per_stage: Sequence[int] | int, conv_op, kernel_sizes, strides,
                 n_conv_per_stage_decoder: Sequence[int] | int, n_blocks_per_stage: Sequence[int] | int | None = None,
                 n_conv_per_stage: Sequence[int] | int | None = None, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, scan_backend: str = "auto",
                 umamba_depth_rule: bool = True):
        conv_op = locate_class(conv_op, "conv_op")
        if conv_op not in _CONV_DIMS:
            raise ValueError(f"conv_op {getattr(conv_op, '__name__', conv_op)} is not supported: U-Mamba networks "
                             "are 2D (Conv2d) or 3D (Conv3d). For other data, use a 2d or 3d_fullres configuration.")
        blocks = n_blocks_per_stage if n_blocks_per_stage is not None else n_conv_per_stage
        if blocks is None:
            raise ValueError("give n_blocks_per_stage (ResEnc plans) or n_conv_per_stage (default plans).")
        features = per_stage_list(features_per_stage, n_stages, "features_per_stage")
        encoder_blocks = per_stage_list(blocks, n_stages, "n_blocks_per_stage")
        decoder_blocks = per_stage_list(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        if umamba_depth_rule:
            encoder_blocks, decoder_blocks = umamba_block_counts(encoder_blocks, decoder_blocks)
        layers = [UMambaLayer(width, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
                  if with_mamba else nn.Identity()
                  for width, with_mamba in zip(features, self.stages_with_mamba(n_stages))]
        dims = _CONV_DIMS[conv_op]
        super().__init__(
            input_channels, num_classes, n_stages, features, conv_op,
            per_stage_list(kernel_sizes, n_stages, "kernel_sizes"),
            [per_axis(s, dims) for s in per_stage_list(strides, n_stages, "strides")], encoder_blocks, decoder_blocks,
            layers, conv_bias,
            locate_class(norm_op, "norm_op"), norm_op_kwargs, locate_class(dropout_op, "dropout_op"), dropout_op_kwargs,
            locate_class(nonlin, "nonlin"), nonlin_kwargs, deep_supervision)
        self.input_channels, self.spatial_dims = input_channels, dims

    @classmethod
    def stages_with_mamba(cls, n_stages: int) -> list[bool]:
        """For each encoder stage, whether a ``UMambaLayer`` follows it."""
        return [not cls.bottleneck_only or stage == n_stages - 1 for stage in range(n_stages)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected a {self.spatial_dims}D input (B, {self.input_channels}, *spatial), got "
                             f"{tuple(x.shape)}: the network was built for {self.input_channels} input channels "
                             "(check the dataset's channel_names and the images' modalities).")
        return super().forward(x)


class UMambaEncUNet(_UMambaUNet):
    """U-Mamba-Enc: a ``UMambaLayer`` after every encoder stage (arguments: see ``_UMambaUNet``)."""


class UMambaBotUNet(_UMambaUNet):
    """U-Mamba-Bot: one ``UMambaLayer`` at the bottleneck, after the last encoder stage (arguments: see
    ``_UMambaUNet``)."""

    bottleneck_only = True

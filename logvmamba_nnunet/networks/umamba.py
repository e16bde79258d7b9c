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

from torch import nn

from logvmamba_nnunet.modules.mamba1d import UMambaLayer
from logvmamba_nnunet.networks.plan_topology import PlanTopology
from logvmamba_nnunet.networks.residual_unet import ResidualUNetWithStageLayers


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

    Args:
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        d_state, d_conv, expand, scan_backend: passed to every ``UMambaLayer``.
        umamba_depth_rule: apply ``umamba_block_counts`` to the plan's block counts (U-Mamba does).
        **arch_kwargs: the plan's ``architecture.arch_kwargs`` (n_stages, features_per_stage, conv_op, kernel_sizes,
            strides, n_conv_per_stage or n_blocks_per_stage, n_conv_per_stage_decoder, conv_bias, norm_op,
            norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs; see
            ``PlanTopology.from_arch_kwargs``).

    Forward: x (B, input_channels, *S) -> logits (B, num_classes, *S), or with deep supervision a list of logits,
    full resolution first.
    """

    bottleneck_only: bool = False

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True, *,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, scan_backend: str = "auto",
                 umamba_depth_rule: bool = True, **arch_kwargs):
        topology = PlanTopology.from_arch_kwargs(**arch_kwargs)
        if umamba_depth_rule:
            topology = topology.with_block_counts(
                *umamba_block_counts(topology.n_blocks_per_stage, topology.n_conv_per_stage_decoder))
        layers = [UMambaLayer(width, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
                  if with_mamba else nn.Identity()
                  for width, with_mamba in zip(topology.features_per_stage, self.stages_with_mamba(topology.n_stages))]
        super().__init__(input_channels, num_classes, topology, layers, deep_supervision)

    @classmethod
    def stages_with_mamba(cls, n_stages: int) -> list[bool]:
        """For each encoder stage, whether a ``UMambaLayer`` follows it."""
        return [not cls.bottleneck_only or stage == n_stages - 1 for stage in range(n_stages)]


class UMambaEncUNet(_UMambaUNet):
    """U-Mamba-Enc: a ``UMambaLayer`` after every encoder stage (arguments: see ``_UMambaUNet``)."""


class UMambaBotUNet(_UMambaUNet):
    """U-Mamba-Bot: one ``UMambaLayer`` at the bottleneck, after the last encoder stage (arguments: see
    ``_UMambaUNet``)."""

    bottleneck_only = True

"""A residual U-Net whose encoder stages are each followed by an optional sequence layer (U-Mamba-Enc style).

This is U-Mamba-Enc's topology (paper §3.4, see ``docs/architecture.md``): dynamic-network-architectures' residual
encoder (stem, then per stage a strided residual block and more residual blocks), a layer after every encoder stage
(a LoG-VMamba block, a Mamba layer, or ``nn.Identity``), and the residual decoder of ``UNetResDecoder`` (transposed
conv, concatenate the skip, residual blocks, a 1x1 segmentation head per level for deep supervision). The networks of
this package and the U-Mamba baselines differ only in the per-stage layers they pass in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from logvmamba_nnunet.networks.plan_topology import PlanTopology


class ResidualEncoderWithStageLayers(nn.Module):
    """Residual encoder that applies ``stage_layers[s]`` after encoder stage ``s``.

    Args:
        residual_encoder: a ``ResidualEncoder`` built with ``return_skips=True``.
        stage_layers: one module per stage, mapping (B, C_s, *S_s) -> (B, C_s, *S_s).

    Forward: x (B, C_in, *S) -> list of skips, skip s of shape (B, C_s, *S_s), the bottleneck last.
    """

    def __init__(self, residual_encoder: ResidualEncoder, stage_layers: Sequence[nn.Module]):
        super().__init__()
        if len(stage_layers) != len(residual_encoder.stages):
            raise ValueError(f"stage_layers has {len(stage_layers)} entries but the encoder has "
                             f"{len(residual_encoder.stages)} stages: give exactly one layer per stage "
                             "(nn.Identity() for none).")
        self.residual_encoder = residual_encoder
        self.stage_layers = nn.ModuleList(stage_layers)
        # attributes UNetResDecoder reads from its encoder
        for name in ("output_channels", "strides", "conv_op", "norm_op", "norm_op_kwargs", "nonlin", "nonlin_kwargs",
                     "dropout_op", "dropout_op_kwargs", "conv_bias", "kernel_sizes"):
            setattr(self, name, getattr(residual_encoder, name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.residual_encoder.stem is not None:
            x = self.residual_encoder.stem(x)
        skips = []
        for stage, layer in zip(self.residual_encoder.stages, self.stage_layers):
            x = layer(stage(x))
            skips.append(x)
        return skips


class ResidualUNetWithStageLayers(nn.Module):
    """Encoder (residual stages + per-stage layers) and U-Mamba-Enc's residual decoder with deep supervision.

    Args:
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        topology: the plan's U-Net (``PlanTopology.from_arch_kwargs``).
        stage_layers: one module per encoder stage (``nn.Identity()`` for none), channels-first in and out.

    Every Conv2d/Conv3d (and transposed conv), those inside the stage layers included, gets dynamic-network-
    architectures' He initialisation ``InitWeights_He(1e-2)``, as U-Mamba and the authors of LoG-VMamba apply it to
    their whole networks; Linear and Conv1d layers and the SSM parameters keep their own initialisation.

    Forward: x (B, input_channels, *S) -> logits (B, num_classes, *S), or with ``decoder.deep_supervision`` a list of
    logits at full resolution first, then each lower decoder level. Parameters do not depend on deep supervision.
    """

    def __init__(self, input_channels: int, num_classes: int, topology: PlanTopology,
                 stage_layers: Sequence[nn.Module], deep_supervision: bool = True):
        super().__init__()
        t = topology
        residual_encoder = ResidualEncoder(
            input_channels, t.n_stages, t.features_per_stage, t.conv_op, t.kernel_sizes, t.strides,
            t.n_blocks_per_stage, t.conv_bias, t.norm_op, t.norm_op_kwargs, t.dropout_op, t.dropout_op_kwargs,
            t.nonlin, t.nonlin_kwargs, return_skips=True)
        self.input_channels, self.spatial_dims = input_channels, t.spatial_dims
        self.encoder = ResidualEncoderWithStageLayers(residual_encoder, stage_layers)
        self.decoder = UNetResDecoder(self.encoder, num_classes, t.n_conv_per_stage_decoder, deep_supervision)
        self.apply(InitWeights_He(1e-2))

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless x is (B, input_channels, *S) with ``spatial_dims`` spatial axes."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected a {self.spatial_dims}D input (B, {self.input_channels}, *spatial), got "
                             f"{tuple(x.shape)}: the network was built for {self.input_channels} input channels "
                             "(check the dataset's channel_names and the images' modalities).")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        return self.decoder(self.encoder(x))

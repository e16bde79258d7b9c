"""A residual U-Net whose encoder stages are each followed by an optional sequence layer (U-Mamba-Enc style).

This is U-Mamba-Enc's topology (SPEC §4): dynamic-network-architectures' residual encoder (stem, then per stage a
strided residual block and more residual blocks), a layer after every encoder stage (a LoG-VMamba block, a Mamba
layer, or ``nn.Identity``), and the residual decoder of ``UNetResDecoder`` (transposed conv, concatenate the skip,
residual blocks, a 1x1 segmentation head per level for deep supervision). The networks of this package and the
U-Mamba baselines differ only in the per-stage layers they pass in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn


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

    Forward: x (B, C_in, *S) -> logits (B, num_classes, *S), or with ``decoder.deep_supervision`` a list of logits
    at full resolution first, then each lower decoder level. Parameters do not depend on deep supervision.
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage: Sequence[int],
                 conv_op: type[nn.Module], kernel_sizes: Sequence, strides: Sequence,
                 n_blocks_per_stage: Sequence[int], n_conv_per_stage_decoder: Sequence[int],
                 stage_layers: Sequence[nn.Module], conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[nn.Module] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = True):
        super().__init__()
        residual_encoder = ResidualEncoder(
            input_channels, n_stages, list(features_per_stage), conv_op, list(kernel_sizes), list(strides),
            list(n_blocks_per_stage), conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
            nonlin_kwargs, return_skips=True)
        self.encoder = ResidualEncoderWithStageLayers(residual_encoder, stage_layers)
        self.decoder = UNetResDecoder(self.encoder, num_classes, list(n_conv_per_stage_decoder), deep_supervision)
        # He init for the convolutional parts only; the stage layers keep their own initialisation
        for part in (residual_encoder, self.decoder.stages, self.decoder.transpconvs, self.decoder.seg_layers):
            part.apply(InitWeights_He(1e-2))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

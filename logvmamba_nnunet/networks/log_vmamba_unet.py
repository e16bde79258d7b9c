"""The 3D (and 2D-capable) LoG-VMamba U-Net: U-Mamba-Enc with a LoG-family block after every encoder stage.

Paper §3.4 / SPEC §4: the encoder is U-Mamba-Enc's residual encoder whose per-stage Mamba layers are replaced by
LoG-family blocks (kinds chosen per stage by :mod:`logvmamba_nnunet.networks.stage_rules`); the residual decoder
is unchanged. The topology comes from an nnU-Net plan's ``architecture.arch_kwargs`` (``PlainConvUNet`` kwargs with
``n_conv_per_stage``, or the ResEnc presets' ``n_blocks_per_stage``) plus the plan's ``patch_size``, which fixes the
number of GTX grid positions at each stage. Inputs of other sizes still work (the GTX resamples its grid).

The class can be named in a plans file (``network_class_name``), e.g.
``"logvmamba_nnunet.networks.log_vmamba_unet.LoGVMambaUNet"``, with ``patch_size`` added to ``arch_kwargs``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.networks.plan_arguments import locate_class, per_axis, per_stage_list
from logvmamba_nnunet.networks.residual_unet import ResidualUNetWithStageLayers
from logvmamba_nnunet.networks.stage_rules import GTX_KINDS, StageMixerConfig, resolve_stage_configs

_CONV_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}


class ChannelsFirstBlock(nn.Module):
    """Runs a channels-last LoG-VMamba block on a channels-first feature map: (B, C, *S) -> (B, C, *S)."""

    def __init__(self, block: LoGVMambaBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.movedim(1, -1)).movedim(-1, 1).contiguous()


class LoGVMambaUNet(ResidualUNetWithStageLayers):
    """U-Mamba-Enc topology with LoG-family blocks after the encoder stages.

    Args (nnU-Net ``arch_kwargs`` plus the mixer settings):
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage_decoder, conv_bias, norm_op,
            norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs: from the plan (classes or dotted
            names).
        n_blocks_per_stage / n_conv_per_stage: residual blocks per encoder stage (ResEnc plans / default plans).
        patch_size: the planned patch size; fixes the GTX grids.
        stage_kinds, gtx_strides, gtx_squeezes: per-stage overrides of the rule in ``stage_rules``.
        ltx_squeeze, expand, d_state, directions, placement, scan_backend: passed to every block.
        drop_path_rate: stochastic depth of the blocks, rising linearly from 0 at stage 0 to this value.
        force_fp32: run the whole network with autocast disabled (the no-AMP trainers).

    Forward: x (B, input_channels, *S) -> logits (B, num_classes, *S) or the deep-supervision list.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True, *,
                 n_stages: int, features_per_stage: Sequence[int] | int, conv_op, kernel_sizes, strides,
                 n_conv_per_stage_decoder: Sequence[int] | int, n_blocks_per_stage: Sequence[int] | int | None = None,
                 n_conv_per_stage: Sequence[int] | int | None = None, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 patch_size: Sequence[int] | None = None, stage_kinds: Sequence[str] | None = None,
                 gtx_strides: Sequence[int] | None = None, gtx_squeezes: Sequence[int] | None = None,
                 ltx_squeeze: int | None = None, expand: float | None = None, d_state: int = 16,
                 directions: int = 1, placement: str = "interleaved", drop_path_rate: float = 0.0,
                 scan_backend: str = "auto", force_fp32: bool = False):
        conv_op = locate_class(conv_op, "conv_op")
        if conv_op not in _CONV_DIMS:
            raise ValueError(f"conv_op {getattr(conv_op, '__name__', conv_op)} is not supported: LoG-VMamba networks "
                             "are 2D (Conv2d) or 3D (Conv3d). For other data, use a 2d or 3d_fullres configuration.")
        dims = _CONV_DIMS[conv_op]
        if patch_size is None:
            raise ValueError("patch_size is required to size the global token extractors: add the plan's patch "
                             "size to arch_kwargs (e.g. \"patch_size\": [128, 128, 128]).")
        if len(patch_size) != dims:
            raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} axes but conv_op is {dims}D; "
                             f"give {dims} axes.")
        blocks = n_blocks_per_stage if n_blocks_per_stage is not None else n_conv_per_stage
        if blocks is None:
            raise ValueError("give n_blocks_per_stage (ResEnc plans) or n_conv_per_stage (default plans).")
        features = per_stage_list(features_per_stage, n_stages, "features_per_stage")
        strides = [per_axis(s, dims) for s in per_stage_list(strides, n_stages, "strides")]
        expand = expand if expand is not None else (2.0 if dims == 2 else 1.0)
        self.stage_configs: list[StageMixerConfig] = resolve_stage_configs(
            patch_size, strides, [int(expand * f) for f in features], stage_kinds, gtx_strides, gtx_squeezes)
        layers: list[nn.Module] = []
        for stage, (config, width) in enumerate(zip(self.stage_configs, features)):
            if config.kind == "none":
                layers.append(nn.Identity())
                continue
            has_gtx = config.kind in GTX_KINDS
            layers.append(ChannelsFirstBlock(LoGVMambaBlock(
                width, dims, kind=config.kind, planned_size=config.planned_size, expand=expand, d_state=d_state,
                directions=directions, placement=placement, ltx_squeeze=ltx_squeeze,
                gtx_stride=config.gtx_stride if has_gtx else 1, gtx_squeeze=config.gtx_squeeze if has_gtx else 1,
                drop_path=drop_path_rate * stage / max(n_stages - 1, 1), scan_backend=scan_backend)))
        super().__init__(
            input_channels, num_classes, n_stages, features, conv_op,
            per_stage_list(kernel_sizes, n_stages, "kernel_sizes"),
            strides, per_stage_list(blocks, n_stages, "n_blocks_per_stage"),
            per_stage_list(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder"), layers, conv_bias,
            locate_class(norm_op, "norm_op"), norm_op_kwargs, locate_class(dropout_op, "dropout_op"), dropout_op_kwargs,
            locate_class(nonlin, "nonlin"), nonlin_kwargs, deep_supervision)
        self.input_channels = input_channels
        self.force_fp32 = force_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        dims = len(self.stage_configs[0].planned_size)
        if x.dim() != dims + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected a {dims}D input (B, {self.input_channels}, *spatial), got {tuple(x.shape)}: "
                             f"the network was built for {self.input_channels} input channels (check the dataset's "
                             "channel_names and the images' modalities).")
        if self.force_fp32:
            with autocast_disabled(x.device):
                return super().forward(x.float())
        return super().forward(x)


def brats_reference_arch_kwargs() -> dict:
    """The authors' 5-stage 3D BraTS topology (SPEC §4): 4 inputs, 3 regions, patch 128^3, E = 1."""
    return dict(
        n_stages=5, features_per_stage=[32, 64, 128, 256, 320], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 5,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * 4, n_blocks_per_stage=[1] * 5, n_conv_per_stage_decoder=[1] * 4,
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, patch_size=[128, 128, 128])


def build_benchmark_network_3d(patch_size: Sequence[int] = (128, 128, 128), scan_backend: str = "auto"
                               ) -> LoGVMambaUNet:
    """The BraTS reference network at ``patch_size`` (used by the benchmark scripts)."""
    kwargs = brats_reference_arch_kwargs()
    kwargs["patch_size"] = list(patch_size)
    return LoGVMambaUNet(4, 3, True, scan_backend=scan_backend, **kwargs)

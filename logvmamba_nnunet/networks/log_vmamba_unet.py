"""The 3D (and 2D-capable) LoG-VMamba U-Net: U-Mamba-Enc with a LoG-family block after every encoder stage.

Paper §3.4: the encoder is U-Mamba-Enc's residual encoder whose per-stage Mamba layers are replaced by
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
from logvmamba_nnunet.networks.plan_topology import PlanTopology
from logvmamba_nnunet.networks.residual_unet import ResidualUNetWithStageLayers
from logvmamba_nnunet.networks.stage_rules import (
    DEFAULT_MAX_GLOBAL_GRID,
    GTX_KINDS,
    StageMixerConfig,
    resolve_stage_configs,
)

BLOCK_NORM_EPS = 1e-6
"""eps of the blocks' pre-norm LayerNorm, the authors' value in their 3D network (their 2D model keeps 1e-5)."""


class ChannelsFirstBlock(nn.Module):
    """Runs a channels-last LoG-VMamba block on a channels-first feature map: (B, C, *S) -> (B, C, *S).

    The block gets a channels-last view (no copy; its LayerNorm makes the one channels-last copy it needs) and its
    residual sum follows the input's memory layout, so the output is already a contiguous channels-first map.
    """

    def __init__(self, block: LoGVMambaBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.movedim(1, -1)).movedim(-1, 1)


class LoGVMambaUNet(ResidualUNetWithStageLayers):
    """U-Mamba-Enc topology with LoG-family blocks after the encoder stages.

    Args:
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        patch_size: the planned patch size; fixes the GTX grids.
        stage_kinds, gtx_strides, gtx_squeezes: per-stage overrides of the rule in ``stage_rules``.
        ltx_squeeze, expand, d_state, directions, placement, scan_backend: passed to every block.
        drop_path_rate: DropPath probability of every block (the authors' 0.1 on all their 3D blocks).
        fp32_blocks: run each block entirely in float32 with autocast disabled, as the authors do; False runs only
            the SSM in float32 (faster and smaller under mixed precision).
        force_fp32: run the whole network with autocast disabled (the no-AMP trainers).
        recompute_blocks: in training, every block keeps only its input and recomputes its activations in backward
            (``LoGVMambaBlock``'s ``recompute``): same results, far less activation memory, one more forward of the
            blocks per step.
        **arch_kwargs: the plan's ``architecture.arch_kwargs`` (n_stages, features_per_stage, conv_op, kernel_sizes,
            strides, n_conv_per_stage or n_blocks_per_stage, n_conv_per_stage_decoder, conv_bias, norm_op,
            norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs; see
            ``PlanTopology.from_arch_kwargs``).

    Forward: x (B, input_channels, *S) -> logits (B, num_classes, *S) or the deep-supervision list.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True, *,
                 patch_size: Sequence[int] | None = None, stage_kinds: Sequence[str] | None = None,
                 gtx_strides: Sequence[int] | None = None, gtx_squeezes: Sequence[int] | None = None,
                 ltx_squeeze: int | None = None, expand: float | None = None, d_state: int = 16,
                 directions: int = 1, placement: str = "interleaved", drop_path_rate: float = 0.1,
                 fp32_blocks: bool = True, scan_backend: str = "auto", force_fp32: bool = False,
                 recompute_blocks: bool = True, **arch_kwargs):
        topology = PlanTopology.from_arch_kwargs(**arch_kwargs)
        self.stage_configs, layers = build_stage_blocks(
            topology, patch_size, stage_kinds=stage_kinds, gtx_strides=gtx_strides, gtx_squeezes=gtx_squeezes,
            ltx_squeeze=ltx_squeeze, expand=expand, d_state=d_state, directions=directions, placement=placement,
            drop_path_rate=drop_path_rate, fp32_blocks=fp32_blocks, scan_backend=scan_backend,
            recompute_blocks=recompute_blocks)
        super().__init__(input_channels, num_classes, topology, layers, deep_supervision)
        self.force_fp32 = force_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.force_fp32:
            with autocast_disabled(x.device):
                return super().forward(x.float())
        return super().forward(x)


def build_stage_blocks(topology: PlanTopology, patch_size: Sequence[int] | None, *,
                       stage_kinds: Sequence[str] | None = None, gtx_strides: Sequence[int] | None = None,
                       gtx_squeezes: Sequence[int] | None = None, max_global_grid: int = DEFAULT_MAX_GLOBAL_GRID,
                       ltx_squeeze: int | None = None, expand: float | None = None, d_state: int = 16,
                       directions: int = 1, placement: str = "interleaved", drop_path_rate: float = 0.1,
                       fp32_blocks: bool = True, scan_backend: str = "auto", recompute_blocks: bool = True
                       ) -> tuple[list[StageMixerConfig], list[nn.Module]]:
    """The LoG-family block after each encoder stage of a plan's U-Net, as both 3D topologies build them.

    Args:
        topology: the plan's U-Net (``PlanTopology.from_arch_kwargs``).
        patch_size: planned spatial size of the first encoder stage's input (the plan's patch size in
            ``LoGVMambaUNet``; the max-pooled patch in ``LoGVMambaPooledUNet``); it fixes the GTX grids.
        stage_kinds, gtx_strides, gtx_squeezes, max_global_grid: the per-stage rule of ``stage_rules`` and its
            overrides.
        ltx_squeeze, expand (None: 2 in 2D, 1 in 3D), d_state, directions, placement, scan_backend: every block's.
        drop_path_rate, fp32_blocks: DropPath probability and float32 setting of every block (the authors' 3D
            settings by default; LayerNorm eps ``BLOCK_NORM_EPS``).
        recompute_blocks: every block's ``recompute`` (``LoGVMambaBlock``): keep only its input for backward.

    Returns the per-stage configurations and one module per stage: a ``ChannelsFirstBlock``, or ``nn.Identity``
    for kind ``none``. Raises ValueError for a missing patch size or one with the wrong number of axes.
    """
    dims = topology.spatial_dims
    if patch_size is None:
        raise ValueError("patch_size is required to size the global token extractors: add the plan's patch "
                         "size to arch_kwargs (e.g. \"patch_size\": [128, 128, 128]).")
    if len(patch_size) != dims:
        raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} axes but conv_op is {dims}D; "
                         f"give {dims} axes.")
    expand = expand if expand is not None else (2.0 if dims == 2 else 1.0)
    features = topology.features_per_stage
    configs = resolve_stage_configs(patch_size, topology.strides, [int(expand * f) for f in features], stage_kinds,
                                    gtx_strides, gtx_squeezes, max_global_grid)
    layers: list[nn.Module] = []
    for config, width in zip(configs, features):
        if config.kind == "none":
            layers.append(nn.Identity())
            continue
        has_gtx = config.kind in GTX_KINDS
        layers.append(ChannelsFirstBlock(LoGVMambaBlock(
            width, dims, config.kind, drop_path=drop_path_rate, norm_eps=BLOCK_NORM_EPS, fp32=fp32_blocks,
            planned_size=config.planned_size, expand=expand, d_state=d_state, directions=directions,
            placement=placement, ltx_squeeze=ltx_squeeze, gtx_stride=config.gtx_stride if has_gtx else 1,
            gtx_squeeze=config.gtx_squeeze if has_gtx else 1, scan_backend=scan_backend, recompute=recompute_blocks)))
    return configs, layers


def brats_reference_arch_kwargs() -> dict:
    """The authors' 5-stage 3D BraTS topology (paper §4.1-4.3, ``docs/architecture.md``): 4 inputs, 3 regions, patch
    128^3, E = 1."""
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

"""The authors' efficient 3D topology for LoG-VMamba, generalised to any nnU-Net plan: blocks at half resolution.

Paper §3.4 describes the 3D model as U-Mamba-Enc with LoG-family encoder blocks (``LoGVMambaUNet``: every block at
its stage's resolution). The network the authors released runs every encoder stage after a 2x max-pooling of the
stem's output, so each LoG-family block sees 2^dims times fewer tokens (64^3 ... 4^3 for a 128^3 patch); see
docs/architecture.md, section "3D topologies". ``LoGVMambaPooledUNet`` builds that topology from an nnU-Net plan:

- stem: residual blocks at full resolution (the plan's first-stage width, kernel and block count);
- 2x max-pooling along every axis the pooling rule allows (:func:`default_stem_pool`), then the plan's encoder
  stages (a strided residual block and more residual blocks), each followed by its LoG-family block; the GTX grids
  are planned at the pooled stage sizes;
- decoder: per level a 1x1 conv and linear (bilinear/trilinear) upsampling of the level below, the skip added,
  residual blocks; then the same to the stem's resolution with the stem's output as the skip, one residual block
  and a 1x1 segmentation head;
- U-Mamba's depth rule on the block counts (``umamba_block_counts``), as the authors apply it.

The first residual block of the stem, of every encoder stage and of every decoder level has a 1x1 convolution
(strided, with bias) on its skip path, as in the authors' network; otherwise the blocks are dynamic-network-
architectures' ``BasicBlockD``. Deep supervision, which the authors do not use, is added for nnU-Net's loss: a 1x1
head per decoder level (always built, so parameters do not depend on it); outputs are the full resolution first,
then each decoder level from the highest resolution down, at the scales :func:`deep_supervision_scales` gives.

The class can be named in a plans file (``network_class_name``), e.g.
``"logvmamba_nnunet.networks.log_vmamba_pooled_unet.LoGVMambaPooledUNet"``, with ``patch_size`` added to
``arch_kwargs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.utils import checkpoint

from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.modules.validation import per_axis
from logvmamba_nnunet.networks.log_vmamba_unet import brats_reference_arch_kwargs, build_stage_blocks
from logvmamba_nnunet.networks.plan_topology import PlanTopology
from logvmamba_nnunet.networks.residual_unet import ResidualUNetWithStageLayers
from logvmamba_nnunet.networks.stage_rules import DEFAULT_MAX_GLOBAL_GRID, StageMixerConfig, stage_spatial_sizes
from logvmamba_nnunet.networks.umamba import umamba_block_counts

STEM_POOL_FACTOR = 2
"""The max-pooling factor after the stem along each pooled axis (the authors' 2x)."""

MIN_POOLED_BOTTLENECK = 2
"""The pooling rule pools an axis only if the bottleneck keeps at least this many voxels along it."""

POOLED_MAX_GLOBAL_GRID_3D = 512
"""Default GTX grid bound of the pooled 3D network: 8^3 positions, the authors' grids at their block resolution
(Ks 4, 2, 1 at 32^3, 16^3, 8^3 for a 128^3 patch). 2D keeps ``stage_rules``' 4096 (64^2)."""

INTERPOLATION_MODES = {2: "bilinear", 3: "trilinear"}


def default_stem_pool(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The pooling rule: max-pool an axis 2x after the stem only if ``patch_size[axis]`` is divisible by
    2 * T, T the product of the plan's strides along that axis, and the quotient is at least
    ``MIN_POOLED_BOTTLENECK`` (2). So every stage along a pooled axis has exactly half its size in the
    stage-resolution network, each decoder level doubles back exactly, and the bottleneck keeps at least 2 voxels
    along the axis (instance norm needs more than one value). nnU-Net plans make the patch divisible by T only, so
    the rule leaves out axes too thin or too short for one more halving: ACDC-like patch [10, 64, 56] with strides
    [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 2]] pools axis 1 (64 = 2 * 8 * 4) but not axis 0 (10, T = 2) nor
    axis 2 (56, T = 8); patch 8^3 with T = 4 pools nothing (the bottleneck would be 1^3). Every axis of the
    authors' 128^3 BraTS plan is pooled.

    Returns the per-axis pooling factor (1 or 2). Raises ValueError for a missing patch size or one whose number
    of axes differs from the strides'.
    """
    if patch_size is None:
        raise ValueError("patch_size is required to choose the axes to max-pool after the stem and to size the "
                         "global token extractors: add the plan's patch size to arch_kwargs (e.g. "
                         "\"patch_size\": [128, 128, 128]).")
    dims = len(strides[0])
    if len(patch_size) != dims:
        raise ValueError(f"patch_size {list(patch_size)} has {len(patch_size)} axes but the strides have {dims}; "
                         f"give {dims} axes.")
    total = [math.prod(int(stride[axis]) for stride in strides) for axis in range(dims)]
    return tuple(STEM_POOL_FACTOR if int(p) % (STEM_POOL_FACTOR * t) == 0 and int(p) // (STEM_POOL_FACTOR * t) >=
                 MIN_POOLED_BOTTLENECK else 1 for p, t in zip(patch_size, total))


def planned_level_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]],
                        stem_pool: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial sizes of the pooled network's feature maps for an input of ``patch_size``: the stem's (the input
    size), then each encoder stage's output (the max-pooled size, then the strided stages, rounding up)."""
    pooled = [math.ceil(int(p) / int(k)) for p, k in zip(patch_size, stem_pool)]
    return [tuple(int(p) for p in patch_size), *stage_spatial_sizes(pooled, strides)]


def deep_supervision_scales(patch_size: Sequence[int], strides: Sequence[Sequence[int] | int],
                            stem_pool: Sequence[int] | int | None = None) -> list[list[float]]:
    """Scales of the pooled network's deep-supervision outputs relative to its input, in output order: full
    resolution, then each decoder level (encoder stages 0 .. n - 2) from the highest resolution down.

    Args: the plan's ``patch_size`` and ``strides`` (nnU-Net's ``pool_op_kernel_sizes``), and the network's
    ``stem_pool`` (None: :func:`default_stem_pool`). Each scale is the exact ratio of the level's planned size to
    the patch size, so nnU-Net's target downsampling (``round(size * scale)``) gives the outputs' sizes.
    """
    dims = len(patch_size)
    strides = [per_axis("strides", s, dims) for s in strides]
    pool = default_stem_pool(patch_size, strides) if stem_pool is None else per_axis("stem_pool", stem_pool, dims)
    sizes = planned_level_sizes(patch_size, strides, pool)[:-1]  # the bottleneck has no output
    return [[size / int(p) for size, p in zip(level, patch_size)] for level in sizes]


class ProjectedResidualBlock(BasicBlockD):
    """dynamic-network-architectures' ``BasicBlockD`` whose skip is a 1x1 convolution with bias and the block's
    stride (no pooling, no norm), whatever the channel counts: the first residual block of every stem, encoder stage
    and decoder level in the authors' 3D network (U-Mamba's residual block with its 1x1 skip conv). Same arguments
    as ``BasicBlockD``."""

    def __init__(self, conv_op: type[nn.Module], input_channels: int, output_channels: int, kernel_size,
                 stride, **block_kwargs):
        super().__init__(conv_op, input_channels, output_channels, kernel_size, stride, **block_kwargs)
        self.skip = conv_op(input_channels, output_channels, kernel_size=1, stride=self.stride, bias=True)


def residual_stage(topology: PlanTopology, input_channels: int, output_channels: int, kernel_size: Sequence[int],
                   stride: Sequence[int], n_blocks: int) -> nn.Sequential:
    """A ``ProjectedResidualBlock`` (with the stride), then ``n_blocks - 1`` ``BasicBlockD``, with the plan's conv,
    norm, dropout and nonlinearity."""
    t = topology
    common = dict(conv_bias=t.conv_bias, norm_op=t.norm_op, norm_op_kwargs=t.norm_op_kwargs, dropout_op=t.dropout_op,
                  dropout_op_kwargs=t.dropout_op_kwargs, nonlin=t.nonlin, nonlin_kwargs=t.nonlin_kwargs)
    return nn.Sequential(
        ProjectedResidualBlock(t.conv_op, input_channels, output_channels, kernel_size, stride, **common),
        *[BasicBlockD(t.conv_op, output_channels, output_channels, kernel_size, 1, **common)
          for _ in range(n_blocks - 1)])


class PooledResidualEncoder(nn.Module):
    """Stem at full resolution, max-pooling by ``stem_pool``, then the plan's encoder stages, each followed by its
    stage layer.

    Forward: x (B, C_in, *S) -> (stem output (B, C_0, *S), list of the stages' outputs, the bottleneck last).
    """

    def __init__(self, input_channels: int, topology: PlanTopology, stage_layers: Sequence[nn.Module],
                 stem_pool: Sequence[int]):
        super().__init__()
        t, f = topology, topology.features_per_stage
        self.stem = residual_stage(t, input_channels, f[0], t.kernel_sizes[0], [1] * t.spatial_dims,
                                   t.n_blocks_per_stage[0])
        # ceil_mode: an odd input size keeps its last row (the decoder upsamples to the stem's exact size)
        self.pool = (get_matching_pool_op(t.conv_op, pool_type="max")(stem_pool, stem_pool, ceil_mode=True)
                     if any(k != 1 for k in stem_pool) else nn.Identity())
        self.stages = nn.ModuleList(
            residual_stage(t, f[max(s - 1, 0)], f[s], t.kernel_sizes[s], t.strides[s], t.n_blocks_per_stage[s])
            for s in range(t.n_stages))
        self.stage_layers = nn.ModuleList(stage_layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stem = self.stem(x)
        x = self.pool(stem)
        skips = []
        for stage, layer in zip(self.stages, self.stage_layers):
            x = layer(stage(x))
            skips.append(x)
        return stem, skips


class PooledResidualDecoder(nn.Module):
    """Decoder of the pooled network: per level (lowest resolution first) a 1x1 conv to the skip's width, linear
    upsampling to the skip's size, the skip added, residual blocks; then the same to the stem's resolution, one
    ``BasicBlockD`` and the head.

    The authors upsample and then apply the 1x1 conv; both are linear and the interpolation weights sum to one, so
    the conv first gives the same result with the conv at the lower resolution.

    ``heads[0]`` is the full-resolution head; ``heads[1 + s]`` the head of the decoder level at encoder stage s
    (s = 0 .. n - 2). ``deep_supervision`` (set by nnU-Net's ``set_deep_supervision_enabled``) switches between the
    full-resolution logits and the list of every head's logits, full resolution first.

    ``recompute_full_resolution``: in training with gradients, the full-resolution tail (:meth:`full_resolution`)
    keeps only its inputs (the stem's output and the lowest decoder level's, which the network keeps anyway) and
    recomputes its activations when backward reaches it (``torch.utils.checkpoint``, non-reentrant); same outputs
    and gradients. Its block's maps are the largest of the network: at a 128^3 patch with 32 channels, 5 maps of
    256 MiB per sample.

    Forward: (stem output, encoder stage outputs) -> logits (B, num_classes, *S) or the list.
    """

    def __init__(self, topology: PlanTopology, num_classes: int, deep_supervision: bool,
                 recompute_full_resolution: bool = True):
        super().__init__()
        self.recompute_full_resolution = recompute_full_resolution
        t, f = topology, topology.features_per_stage
        levels = list(reversed(range(t.n_stages - 1)))  # encoder stage of each decoder level, lowest resolution first
        self.upsample_convs = nn.ModuleList(t.conv_op(f[s + 1], f[s], kernel_size=1) for s in levels)
        self.stages = nn.ModuleList(
            residual_stage(t, f[s], f[s], t.kernel_sizes[s], [1] * t.spatial_dims, t.n_conv_per_stage_decoder[i])
            for i, s in enumerate(levels))
        self.stem_upsample_conv = t.conv_op(f[0], f[0], kernel_size=1)
        self.stem_block = BasicBlockD(t.conv_op, f[0], f[0], t.kernel_sizes[0], 1, conv_bias=t.conv_bias,
                                      norm_op=t.norm_op, norm_op_kwargs=t.norm_op_kwargs, nonlin=t.nonlin,
                                      nonlin_kwargs=t.nonlin_kwargs)
        self.heads = nn.ModuleList(t.conv_op(width, num_classes, kernel_size=1) for width in [f[0], *f[:-1]])
        self.deep_supervision = deep_supervision
        self.mode = INTERPOLATION_MODES[t.spatial_dims]

    def upsample_to(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """x resized (linear interpolation) to the spatial size of ``like``."""
        if x.shape[2:] == like.shape[2:]:
            return x
        return F.interpolate(x, size=like.shape[2:], mode=self.mode, align_corners=False)

    def full_resolution(self, x: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        """The tail at the stem's resolution: the highest decoder level's output x (B, C_0, *S_0) and the stem's
        output (B, C_0, *S) -> logits (B, num_classes, *S). Starts with ``stem_upsample_conv``, ends with
        ``heads[0]``."""
        return self.heads[0](self.stem_block(self.upsample_to(self.stem_upsample_conv(x), stem) + stem))

    def forward(self, stem: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        levels = []
        for conv, stage, skip in zip(self.upsample_convs, self.stages, reversed(skips[:-1])):
            x = stage(self.upsample_to(conv(x), skip) + skip)
            levels.append(x)
        if self.recompute_full_resolution and self.training and torch.is_grad_enabled():
            logits = checkpoint.checkpoint(self.full_resolution, x, stem, use_reentrant=False,
                                           preserve_rng_state=False)
        else:
            logits = self.full_resolution(x, stem)
        if not self.deep_supervision:
            return logits
        return [logits, *(head(level) for head, level in zip(self.heads[1:], reversed(levels)))]


class LoGVMambaPooledUNet(nn.Module):
    """LoG-VMamba U-Net with the authors' efficient 3D topology: stem, 2x max-pooling, encoder stages with
    LoG-family blocks at the pooled resolution, an additive decoder back to the stem (see the module docstring).

    Args:
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        patch_size: the planned patch size; fixes the pooled axes and the GTX grids.
        stem_pool: per-axis max-pooling factor after the stem (an int for all axes); None applies
            :func:`default_stem_pool`. Sizes a factor does not divide still work (the pooling and the strided
            convs round up, the decoder upsamples to the skips' sizes).
        umamba_depth_rule: apply U-Mamba's depth rule (``umamba_block_counts``) to the plan's block counts, as the
            authors do; False keeps the plan's counts.
        max_global_grid: bound on the GTX grid positions in the per-stage rule (None: 512 = 8^3 in 3D, the
            authors' grids; 4096 = 64^2 in 2D).
        stage_kinds, gtx_strides, gtx_squeezes, ltx_squeeze, expand, d_state, directions, placement,
        drop_path_rate, fp32_blocks, scan_backend, force_fp32, recompute_blocks: as ``LoGVMambaUNet`` (the same
            blocks, built by ``build_stage_blocks``; the 3D defaults are the authors' LayerNorm eps 1e-6, DropPath
            0.1, fp32 blocks).
        recompute_full_resolution: the decoder's full-resolution tail recomputes its activations in backward
            (``PooledResidualDecoder``).
        **arch_kwargs: the plan's ``architecture.arch_kwargs`` (see ``PlanTopology.from_arch_kwargs``).

    Every Conv2d/Conv3d, those in the blocks included, gets ``InitWeights_He(1e-2)``, as the authors' whole model.

    Forward: x (B, input_channels, *S) -> logits (B, num_classes, *S), or with ``decoder.deep_supervision`` a list:
    full resolution first, then the decoder levels (:meth:`deep_supervision_scales`).
    """

    check_input = ResidualUNetWithStageLayers.check_input  # the same input check as the stage-resolution network

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True, *,
                 patch_size: Sequence[int] | None = None, stem_pool: Sequence[int] | int | None = None,
                 umamba_depth_rule: bool = True, max_global_grid: int | None = None,
                 stage_kinds: Sequence[str] | None = None, gtx_strides: Sequence[int] | None = None,
                 gtx_squeezes: Sequence[int] | None = None, ltx_squeeze: int | None = None,
                 expand: float | None = None, d_state: int = 16, directions: int = 1, placement: str = "interleaved",
                 drop_path_rate: float = 0.1, fp32_blocks: bool = True, scan_backend: str = "auto",
                 force_fp32: bool = False, recompute_blocks: bool = True, recompute_full_resolution: bool = True,
                 **arch_kwargs):
        super().__init__()
        topology = PlanTopology.from_arch_kwargs(**arch_kwargs)
        if umamba_depth_rule:
            topology = topology.with_block_counts(
                *umamba_block_counts(topology.n_blocks_per_stage, topology.n_conv_per_stage_decoder))
        dims = topology.spatial_dims
        self.input_channels, self.spatial_dims, self.topology = input_channels, dims, topology
        rule = default_stem_pool(patch_size, topology.strides)  # also checks patch_size
        self.stem_pool = rule if stem_pool is None else per_axis("stem_pool", stem_pool, dims)
        self.patch_size = tuple(int(p) for p in patch_size)
        pooled = planned_level_sizes(patch_size, [[1] * dims], self.stem_pool)[1]
        if max_global_grid is None:
            max_global_grid = POOLED_MAX_GLOBAL_GRID_3D if dims == 3 else DEFAULT_MAX_GLOBAL_GRID
        self.stage_configs: list[StageMixerConfig]
        self.stage_configs, layers = build_stage_blocks(
            topology, pooled, stage_kinds=stage_kinds, gtx_strides=gtx_strides, gtx_squeezes=gtx_squeezes,
            max_global_grid=max_global_grid, ltx_squeeze=ltx_squeeze, expand=expand, d_state=d_state,
            directions=directions, placement=placement, drop_path_rate=drop_path_rate, fp32_blocks=fp32_blocks,
            scan_backend=scan_backend, recompute_blocks=recompute_blocks)
        self.encoder = PooledResidualEncoder(input_channels, topology, layers, self.stem_pool)
        self.decoder = PooledResidualDecoder(topology, num_classes, deep_supervision, recompute_full_resolution)
        self.force_fp32 = force_fp32
        self.apply(InitWeights_He(1e-2))

    def deep_supervision_scales(self) -> list[list[float]]:
        """Scales of the deep-supervision outputs relative to the planned patch, full resolution first."""
        return deep_supervision_scales(self.patch_size, self.topology.strides, self.stem_pool)

    def deep_supervision_head_parameters(self) -> int:
        """Number of parameters of the heads that only deep supervision uses (every head but the full-resolution
        one)."""
        return sum(p.numel() for head in self.decoder.heads[1:] for p in head.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        if self.force_fp32:
            with autocast_disabled(x.device):
                return self.decoder(*self.encoder(x.float()))
        return self.decoder(*self.encoder(x))


def brats_reference_pooled_arch_kwargs() -> dict:
    """The authors' 3D BraTS setting (paper §4.1-4.3, docs/architecture.md) as plan kwargs for
    ``LoGVMambaPooledUNet``: 5 stages 32-320, 128^3 patch, two residual blocks per encoder stage and per decoder
    level before U-Mamba's depth rule (then [2, 2, 2, 1, 1] and [2, 2, 2, 1]); 4 inputs, 3 regions, E = 1."""
    kwargs = brats_reference_arch_kwargs()
    kwargs.pop("n_blocks_per_stage")
    kwargs.update(n_conv_per_stage=[2] * 5, n_conv_per_stage_decoder=[2] * 4)
    return kwargs

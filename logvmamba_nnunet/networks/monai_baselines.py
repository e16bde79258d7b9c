"""MONAI's SwinUNETR and UNETR as networks for nnU-Net plans, for the transformer baselines.

SwinUNETR needs every spatial size to be a multiple of 32 and UNETR is built for one fixed size that is a multiple
of 16. Instead of changing the plan's patch size (as U-Mamba did), each network is wrapped in
``PaddedFloat32Network``, which zero-pads each input (centred) to a size the model accepts and crops the logits
back; so the baselines use exactly the same plans and patches as the other networks. Settings are the ones U-Mamba
used: SwinUNETR with feature size 48; UNETR as ViT-B (hidden 768, 12 heads, MLP 3072) with feature size 16.

MONAI is imported only when a network is built, so importing this module works without it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from logvmamba_nnunet.modules.precision import autocast_disabled


def monai_network_class(name: str) -> type[nn.Module]:
    """``monai.networks.nets.<name>``, imported now; RuntimeError with the fix when MONAI is missing."""
    try:
        nets = importlib.import_module("monai.networks.nets")
    except ImportError as error:
        raise RuntimeError(f"the {name} baseline needs MONAI, which cannot be imported ({error}); install it with "
                           "'pip install monai'.") from error
    return getattr(nets, name)


def round_up(sizes: Sequence[int], multiple: int) -> list[int]:
    """Each size rounded up to the next multiple of ``multiple`` (a size that is one already is kept)."""
    return [multiple * math.ceil(size / multiple) for size in sizes]


class PaddedFloat32Network(nn.Module):
    """Runs ``network`` in float32 (autocast disabled) on a zero-padded input and crops its output back.

    Args:
        network: maps (B, C_in, *P) -> (B, C_out, *P) for the padded sizes P.
        size_multiple: pad every spatial axis up to the next multiple of this. When that gives a single
            multiple-sized cell (e.g. 32^3 for SwinUNETR, whose bottleneck would then be one voxel, which instance
            normalisation rejects in training), the last axis is padded to twice the multiple.
        fixed_size: instead, pad to exactly this spatial size (models built for one input size); larger inputs
            raise ValueError.

    Forward: x (B, C_in, *S) -> logits (B, C_out, *S) in float32. Padding is centred (the extra voxel, if any,
    goes to the end).
    """

    def __init__(self, network: nn.Module, size_multiple: int = 1, fixed_size: Sequence[int] | None = None):
        super().__init__()
        if size_multiple < 1:
            raise ValueError(f"size_multiple={size_multiple} must be >= 1.")
        self.network = network
        self.size_multiple = size_multiple
        self.fixed_size = None if fixed_size is None else [int(s) for s in fixed_size]

    def padded_size(self, spatial: Sequence[int]) -> list[int]:
        """The spatial size the wrapped network receives for an input of spatial size ``spatial``."""
        if self.fixed_size is None:
            padded = round_up(spatial, self.size_multiple)
            if self.size_multiple > 1 and all(size == self.size_multiple for size in padded):
                padded[-1] = 2 * self.size_multiple
            return padded
        if len(spatial) != len(self.fixed_size) or any(s > f for s, f in zip(spatial, self.fixed_size)):
            raise ValueError(f"input spatial size {list(spatial)} does not fit the size {self.fixed_size} this "
                             "network was built for; use inputs of at most the planned patch size (nnU-Net's "
                             "sliding window does).")
        return list(self.fixed_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = list(x.shape[2:])
        target = self.padded_size(spatial)
        before = [(t - s) // 2 for s, t in zip(spatial, target)]
        pads = [amount for s, t, b in reversed(list(zip(spatial, target, before))) for amount in (b, t - s - b)]
        with autocast_disabled(x.device):
            logits = self.network(F.pad(x.float(), pads))
        window = tuple(slice(b, b + s) for b, s in zip(before, spatial))
        return logits[(Ellipsis, *window)]


def swin_unetr(input_channels: int, num_classes: int, patch_size: Sequence[int]) -> PaddedFloat32Network:
    """MONAI's SwinUNETR (feature size 48) for a plan with this ``patch_size`` (2 or 3 axes), inputs padded to
    multiples of 32."""
    network = monai_network_class("SwinUNETR")(
        in_channels=input_channels, out_channels=num_classes, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
        feature_size=48, norm_name="instance", drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0,
        normalize=True, use_checkpoint=False, spatial_dims=len(patch_size), downsample="merging", use_v2=False)
    return PaddedFloat32Network(network, size_multiple=32)


def unetr(input_channels: int, num_classes: int, patch_size: Sequence[int]) -> PaddedFloat32Network:
    """MONAI's UNETR (ViT-B, 16-voxel patches) built for ``patch_size`` rounded up to multiples of 16."""
    image_size = round_up(patch_size, 16)
    network = monai_network_class("UNETR")(
        in_channels=input_channels, out_channels=num_classes, img_size=image_size, feature_size=16,
        hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="conv", norm_name="instance", res_block=True,
        dropout_rate=0.0, spatial_dims=len(patch_size), qkv_bias=False)
    return PaddedFloat32Network(network, fixed_size=image_size)

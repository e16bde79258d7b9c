"""Transformer baselines from MONAI as nnU-Net trainers: ``nnUNetTrainerSwinUNETR`` and ``nnUNetTrainerUNETR``.

The recipe is the one U-Mamba used for them: no deep supervision, the network in float32 (no AMP, no gradient
scaler), AdamW (eps 1e-5, weight decay 0.01), nnU-Net's gradient clipping at 12; SwinUNETR (feature size 48) with
learning rate 8e-4 and cosine annealing to 1e-6 over the epochs; UNETR (ViT-B: hidden 768, 12 heads, MLP 3072,
feature size 16) with learning rate 1e-4 and a linear decay (nnU-Net's poly schedule with exponent 1).

Patch sizes: SwinUNETR needs every spatial size to be a multiple of 32 and UNETR is built for one fixed size that is
a multiple of 16. Instead of changing the plan's patch size (as U-Mamba did), the network is wrapped in
``PaddedFloat32Network``, which zero-pads each input (centred) to a size the model accepts and crops the logits
back; so these trainers use exactly the same plans and patches as the others.

MONAI is imported only when a network is built, so importing this module (and discovering the trainers) works
without it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.nnunet_trainers.base import PluginTrainer
from logvmamba_nnunet.nnunet_trainers.swin_umamba import CosineLRScheduler


def _monai_network_class(name: str) -> type[nn.Module]:
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


class MonaiBaselineTrainer(PluginTrainer):
    """Shared recipe of the MONAI baselines (not a trainer to use itself; see the module docstring)."""

    learning_rate: float = 1e-4
    adamw_weight_decay: float = 0.01

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.grad_scaler = None
        self.initial_lr = self.learning_rate
        self.weight_decay = self.adamw_weight_decay

    @classmethod
    def build_monai_network(cls, num_input_channels: int, num_output_channels: int,
                            patch_size: Sequence[int]) -> nn.Module:
        """The padded MONAI network for a plan with this ``patch_size`` (2 or 3 axes)."""
        raise NotImplementedError(f"{cls.__name__} does not define a network; use nnUNetTrainerSwinUNETR or "
                                  "nnUNetTrainerUNETR.")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = False) -> nn.Module:
        patch_size = list(configuration_manager.patch_size)
        if len(patch_size) not in (2, 3):
            raise ValueError(f"configuration has a {len(patch_size)}D patch size {patch_size}; the MONAI baselines "
                             "support only 2D and 3D configurations.")
        return cls.build_monai_network(num_input_channels, num_output_channels, patch_size)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        """The learning-rate schedule (stepped once per epoch by nnU-Net)."""
        return PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=1.0)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      eps=1e-5)
        return optimizer, self.make_scheduler(optimizer)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """The MONAI networks have a single output: nothing to switch."""


class nnUNetTrainerSwinUNETR(MonaiBaselineTrainer):
    """MONAI's SwinUNETR (feature size 48), AdamW 8e-4 with cosine annealing, inputs padded to multiples of 32."""

    learning_rate = 8e-4

    @classmethod
    def build_monai_network(cls, num_input_channels: int, num_output_channels: int,
                            patch_size: Sequence[int]) -> nn.Module:
        network = _monai_network_class("SwinUNETR")(
            in_channels=num_input_channels, out_channels=num_output_channels, depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24), feature_size=48, norm_name="instance", drop_rate=0.0, attn_drop_rate=0.0,
            dropout_path_rate=0.0, normalize=True, use_checkpoint=False, spatial_dims=len(patch_size),
            downsample="merging", use_v2=False)
        return PaddedFloat32Network(network, size_multiple=32)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        return CosineLRScheduler(optimizer, self.initial_lr, 1e-6, self.num_epochs)


class nnUNetTrainerUNETR(MonaiBaselineTrainer):
    """MONAI's UNETR (ViT-B, 16-voxel patches), AdamW 1e-4 with linear decay, built for the plan's patch size
    rounded up to multiples of 16."""

    learning_rate = 1e-4

    @classmethod
    def build_monai_network(cls, num_input_channels: int, num_output_channels: int,
                            patch_size: Sequence[int]) -> nn.Module:
        image_size = round_up(patch_size, 16)
        network = _monai_network_class("UNETR")(
            in_channels=num_input_channels, out_channels=num_output_channels, img_size=image_size, feature_size=16,
            hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="conv", norm_name="instance", res_block=True,
            dropout_rate=0.0, spatial_dims=len(patch_size), qkv_bias=False)
        return PaddedFloat32Network(network, fixed_size=image_size)

"""Transformer baselines from MONAI as nnU-Net trainers: ``nnUNetTrainerSwinUNETR`` and ``nnUNetTrainerUNETR``.

The recipe is the one U-Mamba used for them: no deep supervision, the network in float32 (no AMP, no gradient
scaler), AdamW (eps 1e-5, weight decay 0.01), nnU-Net's gradient clipping at 12; SwinUNETR with learning rate 8e-4
and cosine annealing to 1e-6 over the epochs; UNETR with learning rate 1e-4 and a linear decay (nnU-Net's poly
schedule with exponent 1). The networks, padded so that they take the plans' patches unchanged, are in
``logvmamba_nnunet.networks.monai_baselines``; MONAI is imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from logvmamba_nnunet.networks.monai_baselines import swin_unetr, unetr
from logvmamba_nnunet.nnunet.lr_scheduler import CosineDecayLRScheduler
from logvmamba_nnunet_trainers.base import PluginTrainer


class MonaiBaselineTrainer(PluginTrainer):
    """Shared recipe of the MONAI baselines (not a trainer to use itself; see the module docstring)."""

    learning_rate = 1e-4
    optimizer_weight_decay = 0.01

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.grad_scaler = None

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
        return swin_unetr(num_input_channels, num_output_channels, patch_size)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        return CosineDecayLRScheduler(optimizer, self.initial_lr, 1e-6, self.num_epochs)


class nnUNetTrainerUNETR(MonaiBaselineTrainer):
    """MONAI's UNETR (ViT-B, 16-voxel patches), AdamW 1e-4 with linear decay, built for the plan's patch size
    rounded up to multiples of 16."""

    learning_rate = 1e-4

    @classmethod
    def build_monai_network(cls, num_input_channels: int, num_output_channels: int,
                            patch_size: Sequence[int]) -> nn.Module:
        return unetr(num_input_channels, num_output_channels, patch_size)

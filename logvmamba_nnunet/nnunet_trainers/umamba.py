"""nnU-Net trainers for the U-Mamba baselines: ``nnUNetTrainerUMambaEnc`` and ``nnUNetTrainerUMambaBot``.

The recipe is nnU-Net's default, as U-Mamba trains them: Dice + CE (Dice + BCE for regions) with deep
supervision, SGD (learning rate 1e-2, Nesterov momentum 0.99, weight decay 3e-5), the poly schedule, 1000 epochs
of 250 iterations, AMP on CUDA (the Mamba layers run in float32 inside). Only the network differs, built from the
same plans as every other trainer (2D and 3D configurations). ``torch.compile`` is off unless ``nnUNet_compile``
asks for it. The ``_Tiny`` variants (2 epochs of 2 iterations) are for tests.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from logvmamba_nnunet.networks.umamba import UMambaBotUNet, UMambaEncUNet
from logvmamba_nnunet.nnunet.plans import network_kwargs_from_configuration


class nnUNetTrainerUMambaEnc(nnUNetTrainer):
    """U-Mamba-Enc (a Mamba layer after every encoder stage) with nnU-Net's default recipe."""

    network_class: type[nn.Module] = UMambaEncUNet
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        kwargs = network_kwargs_from_configuration(configuration_manager)
        del kwargs["patch_size"]  # the U-Mamba layers work at any size
        return cls.network_class(num_input_channels, num_output_channels, enable_deep_supervision, **kwargs)

    def _do_i_compile(self) -> bool:
        """torch.compile only when ``nnUNet_compile`` explicitly asks for it (and nnU-Net allows it)."""
        if os.environ.get("nnUNet_compile", "").lower() not in ("true", "1", "t"):
            return False
        return super()._do_i_compile()


class nnUNetTrainerUMambaBot(nnUNetTrainerUMambaEnc):
    """U-Mamba-Bot (one Mamba layer at the bottleneck) with nnU-Net's default recipe."""

    network_class = UMambaBotUNet


class nnUNetTrainerUMambaEnc_Tiny(nnUNetTrainerUMambaEnc):
    """For tests: 2 epochs of 2 iterations, 1 validation iteration."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1


class nnUNetTrainerUMambaBot_Tiny(nnUNetTrainerUMambaBot):
    """For tests: 2 epochs of 2 iterations, 1 validation iteration."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1

"""nnU-Net trainers for the U-Mamba baselines: ``nnUNetTrainerUMambaEnc`` and ``nnUNetTrainerUMambaBot``.

The recipe is nnU-Net's default, as U-Mamba trains them: Dice + CE (Dice + BCE for regions) with deep
supervision, SGD (learning rate 1e-2, Nesterov momentum 0.99, weight decay 3e-5), the poly schedule, 1000 epochs
of 250 iterations, AMP on CUDA (the Mamba layers run in float32 inside). Only the network differs, built from the
same plans as every other trainer (2D and 3D configurations). ``torch.compile`` is off unless ``nnUNet_compile``
asks for it.
"""

from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from logvmamba_nnunet.networks.umamba import UMambaBotUNet, UMambaEncUNet
from logvmamba_nnunet.nnunet.plans import network_kwargs_from_configuration
from logvmamba_nnunet_trainers.base import PluginTrainer


class nnUNetTrainerUMambaEnc(PluginTrainer):
    """U-Mamba-Enc (a Mamba layer after every encoder stage) with nnU-Net's default recipe."""

    network_class: type[nn.Module] = UMambaEncUNet

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        kwargs = network_kwargs_from_configuration(configuration_manager)
        del kwargs["patch_size"]  # the U-Mamba layers work at any size
        return cls.network_class(num_input_channels, num_output_channels, enable_deep_supervision, **kwargs)


class nnUNetTrainerUMambaBot(nnUNetTrainerUMambaEnc):
    """U-Mamba-Bot (one Mamba layer at the bottleneck) with nnU-Net's default recipe."""

    network_class = UMambaBotUNet

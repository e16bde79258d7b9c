"""nnU-Net trainers for the LoG-VMamba family (SPEC §6, §8).

``nnUNetTrainerLoGVMamba`` follows the paper's recipe: Dice + CE (nnU-Net's loss, Dice + BCE for regions), Adam
with learning rate 1e-4 and weight decay 1e-4 (A_log and D excluded), nnU-Net's poly schedule, horizontal scan only
(K = 1), interleaved global tokens, nnU-Net's sliding-window inference. The ablation trainers put the same mixer
kind after every encoder stage; the placement and direction variants change one setting each.

Network per configuration: 3D configurations get the LoG-VMamba U-Net (U-Mamba-Enc with LoG-family encoder
blocks). 2D configurations get the paper's 2D model, Swin-UMamba-dagger with a LoG-VMamba decoder
(``LoGVMambaSwinUMamba2D``); there ``stage_kind`` picks the decoder's mixer kind (``vss``: the Swin-UMamba-dagger
baseline) and ``directions`` / ``placement`` apply to the decoder blocks. ``nnUNetTrainerLoGVMambaUNet`` keeps the
U-Net also for 2D configurations.

Class attributes describe the network, so every variant is a small subclass and
``build_network_architecture`` (a classmethod, which nnU-Net calls like its static method) sees them both in
training and when ``nnUNetv2_predict`` rebuilds the network.
"""

from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay
from logvmamba_nnunet.networks.log_vmamba_unet import LoGVMambaUNet
from logvmamba_nnunet.networks.vmamba_encoder_2d import VMAMBA_TINY_WIDTHS
from logvmamba_nnunet.networks.vmamba_unet_2d import LoGVMambaSwinUMamba2D, deep_supervision_scales_2d
from logvmamba_nnunet.nnunet.plans import network_kwargs_from_configuration
from logvmamba_nnunet.nnunet_trainers.base import PluginTrainer


class nnUNetTrainerLoGVMamba(PluginTrainer):
    """LoG-VMamba U-Net (U-Mamba-Enc with LoG-family encoder blocks), paper recipe."""

    stage_kind: str | None = None  # None: the per-stage rule of networks.stage_rules; else this kind everywhere
    placement: str = "interleaved"
    directions: int = 1
    force_fp32: bool = False
    use_vmamba_2d: bool = True  # 2D configurations: LoGVMambaSwinUMamba2D (True) or the U-Net (False)
    learning_rate: float = 1e-4
    adam_weight_decay: float = 1e-4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.learning_rate
        self.weight_decay = self.adam_weight_decay
        if self.force_fp32:
            self.grad_scaler = None

    @classmethod
    def network_overrides(cls, n_stages: int) -> dict:
        """Keyword arguments this trainer adds to the plan's architecture kwargs."""
        overrides = {"placement": cls.placement, "directions": cls.directions, "force_fp32": cls.force_fp32}
        if cls.stage_kind is not None:
            overrides["stage_kinds"] = [cls.stage_kind] * n_stages
        return overrides

    @classmethod
    def network_2d_overrides(cls) -> dict:
        """Keyword arguments of ``LoGVMambaSwinUMamba2D`` for 2D configurations (besides the patch size)."""
        return {"decoder_kind": cls.stage_kind or "local_global", "placement": cls.placement,
                "directions": cls.directions, "force_fp32": cls.force_fp32}

    @classmethod
    def builds_vmamba_2d(cls, configuration_manager: ConfigurationManager) -> bool:
        """Whether this trainer builds ``LoGVMambaSwinUMamba2D`` for the configuration (2D, ``use_vmamba_2d``)."""
        return cls.use_vmamba_2d and len(configuration_manager.patch_size) == 2

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        if cls.builds_vmamba_2d(configuration_manager):
            return LoGVMambaSwinUMamba2D(num_input_channels, num_output_channels, enable_deep_supervision,
                                         patch_size=configuration_manager.patch_size, **cls.network_2d_overrides())
        kwargs = network_kwargs_from_configuration(configuration_manager)
        kwargs.update(cls.network_overrides(kwargs["n_stages"]))
        return LoGVMambaUNet(num_input_channels, num_output_channels, enable_deep_supervision, **kwargs)

    def _get_deep_supervision_scales(self):
        """The 2D VMamba network's outputs are at full, 1/4, 1/8, 1/16 size, not at the plan's pooling scales."""
        if not (self.enable_deep_supervision and self.builds_vmamba_2d(self.configuration_manager)):
            return super()._get_deep_supervision_scales()
        widths = self.network_2d_overrides().get("widths", VMAMBA_TINY_WIDTHS)
        return deep_supervision_scales_2d(len(widths))

    def configure_optimizers(self):
        groups = parameter_groups_for_weight_decay(self.network, self.weight_decay)
        optimizer = torch.optim.Adam(groups, lr=self.initial_lr)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerLoGVMambaUNet(nnUNetTrainerLoGVMamba):
    """The LoG-VMamba U-Net (U-Mamba-Enc topology) for every configuration, 2D included."""

    use_vmamba_2d = False


class nnUNetTrainerLVMamba(nnUNetTrainerLoGVMamba):
    """Ablation: L-VMamba (local token extractor) after every encoder stage (2D: in every decoder block)."""

    stage_kind = "local"


class nnUNetTrainerGVMamba(nnUNetTrainerLoGVMamba):
    """Ablation: G-VMamba (vanilla extractor + global tokens) after every encoder stage (2D: decoder)."""

    stage_kind = "global"


class nnUNetTrainerVSSMamba(nnUNetTrainerLoGVMamba):
    """Ablation baseline: the vanilla VSS mixer after every encoder stage (2D: a VSS decoder, i.e.
    Swin-UMamba-dagger with this trainer's K = 1)."""

    stage_kind = "vss"


class nnUNetTrainerLoGVMamba_Head(nnUNetTrainerLoGVMamba):
    """Global tokens at the head of the sequence."""

    placement = "head"


class nnUNetTrainerLoGVMamba_Middle(nnUNetTrainerLoGVMamba):
    """Global tokens in the middle of the sequence."""

    placement = "middle"


class nnUNetTrainerLoGVMamba_Split(nnUNetTrainerLoGVMamba):
    """Half of the global tokens first, the other half in the middle (authors' ``split``)."""

    placement = "split"


class nnUNetTrainerLoGVMamba_K2(nnUNetTrainerLoGVMamba):
    """Two scan directions (raster order and its reverse)."""

    directions = 2


class nnUNetTrainerLoGVMamba_K4(nnUNetTrainerLoGVMamba):
    """Four scan directions (raster, transposed, and both reversed)."""

    directions = 4


class nnUNetTrainerLoGVMamba_NoAMP(nnUNetTrainerLoGVMamba):
    """Whole network in fp32 (autocast disabled inside the network, no gradient scaler)."""

    force_fp32 = True


class nnUNetTrainerLoGVMamba_Tiny(nnUNetTrainerLoGVMamba):
    """For tests: 2 epochs of 4 iterations, 2 validation iterations; in 2D a small VMamba encoder (widths 16-128,
    one block per stage and per decoder level) so CPU runs stay short. 3D uses the plan's network unchanged."""

    epochs = 2
    iterations_per_epoch = 4
    val_iterations_per_epoch = 2

    @classmethod
    def network_2d_overrides(cls) -> dict:
        return {**super().network_2d_overrides(), "widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1),
                "decoder_blocks_per_level": 1}


class nnUNetTrainerLoGVMamba_Demo(nnUNetTrainerLoGVMamba):
    """For the CPU demo: 6 epochs of 12 iterations. The 10x larger learning rate (1e-3) is a deviation from the
    paper's 1e-4, needed to learn anything in 72 steps; use ``nnUNetTrainerLoGVMamba`` for real training."""

    learning_rate = 1e-3
    epochs = 6
    iterations_per_epoch = 12
    val_iterations_per_epoch = 2

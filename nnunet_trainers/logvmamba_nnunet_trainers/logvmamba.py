"""``nnUNetTrainerLoGVMamba`` (the paper's recipe, paper §4.3) and its one-setting variants.

Recipe: Dice + CE (nnU-Net's loss, Dice + BCE for regions), Adam with learning rate 1e-4 and weight decay 1e-4
(A_log and D excluded), nnU-Net's poly schedule, horizontal scan only (K = 1), interleaved global tokens, nnU-Net's
sliding-window inference. The networks are described in ``LoGFamilyTrainer`` and docs/architecture.md. The ablation
trainers put the same mixer kind everywhere; the placement and direction variants change one setting each.
"""

from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay
from logvmamba_nnunet.nnunet.ddp import freeze_deep_supervision_heads
from logvmamba_nnunet_trainers.base import LoGFamilyTrainer


class nnUNetTrainerLoGVMamba(LoGFamilyTrainer):
    """LoG-VMamba networks (3D: the authors' released topology, ``LoGVMambaPooledUNet``; 2D: Swin-UMamba-dagger
    with a LoG-VMamba decoder) with the paper's recipe."""

    learning_rate = 1e-4
    optimizer_weight_decay = 1e-4

    def configure_optimizers(self):
        groups = parameter_groups_for_weight_decay(self.network, self.weight_decay)
        optimizer = torch.optim.Adam(groups, lr=self.initial_lr)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerLoGVMambaUNet(nnUNetTrainerLoGVMamba):
    """The 3D configurations' LoG-VMamba U-Net (``topology``, the pooled one by default) for every configuration,
    2D included."""

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


class nnUNetTrainerLoGVMamba_NoMamba(nnUNetTrainerLoGVMamba):
    """Backbone-only baseline: ``nnUNetTrainerLoGVMamba``'s network and recipe with every LoG-family block removed
    (3D: no block after any encoder stage; 2D: a decoder without blocks, the VMamba encoder unchanged), so a
    comparison shows what the blocks add (as U-Mamba's "No-Mamba Base" in nnU-Net Revisited, Isensee et al. 2024)."""

    stage_kind = "none"


class nnUNetTrainerLoGVMamba_nnUNetRecipe(nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba``'s network with nnU-Net's own recipe: SGD with learning rate 1e-2, Nesterov
    momentum 0.99, weight decay 3e-5 on every parameter, poly schedule (``nnUNetTrainer.configure_optimizers``), so a
    comparison with nnU-Net's default trainer separates the network from the recipe."""

    learning_rate = 1e-2
    optimizer_weight_decay = 3e-5
    optimizer_states = 1

    def configure_optimizers(self):
        return super(nnUNetTrainerLoGVMamba, self).configure_optimizers()  # nnUNetTrainer's, skipping the paper's


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


class nnUNetTrainerLoGVMamba_NoDeepSupervision(nnUNetTrainerLoGVMamba):
    """Deep supervision off (loss on the full-resolution output only), also under multi-GPU DDP.

    The lower-resolution heads still exist (checkpoints do not depend on deep supervision) but get no gradient;
    DDP with ``find_unused_parameters`` off would stop at the second iteration, so they are frozen before nnU-Net
    wraps the network (``logvmamba_nnunet.nnunet.ddp``).
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        if not enable_deep_supervision:
            freeze_deep_supervision_heads(network)
        return network


class nnUNetTrainerLoGVMamba_StageTopology(nnUNetTrainerLoGVMamba):
    """The paper's recipe with U-Mamba-Enc's 3D topology: every LoG-family block at its encoder stage's resolution
    (``LoGVMambaUNet``), 2-3x the default network's cost (docs/architecture.md)."""

    topology = "stage"


class nnUNetTrainerLoGVMamba_PooledTopology(nnUNetTrainerLoGVMamba):
    """The paper's recipe with the authors' released 3D topology named explicitly (``LoGVMambaPooledUNet``; today the
    same network as ``nnUNetTrainerLoGVMamba``): stem, 2x max-pooling, every encoder stage and LoG-family block at
    half resolution, decoder with added skips, U-Mamba's depth rule; deep supervision at the full resolution and
    every decoder level. 2D configurations get the 2D model as with ``nnUNetTrainerLoGVMamba``."""

    topology = "pooled"

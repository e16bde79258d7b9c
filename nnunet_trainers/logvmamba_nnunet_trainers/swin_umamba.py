"""Trainers with Swin-UMamba-dagger's recipe for the paper's 2D model (paper §3.4, §4.3), with VMamba-Tiny ImageNet
weights: the LoG-VMamba decoder and, as a baseline, Swin-UMamba-dagger itself.

Recipe (Swin-UMamba's trainer for Swin-UMamba-dagger): AdamW (learning rate 1e-4, weight decay 0.05, betas
(0.9, 0.999), eps 1e-5; A_log and D without weight decay as everywhere in this package), a cosine schedule from
1e-4 to 1e-6 over the training epochs, and the encoder's pretrained tensors frozen for the first 10 epochs when
ImageNet weights are used.

ImageNet weights: the absolute path of VMamba-Tiny's ``vssmtiny_dp01_ckpt_epoch_292.pth`` in the environment
variable ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS`` (see ``logvmamba_nnunet.networks.vmamba_pretrained``). They are loaded in
``on_train_start`` of a fresh training (epoch 0) and the summary goes to the training log; never in
``build_network_architecture``, so ``nnUNetv2_predict`` (which rebuilds the network and loads the trained
checkpoint) neither needs nor reloads them. A continued training reads the file only to know which tensors to keep
frozen. A missing, relative or unreadable path, or a file that does not fit the encoder, stops the run in
``on_train_start``, before the first epoch.

Freezing and DDP: frozen tensors get ``requires_grad=False`` (no gradient, no AdamW step, no weight decay, no
optimizer state). DDP registers the parameters that require a gradient when it is constructed, so the trainer wraps
the network in a new DDP whenever the set of trainable tensors changes (when freezing at the start and when
unfreezing); ``find_unused_parameters`` stays off.
"""

from __future__ import annotations

from pathlib import Path

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay
from logvmamba_nnunet.networks.vmamba_pretrained import (
    WEIGHTS_ENV_VAR,
    EncoderWeights,
    match_vmamba_checkpoint,
    read_vmamba_checkpoint,
    weights_path_from_environment,
)
from logvmamba_nnunet.nnunet.ddp import set_trainable, unwrap_network
from logvmamba_nnunet.nnunet.lr_scheduler import CosineDecayLRScheduler
from logvmamba_nnunet_trainers.base import LoGFamilyTrainer


class SwinUMambaRecipeTrainer(LoGFamilyTrainer):
    """Swin-UMamba-dagger's recipe for the 2D VMamba-Tiny model (not a trainer to use itself): AdamW, cosine
    schedule, optional ImageNet weights with the encoder frozen for the first ``freeze_encoder_epochs`` epochs.
    2d configurations only."""

    learning_rate = 1e-4
    optimizer_weight_decay = 0.05
    final_learning_rate = 1e-6
    adamw_betas = (0.9, 0.999)
    adamw_eps = 1e-5
    freeze_encoder_epochs = 10
    require_pretrained_weights = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pretrained_parameter_names: list[str] = []
        self.encoder_frozen = False

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        if not cls.builds_vmamba_2d(configuration_manager):
            raise ValueError(f"{cls.__name__} trains the 2D VMamba-Tiny model and needs a 2d configuration (patch "
                             f"size {list(configuration_manager.patch_size)} given); use nnUNetTrainerLoGVMamba for "
                             "3D configurations.")
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)

    def configure_optimizers(self):
        groups = parameter_groups_for_weight_decay(self.network, self.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, betas=self.adamw_betas, eps=self.adamw_eps)
        return optimizer, CosineDecayLRScheduler(optimizer, self.initial_lr, self.final_learning_rate, self.num_epochs)

    def pretrained_weights_path(self) -> Path | None:
        """The checked file named by ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS``; None when unset and not required. Raises
        ValueError / FileNotFoundError for a missing requirement, a relative path or no such file."""
        return weights_path_from_environment(required=self.require_pretrained_weights)

    def load_pretrained_encoder(self, path: Path | None) -> EncoderWeights | None:
        """Match the VMamba checkpoint ``path`` against the encoder and, at epoch 0, copy it in; log a summary and
        remember the loaded tensors (they are the ones frozen). With ``path`` None, log that the encoder trains
        from its initialisation and return None. Raises ValueError for a file that is not a fitting checkpoint."""
        if path is None:
            self.print_to_log_file(f"No ImageNet weights ({WEIGHTS_ENV_VAR} is not set): the encoder is trained "
                                   "from its initialisation and never frozen.")
            return None
        network = unwrap_network(self.network)
        weights = match_vmamba_checkpoint(network.encoder, read_vmamba_checkpoint(path))
        if self.current_epoch == 0:
            weights.copy_into(network.encoder)
            self.print_to_log_file(f"Encoder weights from {path}\n{weights.summary()}")
        else:
            self.print_to_log_file(f"Continuing at epoch {self.current_epoch}: the encoder keeps the checkpoint's "
                                   f"weights; {path} only tells which tensors stay frozen until epoch "
                                   f"{self.freeze_encoder_epochs}.")
        self.pretrained_parameter_names = [f"encoder.{name}" for name in weights.tensors]
        return weights

    def on_train_start(self):
        path = self.pretrained_weights_path()
        if not self.was_initialized:
            self.initialize()
        self.load_pretrained_encoder(path)
        super().on_train_start()

    def on_train_epoch_start(self):
        frozen = bool(self.pretrained_parameter_names) and self.current_epoch < self.freeze_encoder_epochs
        if frozen != self.encoder_frozen:
            self.network = set_trainable(self.network, self.pretrained_parameter_names, not frozen)
            self.encoder_frozen = frozen
            self.print_to_log_file(
                f"Encoder: {len(self.pretrained_parameter_names)} pretrained tensors "
                + (f"frozen until epoch {self.freeze_encoder_epochs}." if frozen else "trainable."))
        super().on_train_epoch_start()


class nnUNetTrainerSwinUMambaLoG(SwinUMambaRecipeTrainer):
    """The paper's 2D model (Swin-UMamba-dagger with a LoG-VMamba decoder) with Swin-UMamba-dagger's recipe; uses
    VMamba-Tiny ImageNet weights when ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS`` names them (encoder frozen for the first
    10 epochs), trains from scratch otherwise."""


class nnUNetTrainerSwinUMambaLoG_ImageNet(nnUNetTrainerSwinUMambaLoG):
    """``nnUNetTrainerSwinUMambaLoG`` that refuses to train without the VMamba-Tiny ImageNet weights (the paper's
    setting)."""

    require_pretrained_weights = True


class nnUNetTrainerSwinUMambaDagger(SwinUMambaRecipeTrainer):
    """Baseline: Swin-UMamba-dagger itself -- VSS decoder blocks with K = 4 directions (VMamba's SS2D) -- with the
    same recipe and optional ImageNet weights."""

    stage_kind = "vss"
    directions = 4

"""Trainers with Swin-UMamba-dagger's recipe for the paper's 2D model (SPEC §5), with VMamba-Tiny ImageNet weights.

Recipe (Swin-UMamba's trainer for Swin-UMamba-dagger): AdamW (learning rate 1e-4, weight decay 0.05, betas
(0.9, 0.999), eps 1e-5; A_log and D without weight decay as everywhere in this package), a cosine schedule from
1e-4 to 1e-6 over the training epochs, and the encoder's pretrained tensors frozen for the first 10 epochs when
ImageNet weights are used.

ImageNet weights: the absolute path of VMamba-Tiny's ``vssmtiny_dp01_ckpt_epoch_292.pth`` in the environment
variable ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS`` (see ``logvmamba_nnunet.nnunet.pretrained``). They are loaded in
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

import math
from collections.abc import Collection
from pathlib import Path

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler

from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay
from logvmamba_nnunet.nnunet.pretrained import (
    WEIGHTS_ENV_VAR,
    EncoderWeights,
    match_vmamba_checkpoint,
    read_vmamba_checkpoint,
    weights_path_from_environment,
)
from logvmamba_nnunet.nnunet_trainers.logvmamba import nnUNetTrainerLoGVMamba


class CosineLRScheduler(LRScheduler):
    """Cosine decay from ``initial_lr`` at step 0 to ``final_lr`` at ``max_steps``, set on every parameter group:
    lr = final_lr + (initial_lr - final_lr) * (1 + cos(pi * step / max_steps)) / 2. ``step(current_step)`` as
    nnU-Net's ``PolyLRScheduler`` (nnU-Net passes the epoch); without an argument it counts calls."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, final_lr: float, max_steps: int):
        if max_steps < 1 or not 0 <= final_lr <= initial_lr:
            raise ValueError(f"need max_steps >= 1 and 0 <= final_lr <= initial_lr, got max_steps={max_steps}, "
                             f"initial_lr={initial_lr}, final_lr={final_lr}.")
        self.initial_lr, self.final_lr, self.max_steps = initial_lr, final_lr, max_steps
        self.counter = 0
        super().__init__(optimizer)

    def learning_rate(self, step: int) -> float:
        """The learning rate at ``step`` (clamped to [0, max_steps])."""
        progress = min(max(step, 0), self.max_steps) / self.max_steps
        return self.final_lr + (self.initial_lr - self.final_lr) * (1 + math.cos(math.pi * progress)) / 2

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.counter
            self.counter += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain network inside DDP and ``torch.compile`` wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def set_trainable(network: nn.Module, parameter_names: Collection[str], trainable: bool) -> nn.Module:
    """Set ``requires_grad`` of the named parameters (names of the unwrapped network) and return the network to
    use from now on: a new DDP wrapper around the same module, with the same device settings, when ``network`` is a
    DDP wrapper (DDP registers the trainable parameters when it is constructed); ``network`` itself otherwise."""
    parameters = dict(unwrap_network(network).named_parameters())
    unknown = [name for name in parameter_names if name not in parameters]
    if unknown:
        raise ValueError(f"the network has no parameters named {unknown[:3]}; pass names of the unwrapped network.")
    for name in parameter_names:
        parameters[name].requires_grad_(trainable)
    if isinstance(network, DistributedDataParallel):
        return DistributedDataParallel(
            network.module, device_ids=network.device_ids, output_device=network.output_device,
            find_unused_parameters=network.find_unused_parameters)
    return network


class nnUNetTrainerSwinUMambaLoG(nnUNetTrainerLoGVMamba):
    """The paper's 2D model (Swin-UMamba-dagger with a LoG-VMamba decoder) with Swin-UMamba-dagger's recipe; uses
    VMamba-Tiny ImageNet weights when ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS`` names them (encoder frozen for the first
    10 epochs), trains from scratch otherwise. 2d configurations only."""

    learning_rate = 1e-4
    adam_weight_decay = 0.05
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
        return optimizer, CosineLRScheduler(optimizer, self.initial_lr, self.final_learning_rate, self.num_epochs)

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


class nnUNetTrainerSwinUMambaLoG_ImageNet(nnUNetTrainerSwinUMambaLoG):
    """``nnUNetTrainerSwinUMambaLoG`` that refuses to train without the VMamba-Tiny ImageNet weights (the paper's
    setting)."""

    require_pretrained_weights = True


class nnUNetTrainerSwinUMambaDagger(nnUNetTrainerSwinUMambaLoG):
    """Baseline: Swin-UMamba-dagger itself -- VSS decoder blocks with K = 4 directions (VMamba's SS2D) -- with the
    same recipe and optional ImageNet weights."""

    stage_kind = "vss"
    directions = 4


class nnUNetTrainerSwinUMambaLoG_Tiny(nnUNetTrainerSwinUMambaLoG):
    """For tests: a small encoder (widths 16-128, one block per stage) and one block per decoder level; 2 epochs of
    2 iterations, 1 validation iteration; with weights, the encoder is frozen in the first epoch only."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1
    freeze_encoder_epochs = 1

    @classmethod
    def network_2d_overrides(cls) -> dict:
        return {**super().network_2d_overrides(), "widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1),
                "decoder_blocks_per_level": 1}

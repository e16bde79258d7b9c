"""Base trainers (not trainers to use themselves): what every trainer here shares, and what builds the LoG family's
networks from an nnU-Net plan."""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule

from logvmamba_nnunet.networks.log_vmamba_pooled_unet import LoGVMambaPooledUNet
from logvmamba_nnunet.networks.log_vmamba_pooled_unet import deep_supervision_scales as pooled_deep_supervision_scales
from logvmamba_nnunet.networks.log_vmamba_unet import LoGVMambaUNet
from logvmamba_nnunet.networks.vmamba_encoder_2d import VMAMBA_TINY_WIDTHS
from logvmamba_nnunet.networks.vmamba_unet_2d import LoGVMambaSwinUMamba2D, deep_supervision_scales_2d
from logvmamba_nnunet.nnunet.checkpoints import (
    DEFAULT_NONFINITE_PATIENCE,
    DivergenceGuard,
    TrainingDivergedError,
    atomic_file,
    divergence_message,
    nonfinite_tensors,
    resume_sentence,
)
from logvmamba_nnunet.nnunet.memory_check import (
    InsufficientMemoryError,
    check_skipped,
    device_memory_bytes,
    shortfall_message,
)
from logvmamba_nnunet.nnunet.plans import network_kwargs_from_configuration
from logvmamba_nnunet.profiling.memory_estimate import MemoryEstimate, estimate_configuration
from logvmamba_nnunet.profiling.profile import network_inputs_and_outputs


class PluginTrainer(nnUNetTrainer):
    """Base of every trainer here.

    Variants set class attributes: ``epochs``, ``iterations_per_epoch`` and ``val_iterations_per_epoch`` (the
    schedule), and ``learning_rate`` / ``optimizer_weight_decay`` (None keeps nnU-Net's 1e-2 / 3e-5). They become
    nnU-Net's ``num_epochs``, ``initial_lr``, ``weight_decay`` and so on. ``torch.compile`` is used only when
    ``nnUNet_compile`` explicitly asks for it (nnU-Net's default is to compile on CUDA, which these networks do not
    need and which the peers' users report failing).

    Reliability (``logvmamba_nnunet.nnunet.checkpoints``): checkpoints are written to a temporary file and renamed
    into place, so a kill at any moment leaves the previous checkpoint loadable for ``--c``; weights with nan/inf
    values are never saved; ``nonfinite_loss_patience`` non-finite training losses in a row stop training with
    :class:`TrainingDivergedError`, without saving, naming the checkpoint to resume from and what to change.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    learning_rate: float | None = None
    optimizer_weight_decay: float | None = None
    nonfinite_loss_patience: int = DEFAULT_NONFINITE_PATIENCE

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        if self.learning_rate is not None:
            self.initial_lr = self.learning_rate
        if self.optimizer_weight_decay is not None:
            self.weight_decay = self.optimizer_weight_decay
        self.divergence_guard = DivergenceGuard(self.nonfinite_loss_patience)
        self._guard_epoch, self._guard_iteration = None, 0

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step, then the divergence guard on its loss."""
        if self._guard_epoch != self.current_epoch:
            self._guard_epoch, self._guard_iteration = self.current_epoch, 0
        iteration = self._guard_iteration
        self._guard_iteration += 1
        result = super().train_step(batch)
        self._check_training_loss(float(np.mean(result["loss"])), iteration)
        return result

    def _check_training_loss(self, loss: float, iteration: int) -> None:
        """Raise :class:`TrainingDivergedError` after ``nonfinite_loss_patience`` non-finite losses in a row (under
        DDP a loss counts as non-finite when any rank's is, so that every rank stops at the same iteration)."""
        if self.is_ddp:
            flag = torch.tensor(0.0 if math.isfinite(loss) else 1.0, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and math.isfinite(loss):
                loss = math.nan
        if self.divergence_guard.update(loss, self.current_epoch, iteration):
            message = divergence_message(self.divergence_guard, self.current_epoch, iteration,
                                         self.num_iterations_per_epoch, self.last_good_checkpoint(),
                                         self.divergence_remedies())
            self.print_to_log_file(message)
            raise TrainingDivergedError(message)

    def divergence_remedies(self) -> str:
        """What to change after a divergence (the end of :class:`TrainingDivergedError`'s message)."""
        return (f"train in fp32 without mixed precision (-tr nnUNetTrainerLoGVMamba_NoAMP for the LoG-VMamba "
                f"recipe, or a subclass of {type(self).__name__} with force_fp32 = True), or lower the learning "
                f"rate (a subclass with learning_rate = {self.initial_lr / 10:g}; it is {self.initial_lr:g} now), "
                "then train from the start or from the last good checkpoint.")

    def last_good_checkpoint(self) -> Path | None:
        """The checkpoint ``nnUNetv2_train --c`` resumes from (final, else latest, else best), or None."""
        for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
            path = Path(self.output_folder) / name
            if path.is_file():
                return path
        return None

    def _nonfinite_weights(self) -> list[str]:
        network = self.network.module if self.is_ddp else self.network
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        return nonfinite_tensors(network.state_dict())

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (the same dict, on local rank 0 unless checkpointing is disabled), written to a
        temporary file in the same folder, fsynced and renamed onto ``filename``. Not written at all after a
        divergence or when a weight is nan/inf: the file already there stays the last good checkpoint."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # writes nothing (nnU-Net says so when checkpointing is disabled)
            return
        if self.divergence_guard.diverged:
            self.print_to_log_file(f"{filename} not written: training diverged.")
            return
        nonfinite = self._nonfinite_weights()
        if nonfinite:
            self.print_to_log_file(f"{filename} not written: {len(nonfinite)} weight tensor(s) hold nan/inf "
                                   f"values (e.g. {nonfinite[0]}); the checkpoint already there is kept.")
            return
        with atomic_file(filename) as temporary:
            super().save_checkpoint(str(temporary))

    def run_training(self):
        """nnU-Net's training loop; after a divergence the data loaders are shut down before the error propagates,
        so that their worker threads do not bury its message under their own errors."""
        try:
            super().run_training()
        except TrainingDivergedError:
            for loader in (self.dataloader_train, self.dataloader_val):
                finish = getattr(loader, "_finish", None)
                if callable(finish):
                    with contextlib.redirect_stdout(io.StringIO()):
                        finish()
            raise

    def on_train_end(self):
        """Stop with :class:`TrainingDivergedError` instead of saving non-finite final weights (nnU-Net would then also
        delete checkpoint_latest.pth, the last good one)."""
        nonfinite = self._nonfinite_weights()  # the same on every DDP rank
        if nonfinite:
            message = (f"training diverged: after the last epoch {len(nonfinite)} weight tensor(s) hold nan/inf "
                       f"values (e.g. {nonfinite[0]}); checkpoint_final.pth was not written. "
                       f"{resume_sentence(self.last_good_checkpoint())} Remedies: {self.divergence_remedies()}")
            self.print_to_log_file(message)
            raise TrainingDivergedError(message)
        super().on_train_end()

    def _do_i_compile(self) -> bool:
        """torch.compile only when ``nnUNet_compile`` explicitly asks for it (and nnU-Net allows it)."""
        if os.environ.get("nnUNet_compile", "").lower() not in ("true", "1", "t"):
            return False
        return super()._do_i_compile()


class LoGFamilyTrainer(PluginTrainer):
    """Builds the LoG family's networks; the recipes (optimizer, schedule) are in the subclasses.

    3D configurations get the LoG-VMamba U-Net (``topology = "pooled"``, the default: ``LoGVMambaPooledUNet``, the
    authors' released topology with every block after a 2x max-pooling of the stem; ``topology = "stage"``:
    ``LoGVMambaUNet``, U-Mamba-Enc with LoG-family encoder blocks at every stage's resolution; docs/architecture.md
    gives the measurements behind the default);
    2D configurations the paper's 2D model, Swin-UMamba-dagger with a LoG-VMamba decoder
    (``LoGVMambaSwinUMamba2D``), unless ``use_vmamba_2d`` is False. Class attributes describe the network, so every
    variant is a small subclass and ``build_network_architecture`` (a classmethod, which nnU-Net calls like its
    static method) sees them both in training and when ``nnUNetv2_predict`` rebuilds the network:

    - ``stage_kind``: None for the per-stage rule of ``networks.stage_rules`` (3D), or one kind for every encoder
      stage (3D) / decoder block (2D: None means ``local_global``; ``vss`` is Swin-UMamba-dagger's decoder);
    - ``placement``, ``directions``: global-token placement and scan directions of every block;
    - ``force_fp32``: the whole network in fp32 and no gradient scaler;
    - ``recompute_blocks``: every LoG-family/VMamba block keeps only its input (and its scan's results) for
      backward and recomputes its other activations there (same results, far less activation memory, one more
      forward of the blocks but their scans);
    - ``recompute_full_resolution``: the same for the pooled network's full-resolution decoder tail (its largest
      maps);
    - ``use_vmamba_2d``: which network 2D configurations get;
    - ``topology``: ``"pooled"`` or ``"stage"``, the U-Net for 3D configurations (and 2D ones without
      ``use_vmamba_2d``);
    - ``optimizer_states``: state tensors per parameter of the optimizer (Adam 2, SGD with momentum 1), for the
      memory estimate.

    Before the first iteration, on CUDA, the memory estimate of a training step at the plan's patch and batch
    (``profiling.memory_estimate``) is compared with the device's memory; when it does not fit, training stops
    with :class:`InsufficientMemoryError`, whose message gives the ``logvmamba-nnunet plan`` command that fits.
    """

    topology: str = "pooled"
    stage_kind: str | None = None
    placement: str = "interleaved"
    directions: int = 1
    force_fp32: bool = False
    recompute_blocks: bool = True
    recompute_full_resolution: bool = True
    use_vmamba_2d: bool = True
    optimizer_states: int = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.force_fp32:
            self.grad_scaler = None

    @classmethod
    def network_overrides(cls, n_stages: int) -> dict:
        """Keyword arguments this trainer adds to the plan's architecture kwargs (3D network)."""
        overrides = {"placement": cls.placement, "directions": cls.directions, "force_fp32": cls.force_fp32,
                     "recompute_blocks": cls.recompute_blocks}
        if cls.stage_kind is not None:
            overrides["stage_kinds"] = [cls.stage_kind] * n_stages
        return overrides

    @classmethod
    def network_2d_overrides(cls) -> dict:
        """Keyword arguments of ``LoGVMambaSwinUMamba2D`` for 2D configurations (besides the patch size)."""
        return {"decoder_kind": cls.stage_kind or "local_global", "placement": cls.placement,
                "directions": cls.directions, "force_fp32": cls.force_fp32, "recompute_blocks": cls.recompute_blocks}

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
        if cls.topology not in ("stage", "pooled"):
            raise ValueError(f"{cls.__name__}.topology is {cls.topology!r}; use 'stage' (LoGVMambaUNet) or 'pooled' "
                             "(LoGVMambaPooledUNet).")
        if cls.topology == "stage":
            return LoGVMambaUNet(num_input_channels, num_output_channels, enable_deep_supervision, **kwargs)
        return LoGVMambaPooledUNet(num_input_channels, num_output_channels, enable_deep_supervision,
                                   recompute_full_resolution=cls.recompute_full_resolution, **kwargs)

    def memory_estimate(self) -> MemoryEstimate:
        """Estimated peak memory of one training step at this configuration on this trainer's device (per GPU
        under DDP: the batch split over the ranks)."""
        channels, heads = network_inputs_and_outputs(self.plans_manager.plans, self.configuration_name,
                                                     self.dataset_json)
        batch = self.configuration_manager.batch_size
        if self.is_ddp:
            batch = math.ceil(batch / dist.get_world_size())
        cuda = self.device.type == "cuda"
        return estimate_configuration(type(self), self.plans_manager.plans, self.configuration_name, channels,
                                      heads, "cuda" if cuda else "cpu", batch, autocast=cuda and not self.force_fp32)

    def check_memory(self, capacity_bytes: int | None = None) -> None:
        """Raise :class:`InsufficientMemoryError` when the step's estimate exceeds ``capacity_bytes`` (default: the
        CUDA device's total memory; nothing is checked on other devices or with ``LOGVMAMBA_SKIP_MEMORY_CHECK=1``)."""
        capacity_bytes = capacity_bytes if capacity_bytes is not None else device_memory_bytes(self.device)
        if capacity_bytes is None or check_skipped():
            return
        estimate = self.memory_estimate()
        self.print_to_log_file(f"estimated training memory: {estimate.describe()}")
        message = shortfall_message(estimate, capacity_bytes, type(self).__name__, self.plans_manager.dataset_name,
                                    self.configuration_name, list(self.configuration_manager.patch_size))
        if message is not None:
            self.print_to_log_file(message)
            raise InsufficientMemoryError(message)

    def on_train_start(self):
        """The memory check, then nnU-Net's start of training."""
        self.check_memory()
        super().on_train_start()

    def _get_deep_supervision_scales(self):
        """The 2D VMamba network's outputs are at full, 1/4, 1/8, 1/16 size, and the pooled U-Net's at full size, then
        at each encoder stage's pooled size; neither at the plan's pooling scales."""
        if self.enable_deep_supervision and self.builds_vmamba_2d(self.configuration_manager):
            widths = self.network_2d_overrides().get("widths", VMAMBA_TINY_WIDTHS)
            return deep_supervision_scales_2d(len(widths))
        if self.enable_deep_supervision and self.topology == "pooled":
            return pooled_deep_supervision_scales(self.configuration_manager.patch_size,
                                                  self.configuration_manager.pool_op_kernel_sizes)
        return super()._get_deep_supervision_scales()

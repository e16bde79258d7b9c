"""The CPU demo's trainers (``logvmamba-nnunet demo``): LoG-VMamba and nnU-Net's default network on one short
schedule, so the demo compares them after the same number of iterations on the same data."""

from logvmamba_nnunet_trainers.base import PluginTrainer
from logvmamba_nnunet_trainers.logvmamba import nnUNetTrainerLoGVMamba


class nnUNetTrainer_Demo(PluginTrainer):
    """nnU-Net's default network and recipe (SGD 1e-2) on the demo's schedule: 6 epochs of 12 iterations, 2
    validation iterations per epoch."""

    epochs = 6
    iterations_per_epoch = 12
    val_iterations_per_epoch = 2


class nnUNetTrainerLoGVMamba_Demo(nnUNetTrainer_Demo, nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba``'s network and optimizer on the demo's schedule. The 10x larger learning rate (1e-3)
    is a deviation from the paper's 1e-4, needed to learn anything in 72 steps; use ``nnUNetTrainerLoGVMamba`` for
    real training."""

    learning_rate = 1e-3

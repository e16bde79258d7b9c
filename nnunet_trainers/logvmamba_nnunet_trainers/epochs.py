"""Epoch-length variants named as nnU-Net names its own (``nnUNetTrainer_100epochs`` and so on)."""

from logvmamba_nnunet_trainers.logvmamba import nnUNetTrainerLoGVMamba


class nnUNetTrainerLoGVMamba_50epochs(nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba`` for 50 epochs."""

    epochs = 50


class nnUNetTrainerLoGVMamba_100epochs(nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba`` for 100 epochs."""

    epochs = 100


class nnUNetTrainerLoGVMamba_250epochs(nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba`` for 250 epochs."""

    epochs = 250


class nnUNetTrainerLoGVMamba_500epochs(nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba`` for 500 epochs."""

    epochs = 500

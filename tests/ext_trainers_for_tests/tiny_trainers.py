"""Tiny trainers for the tests (short schedules, narrow 2D networks); not part of the package.

The tests put this folder on ``nnUNet_extTrainer`` next to the package's trainer folder, for the stock commands in
their subprocesses. nnU-Net imports the modules of this folder as top-level modules on every trainer lookup, so
they hold only thin subclasses; unit tests import them as ``tests.ext_trainers_for_tests.tiny_trainers``.
"""

from logvmamba_nnunet_trainers import (
    nnUNetTrainerLoGVMamba,
    nnUNetTrainerSwinUMambaLoG,
    nnUNetTrainerUMambaBot,
    nnUNetTrainerUMambaEnc,
)


class TinyNetwork2D:
    """Mixin for the LoG family's trainers: in 2D, a small VMamba encoder (widths 16-128, one block per stage) with
    one block per decoder level, so CPU runs stay short; 3D keeps the plan's network."""

    @classmethod
    def network_2d_overrides(cls) -> dict:
        return {**super().network_2d_overrides(), "widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1),
                "decoder_blocks_per_level": 1}


class nnUNetTrainerLoGVMamba_Tiny(TinyNetwork2D, nnUNetTrainerLoGVMamba):
    """2 epochs of 4 iterations, 2 validation iterations, the small 2D network."""

    epochs = 2
    iterations_per_epoch = 4
    val_iterations_per_epoch = 2


class nnUNetTrainerSwinUMambaLoG_Tiny(TinyNetwork2D, nnUNetTrainerSwinUMambaLoG):
    """The small 2D network; 2 epochs of 2 iterations, 1 validation iteration; with weights, the encoder is frozen in
    the first epoch only."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1
    freeze_encoder_epochs = 1


class nnUNetTrainerUMambaEnc_Tiny(nnUNetTrainerUMambaEnc):
    """2 epochs of 2 iterations, 1 validation iteration."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1


class nnUNetTrainerUMambaBot_Tiny(nnUNetTrainerUMambaBot):
    """2 epochs of 2 iterations, 1 validation iteration."""

    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1


class nnUNetTrainerLoGVMamba_Minimal(TinyNetwork2D, nnUNetTrainerLoGVMamba):
    """1 epoch of 2 iterations, 1 validation iteration, the small 2D network."""

    epochs = 1
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1

"""Tiny trainers for the workflow end-to-end test (``tests/test_e2e_workflow.py``); not part of the package.

The test puts this folder on ``nnUNet_extTrainer`` in its subprocesses only. nnU-Net imports this module as a
top-level module from that folder on every trainer lookup, so it holds only thin subclasses. Both trainers train
1 epoch of 2 iterations with 1 validation iteration and predict without test-time mirroring (nnU-Net's
``nnUNetTrainerNoMirroring``), which keeps the 20 trainings and the predictions of the test short on a CPU.
"""

import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)
from tiny_trainers import nnUNetTrainerLoGVMamba_Tiny

TINY_EPOCHS, TINY_ITERATIONS, TINY_VAL_ITERATIONS = 1, 2, 1


class nnUNetTrainer_TinyDefault(nnUNetTrainerNoMirroring):
    """nnU-Net's default trainer (its U-Net, loss, optimiser, schedule), tiny schedule, no mirroring."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = TINY_EPOCHS
        self.num_iterations_per_epoch = TINY_ITERATIONS
        self.num_val_iterations_per_epoch = TINY_VAL_ITERATIONS


class nnUNetTrainerLoGVMamba_TinyWorkflow(nnUNetTrainerLoGVMamba_Tiny, nnUNetTrainerNoMirroring):
    """``nnUNetTrainerLoGVMamba`` with the tiny schedule and no mirroring; for 2D configurations its
    Swin-UMamba-dagger network is narrowed to widths (8, 16, 32, 64) with one block per stage (3D is unchanged)."""

    epochs = TINY_EPOCHS
    iterations_per_epoch = TINY_ITERATIONS
    val_iterations_per_epoch = TINY_VAL_ITERATIONS

    @classmethod
    def network_2d_overrides(cls) -> dict:
        return {**super().network_2d_overrides(), "widths": (8, 16, 32, 64), "depths": (1, 1, 1, 1)}

"""Tiny trainers for the workflow end-to-end test (``tests/test_e2e_workflow.py``).

The test puts this folder on ``nnUNet_extTrainer`` in its subprocesses only; it is not part of the package. nnU-Net
imports this module as a top-level module from that folder, once per trainer lookup, so it holds only thin
subclasses.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from logvmamba_nnunet.nnunet_trainers import nnUNetTrainerLoGVMamba_Tiny


class nnUNetTrainer_TinyDefault(nnUNetTrainer):
    """nnU-Net's default trainer (its U-Net, loss, optimiser and schedule) for 1 epoch of 2 iterations, 1 validation
    iteration."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


class nnUNetTrainerLoGVMamba_TinyWorkflow(nnUNetTrainerLoGVMamba_Tiny):
    """``nnUNetTrainerLoGVMamba`` (network and recipe unchanged) for 1 epoch of 2 iterations, 1 validation
    iteration."""

    epochs = 1
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1

"""What every trainer of this package shares: schedule lengths as class attributes and the compile policy."""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class PluginTrainer(nnUNetTrainer):
    """Base of this package's trainers (not a trainer to use itself).

    Variants set ``epochs``, ``iterations_per_epoch`` and ``val_iterations_per_epoch`` as class attributes;
    ``torch.compile`` is used only when ``nnUNet_compile`` explicitly asks for it (nnU-Net's default is to compile
    on CUDA, which these networks do not need and which the peers' users report failing).
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch

    def _do_i_compile(self) -> bool:
        """torch.compile only when ``nnUNet_compile`` explicitly asks for it (and nnU-Net allows it)."""
        if os.environ.get("nnUNet_compile", "").lower() not in ("true", "1", "t"):
            return False
        return super()._do_i_compile()

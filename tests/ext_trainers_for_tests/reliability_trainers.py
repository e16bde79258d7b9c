"""Tiny trainers for the reliability tests (``tests/test_checkpoints.py``, ``tests/test_divergence_guard.py``); not
part of the package.

nnU-Net imports this module as a top-level module from this folder on every trainer lookup, so it holds only thin
subclasses. ``LOGVMAMBA_TEST_PAUSE=checkpoint:MARKER`` makes the checkpoint trainer stop halfway through writing a
checkpoint_latest.pth that already exists (after its first half is on disk), ``iteration:MARKER`` in the first
training iteration of epoch 1; at that point it writes MARKER (for the checkpoint: the path it is writing) and
sleeps, so that a test can kill it there.
"""

import io
import os
import time
from pathlib import Path

import torch

try:  # a top-level module when nnU-Net imports this folder, a package module in the unit tests
    from tiny_trainers import nnUNetTrainerLoGVMamba_Tiny
except ImportError:
    from tests.ext_trainers_for_tests.tiny_trainers import nnUNetTrainerLoGVMamba_Tiny

PAUSE_ENV = "LOGVMAMBA_TEST_PAUSE"
PAUSE_SECONDS = 600


def _pause_marker(kind: str) -> Path | None:
    """The marker file to write before pausing at ``kind`` ('checkpoint' or 'iteration'), or None."""
    requested, _, marker = os.environ.get(PAUSE_ENV, "").partition(":")
    return Path(marker) if requested == kind and marker else None


class nnUNetTrainerLoGVMamba_EveryEpoch_Tiny(nnUNetTrainerLoGVMamba_Tiny):
    """3 epochs of 2 iterations, 1 validation iteration, checkpoint_latest.pth after every epoch."""

    epochs = 3
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1


class nnUNetTrainerLoGVMamba_Checkpoints_Tiny(nnUNetTrainerLoGVMamba_EveryEpoch_Tiny):
    """The every-epoch schedule; pauses on request (module docstring)."""

    def train_step(self, batch: dict) -> dict:
        marker = _pause_marker("iteration")
        if marker is not None and self.current_epoch == 1:
            marker.write_text(f"epoch {self.current_epoch}")
            time.sleep(PAUSE_SECONDS)
        return super().train_step(batch)

    def save_checkpoint(self, filename: str) -> None:
        marker = _pause_marker("checkpoint")
        if marker is None or Path(filename).name != "checkpoint_latest.pth" or not Path(filename).exists():
            return super().save_checkpoint(filename)
        real_save = torch.save

        def slow_save(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                marker.write_text(str(f))
                time.sleep(PAUSE_SECONDS)
                handle.write(data[len(data) // 2:])

        torch.save = slow_save
        try:
            super().save_checkpoint(filename)
        finally:
            torch.save = real_save


class nnUNetTrainerLoGVMamba_NaN_Tiny(nnUNetTrainerLoGVMamba_EveryEpoch_Tiny):
    """The every-epoch schedule, training stopped after 3 non-finite losses in a row; from epoch ``nan_from_epoch``
    on every training input is nan, so the loss, the gradients and then the weights become nan (the guard stops it
    in epoch 2, iteration 0)."""

    nonfinite_loss_patience = 3
    nan_from_epoch = 1

    def train_step(self, batch: dict) -> dict:
        if self.current_epoch >= self.nan_from_epoch:
            batch = {**batch, "data": torch.full_like(batch["data"], float("nan"))}
        return super().train_step(batch)

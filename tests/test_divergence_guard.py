"""The divergence guard: nan/inf training losses stop training with one message, and no checkpoint with non-finite
weights is ever written (nnU-Net's own ``run_training`` loop, in-process, with in-memory batches; end to end with
``nnUNetv2_train``)."""

from __future__ import annotations

import itertools
import math
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import tests.ext_trainers_for_tests.reliability_trainers as reliability_trainers
from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.checkpoints import (
    DEFAULT_NONFINITE_PATIENCE,
    DivergenceGuard,
    TrainingDivergedError,
    divergence_message,
    nonfinite_tensors,
)
from tests.plans_factory import DATASET_JSON, plans


def test_guard_counts_consecutive_nonfinite_losses_only():
    guard = DivergenceGuard(3)
    losses = [1.0, math.nan, math.inf, 0.5, math.nan, -math.inf, math.nan]
    stops = [guard.update(loss, 0, i) for i, loss in enumerate(losses)]
    assert stops == [False] * 6 + [True]
    assert guard.first == (0, 4) and math.isnan(guard.first_value) and guard.diverged
    assert DivergenceGuard().patience == DEFAULT_NONFINITE_PATIENCE == 5
    with pytest.raises(ValueError, match=">= 1"):
        DivergenceGuard(0)


def test_message_names_place_checkpoint_and_remedies():
    guard = DivergenceGuard(2)
    guard.update(math.nan, 3, 249)
    guard.update(math.nan, 4, 0)
    text = divergence_message(guard, 4, 0, 250, "/r/checkpoint_latest.pth", "use -tr X")
    assert "2 consecutive iterations (epoch 4, iteration 0 of 250; the first of them at epoch 3, iteration 249)" \
        in text
    assert "/r/checkpoint_latest.pth" in text and "--c" in text and text.endswith("Remedies: use -tr X")
    assert "nothing to resume from" in divergence_message(guard, 4, 0, 250, None, "r")


def make_trainer(cls, tmp_path, monkeypatch):
    """A trainer on the tests' small 2D plan, initialised without data and, to be fast, with a one-convolution
    network without deep supervision (the guard and the checkpoints do not depend on the network); in-memory
    batches replace nnU-Net's data loaders and on_train_start does nothing."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainer = cls(plans(), "2d", 0, dict(DATASET_JSON), torch.device("cpu"))
    torch.manual_seed(0)
    trainer.enable_deep_supervision = False
    trainer.network = nn.Conv2d(1, 3, 3, padding=1)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    batch = {"data": torch.randn(2, 1, 32, 32), "target": torch.randint(0, 3, (2, 1, 32, 32)).float()}
    trainer.dataloader_train = trainer.dataloader_val = itertools.repeat(batch)
    monkeypatch.setattr(trainer, "on_train_start", lambda: None)
    return trainer


def test_nan_losses_stop_training_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    cls = reliability_trainers.nnUNetTrainerLoGVMamba_NaN_Tiny
    trainer = make_trainer(cls, tmp_path, monkeypatch)
    with pytest.raises(TrainingDivergedError) as raised:
        trainer.run_training()
    message = str(raised.value)
    fold = Path(trainer.output_folder)
    latest = fold / "checkpoint_latest.pth"
    # epochs of 2 iterations, nan from epoch 1: the losses of (epoch, iteration) (1, 0), (1, 1), (2, 0) stop it
    assert "the training loss was not finite (nan) for 3 consecutive iterations (epoch 2, iteration 0 of 2; " \
           "the first of them at epoch 1, iteration 0)" in message
    assert f"Last good checkpoint (not overwritten): {latest}" in message
    assert "nnUNetTrainerLoGVMamba_NoAMP" in message and "learning_rate = 1e-05" in message
    assert "\n" not in message
    checkpoint = torch.load(latest, map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 1  # written after epoch 0, never replaced by the nan weights of epoch 1
    assert all(torch.isfinite(t).all() for t in checkpoint["network_weights"].values() if t.is_floating_point())
    assert not (fold / "checkpoint_final.pth").exists()
    assert sorted(p.name for p in fold.glob("*.pth")) == ["checkpoint_best.pth", "checkpoint_latest.pth"]
    assert not list(fold.glob(".*.partial"))
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"{latest} not written: " in log and "weight tensor(s) hold nan/inf values" in log
    assert message in log


def test_nan_weights_at_the_end_keep_checkpoint_latest(tmp_path, monkeypatch):
    """Fewer nan losses than the guard's patience, in the last epoch: nnU-Net would save nan final weights and
    delete checkpoint_latest.pth; the trainer stops instead and keeps it."""
    cls = reliability_trainers.nnUNetTrainerLoGVMamba_NaN_Tiny
    monkeypatch.setattr(cls, "nan_from_epoch", 2)
    trainer = make_trainer(cls, tmp_path, monkeypatch)
    with pytest.raises(TrainingDivergedError, match="checkpoint_final.pth was not written"):
        trainer.run_training()
    fold = Path(trainer.output_folder)
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 2
    assert not (fold / "checkpoint_final.pth").exists()


def test_finite_training_is_unchanged(tmp_path, monkeypatch):
    """The same trainer without nan: nnU-Net's checkpoints as usual (final written, latest deleted)."""
    cls = reliability_trainers.nnUNetTrainerLoGVMamba_NaN_Tiny
    monkeypatch.setattr(cls, "nan_from_epoch", 99)
    monkeypatch.setattr(cls, "epochs", 1)
    trainer = make_trainer(cls, tmp_path, monkeypatch)
    trainer.run_training()
    fold = Path(trainer.output_folder)
    assert sorted(p.name for p in fold.glob("*.pth")) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 1 and final["trainer_name"] == cls.__name__
    assert not trainer.divergence_guard.consecutive


@pytest.mark.e2e
def test_nnunetv2_train_stops_with_the_guards_message(nnunet_env):
    """The stock command with nan inputs from epoch 1: exit status non-zero, the message, epoch 0's checkpoint."""
    env, dataset_id, trainer = nnunet_env, 894, "nnUNetTrainerLoGVMamba_NaN_Tiny"
    make_synthetic_dataset(env["nnUNet_raw"], dataset_id, dims=2, num_train=5, num_test=0, size=(40, 48))
    planned = subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "2"],
                             env=env, capture_output=True, text=True, timeout=900)
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    result = subprocess.run(["nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", trainer, "-device", "cpu"],
                            env=env, capture_output=True, text=True, timeout=900)
    fold = Path(env["nnUNet_results"]) / f"Dataset{dataset_id}_LoGVMambaSynthetic" / f"{trainer}__nnUNetPlans__2d" / \
        "fold_0"
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("logvmamba_nnunet.nnunet.checkpoints.TrainingDivergedError: training diverged: ")
    assert "3 consecutive iterations (epoch 2, iteration 0 of 2;" in last_line
    assert str(fold / "checkpoint_latest.pth") in last_line and "nnUNetTrainerLoGVMamba_NoAMP" in last_line
    checkpoint = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    assert checkpoint["current_epoch"] == 1 and not nonfinite_tensors(checkpoint["network_weights"])
    assert not (fold / "checkpoint_final.pth").exists()

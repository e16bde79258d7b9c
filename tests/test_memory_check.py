"""The LoG-family trainers stop before the first iteration when the plan's training step does not fit the device."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from logvmamba_nnunet.nnunet.memory_check import (
    InsufficientMemoryError,
    device_memory_bytes,
    round_down,
    shortfall_message,
)
from logvmamba_nnunet.nnunet.planner import GB
from logvmamba_nnunet_trainers import nnUNetTrainerLoGVMamba, nnUNetTrainerLoGVMamba_nnUNetRecipe
from tests.plans_factory import DATASET_JSON, plans


def make_trainer(tmp_path, monkeypatch, trainer_class=nnUNetTrainerLoGVMamba):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return trainer_class(plans(), "3d_fullres", 0, dict(DATASET_JSON), torch.device("cpu"))


def test_trainer_stops_early_with_the_plan_command(tmp_path, monkeypatch):
    """With a (mocked) 0.02 GB device the step's estimate does not fit: on_train_start raises before nnU-Net's own
    start of training (data loaders, network) runs, naming needed and available memory and the fix."""
    trainer = make_trainer(tmp_path, monkeypatch)
    monkeypatch.setattr("logvmamba_nnunet_trainers.base.device_memory_bytes", lambda device: 2 * 10**7)
    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: pytest.fail("nnU-Net's start was reached"))
    with pytest.raises(InsufficientMemoryError) as raised:
        trainer.on_train_start()
    message = str(raised.value)
    needed = trainer.memory_estimate().total
    assert needed > 2 * 10**7 and "\n" not in message
    assert f"needs about {needed / GB:.3g} GB" in message and "the device has 0.02 GB" in message
    assert "`logvmamba-nnunet plan -d 999 -c 3d_fullres --gpu-memory 0.02 -tr nnUNetTrainerLoGVMamba`" in message
    assert "-plans_name nnUNetLoGVMambaPlans_0.02G" in message and "-p nnUNetLoGVMambaPlans_0.02G" in message
    assert "LOGVMAMBA_SKIP_MEMORY_CHECK=1" in message


def test_skip_variable_trains_with_the_plan_anyway(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch)
    started = []
    monkeypatch.setattr("logvmamba_nnunet_trainers.base.device_memory_bytes", lambda device: 2 * 10**7)
    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: started.append(True))
    monkeypatch.setenv("LOGVMAMBA_SKIP_MEMORY_CHECK", "1")
    trainer.on_train_start()
    assert started == [True]
    monkeypatch.setenv("LOGVMAMBA_SKIP_MEMORY_CHECK", "0")
    with pytest.raises(InsufficientMemoryError):
        trainer.on_train_start()


def test_trainer_goes_on_when_the_step_fits(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch)
    started = []
    monkeypatch.setattr("logvmamba_nnunet_trainers.base.device_memory_bytes", lambda device: 80 * GB)
    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: started.append(True))
    trainer.on_train_start()
    assert started == [True]


def test_no_check_on_the_cpu(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch)
    monkeypatch.setattr(type(trainer), "memory_estimate", lambda self: pytest.fail("estimated on the CPU"))
    trainer.check_memory()


def test_estimate_follows_the_optimizer_and_precision(tmp_path, monkeypatch):
    """SGD keeps one state tensor per parameter, Adam two; CUDA adds fp16 weight copies and the reserve."""
    adam = make_trainer(tmp_path, monkeypatch).memory_estimate()
    sgd = make_trainer(tmp_path, monkeypatch, nnUNetTrainerLoGVMamba_nnUNetRecipe).memory_estimate()
    assert adam.optimizer_state == 2 * adam.weights and sgd.optimizer_state == sgd.weights
    assert adam.batch_size == plans()["configurations"]["3d_fullres"]["batch_size"]
    assert adam.device_type == "cpu" and adam.reserve == 0


def test_shortfall_message_and_device_memory(monkeypatch):
    from logvmamba_nnunet.profiling.memory_estimate import MemoryEstimate

    estimate = MemoryEstimate(2, "cuda", 10 * GB, 0, 0, 0, 20 * GB, 0, 0, 0, 0)
    assert shortfall_message(estimate, 30 * GB, "nnUNetTrainerLoGVMamba", "Dataset004_Hippo", "2d", [64, 64]) is None
    message = shortfall_message(estimate, int(23.6 * GB), "nnUNetTrainerLoGVMamba_StageTopology",
                                "Dataset004_Hippo", "2d", [64, 64])
    assert "needs about 30 GB" in message and "has 23.6 GB" in message
    assert "plan -d 4 -c 2d --gpu-memory 23 -tr nnUNetTrainerLoGVMamba_StageTopology" in message
    assert device_memory_bytes(torch.device("cpu")) is None
    assert [round_down(v) for v in (23.65, 0.0234, 40.0, 8)] == [23, 0.023, 40, 8]

    class Properties:
        total_memory = 25_393_692_672

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    assert device_memory_bytes(torch.device("cuda", 0)) == 25_393_692_672


def test_doctor_and_profile_print_the_estimate(capsys):
    from logvmamba_nnunet.cli.doctor import check_memory_estimate
    from logvmamba_nnunet.cli.main import main
    from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans
    from logvmamba_nnunet.profiling.memory_estimate import estimate_configuration

    expected = estimate_configuration(nnUNetTrainerLoGVMamba, synthetic_plans([32, 32, 32]), "synthetic", 1, 3,
                                      "cuda").total
    check = check_memory_estimate((32, 32, 32))
    assert check.ok and f"patch 32x32x32, batch 2: {expected / GB:.1f} GB" in check.detail
    assert main(["profile", "--patch", "32", "32", "32", "--classes", "3", "-tr", "nnUNetTrainerLoGVMamba"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| nnUNetTrainerLoGVMamba"))
    assert row.rstrip(" |").endswith(f"{expected / 1e9:.1f}")

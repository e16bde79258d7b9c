"""Checkpoints written atomically: nnU-Net's checkpoint dict, a temporary file renamed into place, and a kill at any
moment leaves the previous checkpoint loadable; end to end, ``nnUNetv2_train`` killed while writing a checkpoint or
in the middle of an epoch resumes with ``--c``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

import tests.ext_trainers_for_tests.reliability_trainers as reliability_trainers
from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.checkpoints import atomic_file, nonfinite_tensors, partial_files
from tests.ext_trainers_for_tests.reliability_trainers import PAUSE_ENV
from tests.plans_factory import DATASET_JSON, plans


def test_atomic_file_replaces_the_target_only_when_complete(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    with atomic_file(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".checkpoint.pth.")
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["checkpoint.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like a file torch.save creates, not mkstemp's 0600


def test_atomic_file_leaves_the_target_on_error_or_without_writing(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    with pytest.raises(OSError), atomic_file(target) as temporary:
        temporary.write_bytes(b"half")
        raise OSError("disk full")
    with atomic_file(target):
        pass  # nothing written (e.g. checkpointing disabled): no empty file replaces the target
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pth"]


def test_stale_partial_files_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    stale = tmp_path / ".checkpoint_latest.pth.0123abcd.partial"
    other = tmp_path / ".checkpoint_best.pth.0123abcd.partial"
    stale.write_bytes(b"killed")
    other.write_bytes(b"killed")
    assert partial_files(target) == [stale]
    with atomic_file(target) as temporary:
        temporary.write_bytes(b"new")
    assert not stale.exists() and other.exists() and target.read_bytes() == b"new"


KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from logvmamba_nnunet.nnunet.checkpoints import atomic_file

target, marker = Path(sys.argv[1]), Path(sys.argv[2])
with atomic_file(target) as temporary, open(temporary, "wb") as handle:
    handle.write(b"PK half of a checkpoint")
    handle.flush()
    marker.write_text(str(temporary))
    time.sleep(600)
"""


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"exited with {process.returncode} before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)


def test_sigkill_during_the_write_keeps_the_previous_checkpoint(tmp_path):
    target, marker = tmp_path / "checkpoint_latest.pth", tmp_path / "writing"
    torch.save({"current_epoch": 3, "w": torch.ones(2)}, target)
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)])
    try:
        wait_for(marker, process, 120)
    finally:
        process.kill()
        process.wait()
    assert torch.load(target, weights_only=False)["current_epoch"] == 3
    assert partial_files(target) == [Path(marker.read_text())]


def make_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainer = reliability_trainers.nnUNetTrainerLoGVMamba_Checkpoints_Tiny(plans(), "2d", 0, dict(DATASET_JSON),
                                                                          torch.device("cpu"))
    trainer.network = nn.Conv2d(1, 3, 3, padding=1)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
    return trainer


def test_save_checkpoint_writes_nnunets_checkpoint(tmp_path, monkeypatch):
    """The plugin's checkpoint is the dict nnU-Net's own save_checkpoint writes, key by key and tensor by tensor."""
    trainer = make_trainer(tmp_path, monkeypatch)
    trainer.current_epoch, trainer._best_ema = 4, 0.5
    ours, theirs = tmp_path / "ours.pth", tmp_path / "theirs.pth"
    trainer.save_checkpoint(str(ours))
    nnUNetTrainer.save_checkpoint(trainer, str(theirs))
    a, b = (torch.load(p, weights_only=False) for p in (ours, theirs))
    assert a.keys() == b.keys() and a["current_epoch"] == 5 and a["trainer_name"] == type(trainer).__name__
    for key in a:
        if key == "network_weights":
            assert all(torch.equal(a[key][name], b[key][name]) for name in b[key])
        elif key != "optimizer_state":
            assert a[key] == b[key], key
    assert sorted(os.listdir(tmp_path)) == ["ours.pth", "results", "theirs.pth"]


def test_save_checkpoint_keeps_nnunets_conditions(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch)
    target = tmp_path / "checkpoint.pth"
    trainer.disable_checkpointing = True
    trainer.save_checkpoint(str(target))
    trainer.disable_checkpointing, trainer.local_rank = False, 1
    trainer.save_checkpoint(str(target))
    assert os.listdir(tmp_path) == ["results"]
    log = Path(trainer.log_file).read_text()
    assert "No checkpoint written, checkpointing is disabled" in log


def test_save_checkpoint_refuses_nonfinite_weights(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, monkeypatch)
    target = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(target))
    before = target.read_bytes()
    with torch.no_grad():
        trainer.network.bias[1] = float("inf")
    assert nonfinite_tensors(trainer.network.state_dict()) == ["bias"]
    trainer.save_checkpoint(str(target))
    assert target.read_bytes() == before
    assert f"{target} not written: 1 weight tensor(s) hold nan/inf values (e.g. bias)" in \
        Path(trainer.log_file).read_text()


# --- end to end: nnUNetv2_train killed with SIGKILL, resumed with --c ------------------------------------------

DATASET_ID = 893
TRAINER = "nnUNetTrainerLoGVMamba_Checkpoints_Tiny"


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def kill_when_paused(command: list[str], env: dict[str, str], marker: Path) -> None:
    """Start ``command``, wait until it writes ``marker`` (the trainer pauses right after), SIGKILL its process
    group (nnU-Net's data-loader workers included)."""
    log = marker.with_suffix(".log")
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(marker, process, 600)
    except AssertionError as error:
        raise AssertionError(f"{error}; its output:\n{log.read_text()[-3000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


TRAIN = ["nnUNetv2_train", str(DATASET_ID), "2d", "-tr", TRAINER, "-device", "cpu"]


def resume_and_finish(env: dict[str, str], fold: int, folder: Path) -> None:
    resumed = run(TRAIN[:3] + [str(fold)] + TRAIN[3:] + ["--c"], env)
    assert "Epoch 0\n" not in resumed.stdout and "Epoch 1\n" in resumed.stdout and "Epoch 2\n" in resumed.stdout
    final = torch.load(folder / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 3
    assert not (folder / "checkpoint_latest.pth").exists() and not list(folder.glob(".*.partial"))
    assert (folder / "validation" / "summary.json").is_file()


@pytest.mark.e2e
def test_killed_training_resumes(nnunet_env, tmp_path):
    """Fold 0 is killed halfway through writing its second checkpoint_latest.pth, fold 1 in the first iteration
    of epoch 1; both resume from the checkpoint written after epoch 0 and finish."""
    env = nnunet_env
    make_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, dims=2, num_train=5, num_test=0, size=(40, 48))
    run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "2"], env)
    results = Path(env["nnUNet_results"]) / f"Dataset{DATASET_ID}_LoGVMambaSynthetic" / \
        f"{TRAINER}__nnUNetPlans__2d"

    marker = tmp_path / "writing"
    kill_when_paused(TRAIN[:3] + ["0"] + TRAIN[3:], {**env, PAUSE_ENV: f"checkpoint:{marker}"}, marker)
    latest = results / "fold_0" / "checkpoint_latest.pth"
    partial = Path(marker.read_text())
    assert partial.parent == latest.parent and partial != latest and partial.exists()
    checkpoint = torch.load(latest, map_location="cpu", weights_only=False)  # the previous one, complete
    assert checkpoint["current_epoch"] == 1 and checkpoint["trainer_name"] == TRAINER
    resume_and_finish(env, 0, results / "fold_0")

    marker = tmp_path / "training"
    kill_when_paused(TRAIN[:3] + ["1"] + TRAIN[3:], {**env, PAUSE_ENV: f"iteration:{marker}"}, marker)
    assert torch.load(results / "fold_1" / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 1
    resume_and_finish(env, 1, results / "fold_1")

"""The logvmamba-nnunet command: help, doctor, ext-path, make-dataset, and the demo's refusal to overwrite."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from logvmamba_nnunet.cli import demo
from logvmamba_nnunet.cli.main import SUBCOMMANDS, build_parser, main
from logvmamba_nnunet.data.safe_output import MARKER
from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.discovery import ext_trainer_folder

CLI = [sys.executable, "-m", "logvmamba_nnunet.cli.main"]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: logvmamba-nnunet " + command in capsys.readouterr().out


def test_doctor_reports_torch_backend_and_discoverable_trainers(nnunet_env):
    result = subprocess.run(CLI + ["doctor"], env=nnunet_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    in_use = next(line for line in result.stdout.splitlines() if "scan backend in use" in line)
    assert "torch (on cpu)" in in_use and "mamba-ssm's CUDA kernel is not used" in in_use
    mamba = next(line for line in result.stdout.splitlines() if "scan backend mamba_ssm" in line)
    assert "unavailable" in mamba and "pip install" in mamba
    discovery = next(line for line in result.stdout.splitlines() if "trainer discovery" in line)
    assert discovery.startswith("[  ok]") and "nnUNetTrainerLoGVMamba" in discovery


def test_doctor_fails_with_a_fix_when_trainers_are_hidden(nnunet_env):
    env = {**nnunet_env, "nnUNet_extTrainer": "", "LOGVMAMBA_NNUNET_NO_AUTO_DISCOVERY": "1"}
    result = subprocess.run(CLI + ["doctor"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "FAIL] trainer discovery" in result.stdout
    assert "fix: export nnUNet_extTrainer=$(logvmamba-nnunet ext-path --value)" in result.stdout


def test_ext_path(capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", "/mine")
    assert main(["ext-path"]) == 0
    assert capsys.readouterr().out.strip() == ext_trainer_folder()
    assert main(["ext-path", "--value"]) == 0
    assert capsys.readouterr().out.strip() == os.pathsep.join(["/mine", ext_trainer_folder()])


def test_make_dataset_3d_and_refusal(tmp_path, capsys):
    args = ["make-dataset", "-d", "11", "--raw-dir", str(tmp_path), "--num-train", "2", "--num-test", "1",
            "--size", "16", "20", "18"]
    assert main(args) == 0
    folder = tmp_path / "Dataset011_LoGVMambaSynthetic"
    import SimpleITK

    image = SimpleITK.ReadImage(str(folder / "imagesTr" / "LoGVMambaSynthetic_tr000_0000.nii.gz"))
    labels = SimpleITK.GetArrayFromImage(
        SimpleITK.ReadImage(str(folder / "labelsTr" / "LoGVMambaSynthetic_tr000.nii.gz")))
    assert SimpleITK.GetArrayFromImage(image).shape == (16, 20, 18) == labels.shape
    assert set(np.unique(labels)) == {0, 1, 2}
    assert SimpleITK.GetArrayFromImage(image).std() > 0
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numTraining"] == 2 and dataset["labels"]["lesion"] == 2
    assert len(list((folder / "imagesTs").iterdir())) == 1
    before = (folder / "labelsTr" / "LoGVMambaSynthetic_tr000.nii.gz").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--seed", "5"]) == 0
    assert (folder / "labelsTr" / "LoGVMambaSynthetic_tr000.nii.gz").read_bytes() != before


def test_make_dataset_2d_rgb(tmp_path):
    folder = make_synthetic_dataset(tmp_path, 12, dims=2, num_train=2, num_test=0, size=(30, 41))
    from PIL import Image

    image = np.asarray(Image.open(folder / "imagesTr" / "LoGVMambaSynthetic_tr000_0000.png"))
    labels = np.asarray(Image.open(folder / "labelsTr" / "LoGVMambaSynthetic_tr000.png"))
    assert image.shape == (30, 41, 3) and labels.shape == (30, 41)
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.max() > 0


def test_overwrite_never_touches_foreign_folders(tmp_path):
    foreign = tmp_path / "Dataset013_LoGVMambaSynthetic"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not created by logvmamba-nnunet"):
        make_synthetic_dataset(tmp_path, 13, overwrite=True)
    assert (foreign / "precious.txt").read_text() == "user data"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        make_synthetic_dataset(tmp_path, 14, dims=4)
    with pytest.raises(ValueError, match="size must have 3 entries"):
        make_synthetic_dataset(tmp_path, 14, size=(16, 16))
    (tmp_path / "Dataset014_Other").mkdir()
    with pytest.raises(FileExistsError, match="already used by Dataset014_Other"):
        make_synthetic_dataset(tmp_path, 14)


def test_demo_refuses_existing_results_and_keeps_them(tmp_path, capsys):
    """A second demo run into the same folder fails clearly and leaves the first results intact."""
    output = tmp_path / "demo"
    output.mkdir()
    (output / MARKER).write_text("")
    (output / "dice_table.txt").write_text("first results")
    args = build_parser().parse_args(["demo", "-o", str(output)])
    assert isinstance(args, argparse.Namespace)
    assert demo.run(args) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (output / "dice_table.txt").read_text() == "first results"
    assert sorted(p.name for p in output.iterdir()) == sorted([MARKER, "dice_table.txt"])
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]


def test_dice_table_from_nnunet_summary(tmp_path):
    summary = {"mean": {"1": {"Dice": 0.9}, "2": {"Dice": 0.5}}, "foreground_mean": {"Dice": 0.7}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = demo.dice_table(Path(tmp_path / "summary.json"), {"background": 0, "organ": 1, "lesion": 2})
    assert table.splitlines()[1:] == ["organ         0.9000", "lesion        0.5000", "mean          0.7000"]


def test_epoch_progress_condenses_nnunet_epoch_logs_to_one_line():
    progress = demo.EpochProgress(epochs=6)
    log = ["2026-12-03 14:00:00.000001: ", "2026-12-03 14:00:00.000002: Epoch 2",
           "2026-12-03 14:00:00.000003: Current learning rate: 0.00064",
           "2026-12-03 14:00:31.000001: train_loss -0.4123", "2026-12-03 14:00:33.000001: val_loss -0.5321",
           "2026-12-03 14:00:33.000002: Pseudo dice [np.float32(0.9123), np.float32(0.4567)]",
           "2026-12-03 14:00:33.000003: Epoch time: 33.12 s",
           "2026-12-03 14:00:33.000004: Yayy! New best EMA pseudo Dice: 0.61"]
    shown = [text for text in map(progress, log) if text is not None]
    assert shown == ["epoch 3/6: train loss -0.4123, val loss -0.5321, pseudo Dice per class 0.91 0.46, 33.12 s"]
    plain = demo.EpochProgress()
    for line in ["x: Epoch 0", "x: train_loss 0.5", "x: val_loss nan", "x: Pseudo dice [0.0, nan]"]:
        assert plain(line) is None
    assert plain("x: Epoch time: 9.5 s") == ("epoch 1: train loss 0.5, val loss nan, pseudo Dice per class 0.00 nan, "
                                             "9.5 s")


@pytest.mark.parametrize("extra, message", [
    (["--baseline", "nnUNetTrainerLoGVMamba_Demo"], "a different one"),
    (["--trainer", "none"], "a different one"),
    (["--baseline", "nnUNetTrainerDoesNotExist"], "nnUNetTrainerDoesNotExist"),
])
def test_demo_refuses_bad_trainer_pairs_before_starting(tmp_path, capsys, extra, message):
    args = build_parser().parse_args(["demo", "-o", str(tmp_path / "demo"), *extra])
    assert demo.run(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_trainers_share_one_schedule():
    import logvmamba_nnunet_trainers as trainers

    log, baseline = getattr(trainers, demo.DEMO_TRAINER), getattr(trainers, demo.BASELINE_TRAINER)
    schedule = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch")
    assert [getattr(log, a) for a in schedule] == [getattr(baseline, a) for a in schedule]
    assert issubclass(log, trainers.nnUNetTrainerLoGVMamba) and baseline.learning_rate is None
    assert demo._iterations_of(demo.DEMO_TRAINER) == f"{log.epochs} x {log.iterations_per_epoch}"

"""``logvmamba-nnunet demo``: synthetic data -> plan -> train LoG-VMamba and nnU-Net's default network -> predict ->
evaluate -> compare, with nnU-Net's own commands."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from logvmamba_nnunet.cli.validation import (
    PROG,
    UserInputError,
    reports_user_errors,
    require_at_least,
    require_output_folder,
    user_errors,
)
from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV, with_ext_trainer_folder

DEMO_TRAINER = "nnUNetTrainerLoGVMamba_Demo"
BASELINE_TRAINER = "nnUNetTrainer_Demo"  # nnU-Net's default network and recipe on the same schedule
COMPARE_PREFIX = "compare/fold0"
DEMO_SIZE = (32, 40, 32)  # small enough for a 2-core CPU to train in minutes


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train and evaluate LoG-VMamba on a synthetic 3D dataset (CPU, under 10 minutes)",
        description="Generate a synthetic 3D dataset, then run nnU-Net's stock commands: plan_and_preprocess, "
                    f"train (-tr {DEMO_TRAINER}, a short schedule, and nnU-Net's default network for as many "
                    f"iterations, -tr {BASELINE_TRAINER}), predict the held-out cases and evaluate; print a "
                    "per-class Dice table, then 'logvmamba-nnunet compare' of the two trainers. Everything is "
                    "written under --output.")
    parser.add_argument("-o", "--output", required=True, help="folder for all demo files (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder written by an earlier demo (never any other folder)")
    parser.add_argument("-d", "--dataset-id", type=int, default=987, help="dataset id to use (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default: %(default)s)")
    parser.add_argument("--trainer", default=DEMO_TRAINER, help="trainer to use (default: %(default)s)")
    parser.add_argument("--baseline", default=BASELINE_TRAINER,
                        help="trainer to compare with (default: %(default)s); 'none' skips it")
    parser.add_argument("--num-train", type=int, default=10, help="training cases (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=4, help="held-out test cases (default: %(default)s)")
    parser.set_defaults(func=run)


def _environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"), "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2",
        "nnUNet_compile": "false", "PYTHONUNBUFFERED": "1",
        EXT_TRAINER_ENV: with_ext_trainer_folder(os.environ.get(EXT_TRAINER_ENV)),
        # nnU-Net's console scripts sit next to this interpreter, also when its environment is not activated
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    })
    return env


class EpochProgress:
    """Turns nnU-Net's training output into one line per epoch: feed it every line, print what it returns.

    nnU-Net logs ``<timestamp>: Epoch 3``, ``train_loss -0.41``, ``val_loss -0.45``, ``Pseudo dice [..]`` and
    ``Epoch time: 31.2 s`` on lines of their own; the last one completes an epoch's line.
    """

    _FIELD = re.compile(r": (Epoch \d+|Epoch time:|train_loss|val_loss|Pseudo dice) ?(.*)$")
    _NUMBER = re.compile(r"nan|-?\d+\.\d+(?:e[-+]?\d+)?")

    def __init__(self, epochs: int | None = None):
        self.epochs = epochs
        self._fields: dict[str, str] = {}

    def __call__(self, line: str) -> str | None:
        match = self._FIELD.search(line.rstrip())
        if match is None:
            return None
        key, value = match.groups()
        if key.startswith("Epoch ") and key != "Epoch time:":
            self._fields = {"epoch": key.split()[1]}
            return None
        self._fields[key] = value
        if key != "Epoch time:":
            return None
        epoch = f"{int(self._fields.get('epoch', -1)) + 1}" + (f"/{self.epochs}" if self.epochs else "")
        dice = " ".join(f"{float(v):.2f}" for v in self._NUMBER.findall(self._fields.get("Pseudo dice", "")))
        return (f"epoch {epoch}: train loss {self._fields.get('train_loss', '?')}, val loss "
                f"{self._fields.get('val_loss', '?')}, pseudo Dice per class {dice or '?'}, {value}")


def _run_step(title: str, command: list[str], env: dict[str, str], log_file: Path,
              summarize: EpochProgress | None = None) -> None:
    """Run one stock command, writing its output to ``log_file`` and streaming it to the console (with
    ``summarize``, only the lines it returns)."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    with open(log_file, "w") as log, subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            log.write(line)
            lines.append(line)
            shown = line if summarize is None else summarize(line)
            if shown is not None:
                print(f"  {shown.rstrip()}", flush=True)
    if process.returncode != 0:
        tail = "".join(lines[-30:])
        raise RuntimeError(f"step '{title}' failed with exit code {process.returncode}; its last output:\n{tail}")
    print(f"=== {title}: done in {time.perf_counter() - start:.0f} s", flush=True)


def dice_table(summary_file: Path, label_names: dict[str, int]) -> str:
    """Per-class Dice (mean over test cases) from nnU-Net's evaluation summary.json, as text."""
    summary = json.loads(summary_file.read_text())
    names = {str(v): k for k, v in label_names.items()}
    rows = [f"{'class':<12} {'Dice':>7}"]
    for label, metrics in summary["mean"].items():
        rows.append(f"{names.get(label.strip('()').rstrip(','), label):<12} {metrics['Dice']:>7.4f}")
    rows.append(f"{'mean':<12} {summary['foreground_mean']['Dice']:>7.4f}")
    return "\n".join(rows)


def check_arguments(args: argparse.Namespace) -> None:
    """Everything the demo can check before it starts (it runs for minutes): raise UserInputError."""
    from logvmamba_nnunet.data.safe_output import check_destination

    with user_errors():
        check_destination(Path(args.output).resolve(), args.overwrite, "demo output folder")
    require_output_folder(Path(args.output).resolve().parent, "demo output folder")
    if not 1 <= args.dataset_id <= 999:
        raise UserInputError(f"--dataset-id must be between 1 and 999 (nnU-Net's DatasetXXX), got {args.dataset_id}")
    require_at_least("--num-train", args.num_train, 5, "nnU-Net's 5-fold cross-validation needs 5 training cases")
    require_at_least("--num-test", args.num_test, 1, "the demo evaluates on the held-out cases")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserInputError("--device cuda, but torch sees no CUDA device; use --device cpu, or install a "
                                 "CUDA build of torch (logvmamba-nnunet doctor shows what is installed)")
    for name, default in ((args.trainer, DEMO_TRAINER), (args.baseline, BASELINE_TRAINER)):
        if name not in (default, "none"):
            _check_trainer(name)
    if args.trainer in (args.baseline, "none"):
        raise UserInputError(f"--trainer {args.trainer} and --baseline {args.baseline}: give the trainer to "
                             "demonstrate and a different one to compare it with (or --baseline none)")


def _check_trainer(name: str) -> None:
    """UserInputError unless nnU-Net's lookup finds trainer ``name`` with the environment the demo gives it."""
    from logvmamba_nnunet.profiling.profile import find_trainer_class

    previous = os.environ.get(EXT_TRAINER_ENV)
    os.environ[EXT_TRAINER_ENV] = with_ext_trainer_folder(previous)
    try:
        with user_errors():
            find_trainer_class(name)
    finally:
        if previous is None:
            del os.environ[EXT_TRAINER_ENV]
        else:
            os.environ[EXT_TRAINER_ENV] = previous


@reports_user_errors("demo", status=1)
def run(args: argparse.Namespace) -> int:
    from logvmamba_nnunet.data.safe_output import staged_folder
    from logvmamba_nnunet.data.synthetic import make_synthetic_dataset

    check_arguments(args)
    destination = Path(args.output).resolve()
    start = time.perf_counter()
    try:
        with staged_folder(destination, args.overwrite, "demo output folder") as root:
            env = _environment(root)
            logs = root / "logs"
            logs.mkdir()
            print(f"=== generating a synthetic 3D dataset ({args.num_train} training, {args.num_test} test cases)")
            dataset = make_synthetic_dataset(root / "nnUNet_raw", args.dataset_id, num_train=args.num_train,
                                             num_test=args.num_test, dims=3, size=DEMO_SIZE)
            ident = str(args.dataset_id)
            _run_step("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", ident, "-c", "3d_fullres",
                                              "-np", "2", "--verify_dataset_integrity"], env, logs / "plan.log")
            trainers = [args.trainer] + ([] if args.baseline == "none" else [args.baseline])
            for trainer in trainers:
                _run_step(f"train fold 0 of {trainer}", [
                    "nnUNetv2_train", ident, "3d_fullres", "0", "-tr", trainer, "-device", args.device],
                    env, logs / f"train_{trainer}.log", EpochProgress(_epochs_of(trainer)))
            predictions = root / "predictions"
            _run_step("predict held-out cases", [
                "nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(predictions), "-d", ident,
                "-c", "3d_fullres", "-f", "0", "-tr", args.trainer, "-device", args.device,
                "-npp", "1", "-nps", "1"], env, logs / "predict.log")
            results = next((root / "nnUNet_results").glob(f"Dataset{args.dataset_id:03d}_*"))
            plans_dir = results / f"{args.trainer}__nnUNetPlans__3d_fullres"
            _run_step("evaluate", [
                "nnUNetv2_evaluate_folder", str(dataset / "labelsTs"), str(predictions),
                "-djfile", str(plans_dir / "dataset.json"), "-pfile", str(plans_dir / "plans.json"),
                "-np", "1"], env, logs / "evaluate.log")
            table = dice_table(predictions / "summary.json",
                               json.loads((dataset / "dataset.json").read_text())["labels"])
            (root / "dice_table.txt").write_text(table + "\n")
            if len(trainers) > 1:
                (root / COMPARE_PREFIX).parent.mkdir()
                _run_step("compare on the validation cases of fold 0", [
                    sys.executable, "-m", "logvmamba_nnunet.cli.main", "compare", "-d", ident, "-c", "3d_fullres",
                    "-tr", *trainers, "-o", str(root / COMPARE_PREFIX)], env, logs / "compare.log",
                    summarize=lambda line: None)
    except FileExistsError as error:  # the output folder appeared meanwhile
        raise UserInputError(str(error)) from None
    except RuntimeError as error:  # a step failed; the message ends with that step's last output lines
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    print(f"\nDice on {args.num_test} held-out synthetic cases ({args.trainer}, fold 0):\n{table}")
    print(f"\neverything is in {destination}: nnUNet_raw/, nnUNet_preprocessed/, nnUNet_results/ (models, training "
          "logs, progress.png), predictions/ (segmentations + summary.json), logs/, dice_table.txt"
          + (f", {COMPARE_PREFIX}.*" if len(trainers) > 1 else ""))
    if len(trainers) > 1:
        print(f"\n{' vs '.join(trainers)}, the same {_iterations_of(args.trainer)} training iterations on the same "
              "data; Dice on the validation cases of fold 0:\n")
        print((destination / f"{COMPARE_PREFIX}.md").read_text().rstrip())
        print(f"\nfigure: {destination / COMPARE_PREFIX}.png")
    print(f"\nwall time: {time.perf_counter() - start:.0f} s")
    return 0


def _trainer_attribute(name: str, attribute: str) -> int | None:
    """A schedule attribute (``epochs``, ``iterations_per_epoch``) of one of this package's trainers, else None."""
    import logvmamba_nnunet_trainers

    return getattr(getattr(logvmamba_nnunet_trainers, name, None), attribute, None)


def _epochs_of(name: str) -> int | None:
    return _trainer_attribute(name, "epochs")


def _iterations_of(name: str) -> str:
    epochs, iterations = _trainer_attribute(name, "epochs"), _trainer_attribute(name, "iterations_per_epoch")
    return f"{epochs} x {iterations}" if epochs and iterations else "number of"

"""Misuse matrix of the ``logvmamba-nnunet`` commands: every bad input ends with one line on stderr that names the
problem and the fix, a non-zero exit status, no traceback, and no file created or changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
import torch
from PIL import Image

from logvmamba_nnunet.cli.main import main
from logvmamba_nnunet.data.safe_output import MARKER

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    image = SimpleITK.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    SimpleITK.WriteImage(image, str(path))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def labels(shape=(8, 10, 12), value=1) -> np.ndarray:
    array = np.zeros(shape, np.uint8)
    array[2:5, 3:7, 4:9] = value
    return array


def setup(root: Path) -> None:
    """A valid 3D evaluation (pred/, ref/, dataset.json), its 2D PNG twin (pred2d/, ref2d/, dataset2d.json), and
    folders the bad inputs below spoil."""
    for name in ("pred", "ref", "pred2d", "ref2d", "raw", "preprocessed", "results"):
        (root / name).mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    (root / "dataset2d.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".png"}))
    write_nifti(root / "ref" / "case.nii.gz", labels())
    write_nifti(root / "pred" / "case.nii.gz", labels())
    for folder in ("pred2d", "ref2d"):
        Image.fromarray(labels()[0] * 1).save(root / folder / "case.png")
    (root / "a_file").write_text("not a folder")
    (root / "results" / "evaluation.json").write_text("earlier results")
    demo = root / "demo"
    demo.mkdir()
    (demo / MARKER).write_text("")
    (demo / "dice_table.txt").write_text("first results")
    (root / "raw" / "Dataset014_Other").mkdir()
    (root / "preprocessed" / "Dataset042_Mine").mkdir()


@dataclass
class Case:
    id: str
    args: list[str]
    problem: str  # the error line names the problem ...
    fix: str  # ... and the fix
    prepare: str = ""  # what setup() does not have: applied before the snapshot
    env: dict[str, str | None] | None = None


def prepare(root: Path, what: str) -> None:
    if what == "truncated nifti":
        truncate(root / "pred" / "case.nii.gz")
    elif what == "2d nifti":
        write_nifti(root / "pred" / "case.nii.gz", labels()[0])
    elif what == "label 7":
        write_nifti(root / "pred" / "case.nii.gz", labels(value=7))
    elif what == "spacing":
        write_nifti(root / "pred" / "case.nii.gz", labels(), spacing=(1.0, 1.0, 3.0))
    elif what == "truncated png":
        truncate(root / "pred2d" / "case.png")
    elif what == "bad json":
        (root / "dataset.json").write_text('{"labels": {"background": 0,')
    elif what == "no file_ending":
        (root / "dataset.json").write_text(json.dumps({"labels": LABELS}))
    elif what == "no dataset.json":
        (root / "dataset.json").unlink()


def evaluate(*extra: str, pred: str = "pred", ref: str = "ref", dataset: str = "dataset.json") -> list[str]:
    return ["evaluate", f"{{root}}/{pred}", f"{{root}}/{ref}", "-d", f"{{root}}/{dataset}", "-np", "1", *extra]


RAW = {"nnUNet_raw": "{root}/raw", "nnUNet_preprocessed": "{root}/preprocessed", "nnUNet_results": "{root}/results"}
NO_ENV = {"nnUNet_raw": None, "nnUNet_preprocessed": None, "nnUNet_results": None}

CASES = [
    # evaluate
    Case("evaluate-missing-predictions", evaluate(pred="nowhere"), "prediction folder", "does not exist"),
    Case("evaluate-reference-is-a-file", evaluate(ref="a_file"), "is a file, not a folder", "labelsTr or labelsTs"),
    Case("evaluate-missing-dataset-json", evaluate(), "dataset.json not found", "-d", "no dataset.json"),
    Case("evaluate-invalid-dataset-json", evaluate(), "is not valid JSON", "dataset.json", "bad json"),
    Case("evaluate-dataset-json-without-file-ending", evaluate(), "no 'file_ending'", "dataset.json of the dataset",
         "no file_ending"),
    Case("evaluate-truncated-nifti", evaluate(), "truncated or damaged", "write or copy it again",
         "truncated nifti"),
    Case("evaluate-truncated-png", evaluate(pred="pred2d", ref="ref2d", dataset="dataset2d.json"),
         "cannot read", "write or copy it again", "truncated png"),
    Case("evaluate-wrong-dimensionality", evaluate(), "2D", "on their reference's grid", "2d nifti"),
    Case("evaluate-label-not-in-dataset-json", evaluate(), "label value(s) [7]", "pass the dataset.json",
         "label 7"),
    Case("evaluate-mismatched-spacing", evaluate(), "spacing", "on their reference's grid", "spacing"),
    Case("evaluate-zero-nsd-tolerance", evaluate("--nsd-tolerance-mm", "0"), "--nsd-tolerance-mm",
         "greater than 0"),
    Case("evaluate-output-under-a-file", evaluate("-o", "{root}/a_file/report"), "is a file, not a folder",
         "choose another location"),
    # make-dataset
    Case("make-dataset-without-nnUNet_raw", ["make-dataset", "-d", "11"], "nnUNet_raw is not set",
         "--raw-dir", env=NO_ENV),
    Case("make-dataset-id-out-of-range", ["make-dataset", "-d", "1000", "--raw-dir", "{root}/raw"],
         "dataset id must be in 1..999", "1000"),
    Case("make-dataset-wrong-size-dimensionality",
         ["make-dataset", "-d", "11", "--raw-dir", "{root}/raw", "--size", "16", "16"], "size must have 3 entries",
         "[16, 16]"),
    Case("make-dataset-bad-name", ["make-dataset", "-d", "11", "--raw-dir", "{root}/raw", "--name", "my data"],
         "not valid for nnU-Net", "use letters, digits"),
    Case("make-dataset-id-taken", ["make-dataset", "-d", "14", "--raw-dir", "{root}/raw"],
         "already used by Dataset014_Other", "choose another id"),
    Case("make-dataset-raw-dir-is-a-file", ["make-dataset", "-d", "11", "--raw-dir", "{root}/a_file"],
         "is a file, not a folder", "choose another location"),
    # convert
    Case("convert-missing-input", ["convert", "acdc", "{root}/nowhere", "-o", "{root}/out"], "does not exist",
         "as downloaded"),
    Case("convert-without-nnUNet_raw", ["convert", "brats2020", "{root}/ref"], "set nnUNet_raw",
         "--output", env=NO_ENV),
    Case("convert-bad-dataset-id", ["convert", "acdc", "{root}/ref", "-d", "abc"], "neither a dataset id",
         "Dataset027_ACDC", env=RAW),
    Case("convert-into-its-input", ["convert", "acdc", "{root}/ref", "-o", "{root}/ref"], "contains it",
         "elsewhere"),
    # profile
    Case("profile-without-plan", ["profile"], "give a dataset", "--patch"),
    Case("profile-without-nnUNet_preprocessed", ["profile", "-d", "42"], "nnUNet_preprocessed is not set",
         "export nnUNet_preprocessed", env=NO_ENV),
    Case("profile-unknown-dataset-id", ["profile", "-d", "4242"], "unknown dataset id 4242",
         "Dataset042_Mine", env=RAW),
    Case("profile-wrong-patch-dimensionality", ["profile", "--patch", "16"], "2 or 3 positive sizes", "Z Y X"),
    Case("profile-out-in-missing-folder", ["profile", "--patch", "16", "16", "--out", "{root}/nowhere/t.md"],
         "does not exist", "create it"),
    # demo (checked before anything runs)
    Case("demo-existing-results", ["demo", "-o", "{root}/demo"], "already exists and is not empty",
         "--overwrite"),
    Case("demo-too-few-cases", ["demo", "-o", "{root}/new_demo", "--num-train", "2"], "--num-train",
         "5 training cases"),
    # argument errors: one line too, no usage block
    Case("evaluate-without-folders", ["evaluate"], "required: pred_folder, ref_folder", "--help"),
    Case("make-dataset-non-integer-id", ["make-dataset", "-d", "x"], "invalid int value", "--help"),
]
if not torch.cuda.is_available():
    CASES.append(Case("demo-cuda-without-gpu", ["demo", "-o", "{root}/new_demo", "--device", "cuda"],
                      "no CUDA device", "--device cpu"))


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under ``root`` with its mtime, size and (files) content."""
    state = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        state[str(path.relative_to(root))] = (stat.st_mtime_ns, stat.st_size,
                                              path.read_bytes() if path.is_file() else None)
    return state


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_matrix_has_at_least_15_bad_inputs_across_the_commands():
    assert len(CASES) >= 15
    assert {case.args[0] for case in CASES} >= {"evaluate", "make-dataset", "convert", "profile", "demo"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_actionable_line(case: Case, tmp_path: Path, monkeypatch, capsys):
    root = tmp_path
    setup(root)
    prepare(root, case.prepare)
    for name, value in {"nnUNet_raw": None, "nnUNet_preprocessed": None, "nnUNet_results": None,
                        **(case.env or {})}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(root=root))
    argv = [a.format(root=root) for a in case.args]
    before = snapshot(root)
    status, out, err = run_in_process(argv, capsys)
    assert status not in (0, None), (status, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    command = " ".join(argv[:2]) if argv and argv[0] == "convert" else (argv[0] if argv else "")
    assert line.startswith(f"logvmamba-nnunet {command}: error: "), line
    assert case.problem in line and case.fix in line, line
    assert "Traceback" not in err + out
    assert snapshot(root) == before


def test_misuse_in_a_real_process(tmp_path: Path):
    """Through the console entry point: exit status 2, one line on stderr, nothing on stdout."""
    setup(tmp_path)
    truncate(tmp_path / "pred" / "case.nii.gz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    before = snapshot(tmp_path)
    for argv, expected in ((["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-d",
                             str(tmp_path / "dataset.json"), "-np", "1"], "truncated or damaged"),
                           (["make-dataset", "-d", "11"], "nnUNet_raw is not set")):
        result = subprocess.run([sys.executable, "-m", "logvmamba_nnunet.cli.main", *argv], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr
        assert result.stdout == ""
    assert snapshot(tmp_path) == before


def test_a_valid_evaluation_replaces_earlier_reports_only_when_complete(tmp_path: Path, capsys):
    """The outputs are written under temporary names and moved; a failing evaluation leaves the earlier ones."""
    setup(tmp_path)
    out = tmp_path / "results" / "evaluation"
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-d", str(tmp_path / "dataset.json"),
            "-np", "1", "-o", str(out)]
    assert main(args) == 0
    written = sorted(p.name for p in out.parent.iterdir())
    assert written == ["evaluation.json", "evaluation_per_case.csv", "evaluation_summary.csv"]
    first = (out.parent / "evaluation.json").read_text()
    assert json.loads(first)["summary"]["per_target"]["organ"]["dice"]["mean"] == 1.0
    write_nifti(tmp_path / "pred" / "case.nii.gz", labels(value=9))
    capsys.readouterr()
    assert main(args) == 2
    assert "label value(s) [9]" in capsys.readouterr().err
    assert (out.parent / "evaluation.json").read_text() == first
    assert sorted(p.name for p in out.parent.iterdir()) == written

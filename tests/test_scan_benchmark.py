"""The scan benchmark script runs end to end on CPU (its ``--quick`` dry run), parity checks included."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scan.py"


def load_script():
    return load_benchmark("scan.py", "scan_benchmark")


def test_quick_run_prints_parity_and_table() -> None:
    # 1 MiB: the materialised algorithm's forward+backward is estimated above it and must be skipped.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--max-gib", str(1 / 1024)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    parity_rows = [line for line in lines if line.startswith("| ") and line.endswith(("| yes |", "| NO |"))]
    assert len(parity_rows) == 6 and all(row.endswith("| yes |") for row in parity_rows)
    table_rows = [line for line in lines if line.startswith("| (1, 8, 256) |")]
    assert len(table_rows) == 6
    rows = {(row.split("|")[3].strip(), row.split("|")[4].strip()): row for row in table_rows}
    assert "skipped (memory)" in rows[("forward+backward", "materialised")]
    for key in [("forward", "torch"), ("forward", "loop"), ("forward+backward", "torch")]:
        seconds = float(rows[key].split("|")[5])
        memory = float(rows[key].split("|")[6])
        assert seconds > 0 and memory >= 0


def test_shape_and_choice_parsing() -> None:
    script = load_script()
    assert script._parse_shapes("2x64x4096,1x8x16") == ((2, 64, 4096), (1, 8, 16))
    with pytest.raises(argparse.ArgumentTypeError, match="BxDxL"):
        script._parse_shapes("2x64")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown"):
        script._parse_choices(script.ALGORITHMS)("torch,fast")
    assert script._parse_threads("1,2") == (1, 2)


def test_memory_guard_skips_the_materialised_algorithm_at_the_largest_shape() -> None:
    script = load_script()
    largest = (2, 384, 32768)
    assert script.estimated_bytes("materialised", "forward", largest) > 4 * 2**30
    assert script.estimated_bytes("torch", "forward+backward", largest) < 4 * 2**30


def test_compare_ref_times_the_scan_against_a_git_revision() -> None:
    root = SCRIPT.parents[1]
    has_git = shutil.which("git") is not None and subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, check=False
    ).returncode == 0
    if not has_git:
        pytest.skip("needs a git checkout")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--compare-ref", "HEAD", "--quick"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line.split("|") for line in lines if line.startswith("| (1, 8, 256) |")]
    assert [row[2].strip() for row in rows] == ["at HEAD", "working tree", "speed-up"]
    assert all(float(cell) > 0 for row in rows[:2] for cell in row[3:7])
    assert all(cell.strip().endswith("x") for cell in rows[2][3:7])
    difference = next(line for line in lines if line.startswith("largest relative difference"))
    assert float(difference.rsplit(" ", 1)[1]) < 1e-5

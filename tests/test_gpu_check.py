"""The GPU check script (benchmarks/gpu_check.py): its CPU dry run, its watchdog and its byte count."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load_script():
    return load_benchmark("gpu_check.py", "gpu_check")


def _run(*arguments: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=timeout)


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| check")]


def test_dry_run_prints_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    completed = _run("--dry-run", "--skip-network", "--out", str(out), timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    written = out.read_text()
    assert written in completed.stdout
    rows = _table_rows(written)
    backends = ["torch", "triton"] if _triton_importable() else ["torch"]
    parity = [row for row in rows if row[0].startswith("parity")]
    assert sorted((row[0], row[1]) for row in parity) == sorted(
        (f"parity ({regime})", backend) for regime in ("Mamba init", "large steps, 4 groups")
        for backend in backends)
    assert all(row[-1] == "ok" for row in parity), parity
    timing = [row for row in rows if row[0] == "timing"]
    assert [row[1] for row in timing] == backends
    assert all(" ms (min " in row[3] and " ms (min " in row[4] for row in timing), timing
    assert any(row[0] == "copy bandwidth" and row[3].endswith("GB/s") for row in rows)
    assert any(row[0] == "network" and "skipped" in row[-1] for row in rows)
    assert "ERROR" not in written


def test_watchdog_stops_a_run_past_its_deadline() -> None:
    completed = _run("--dry-run", "--skip-network", "--deadline-s", "0.01", timeout=120)
    assert completed.returncode == 3
    assert "INCOMPLETE: stopped by the watchdog" in completed.stdout


@pytest.mark.e2e
def test_dry_run_times_the_benchmark_network() -> None:
    completed = _run("--dry-run", timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    network = [row for row in _table_rows(completed.stdout) if row[0].startswith("network")]
    assert len(network) == 1
    assert " ms (min " in network[0][4] or network[0][-1] == "network: skipped (not available)", network


def test_ideal_bytes_counts_each_tensor_once() -> None:
    script = _load_script()
    batch, channels, length, state = 2, 3, 5, script.STATE_SIZE
    channel_tensor, state_tensor = 4 * batch * channels * length, 4 * batch * state * length
    # forward: u, delta, z, y and B, C; backward adds u, delta, z, dy, du, ddelta, dz and B, C, dB, dC.
    forward = 4 * channel_tensor + 2 * state_tensor
    assert script.ideal_bytes((batch, channels, length), "forward") == forward
    assert script.ideal_bytes((batch, channels, length), "forward+backward") == (
        forward + 7 * channel_tensor + 4 * state_tensor)


def test_time_call_respects_its_repeat_bounds() -> None:
    script = _load_script()
    calls = []
    settings = script.DRY_RUN_SETTINGS
    bounded = script.replace(settings, seconds_per_case=10.0, max_repeats=4)
    median_ms, min_ms, repeats = script.time_call(lambda: calls.append(1), bounded)
    assert repeats == 4 and len(calls) == 5  # one warm-up call, then the timed ones
    assert 0.0 <= min_ms <= median_ms
    assert script.time_call(lambda: None, script.replace(settings, seconds_per_case=0.0))[2] == 1

"""benchmarks/train_step.py runs on the CPU and prints its table."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def test_train_step_benchmark_prints_table():
    result = subprocess.run([sys.executable, str(SCRIPT), "--patch", "16", "16", "16", "--batch", "1",
                             "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "network" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["nnU-Net default (PlainConvUNet)", "LoG-VMamba U-Net"]
    for row in rows:
        params, step, memory = (float(cell) for cell in row.split("|")[2:5])
        assert params > 0 and step > 0 and memory >= 0

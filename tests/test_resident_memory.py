"""Peak resident-set growth (``profiling/resident_memory.py``), checked against allocations of known size."""

import subprocess
import sys

import numpy as np
import pytest

from logvmamba_nnunet.profiling.resident_memory import (
    peak_growth_bytes,
    peak_resident_set_bytes,
    reset_peak_resident_set,
    resident_set_bytes,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
MiB = 2 ** 20


def touch(n_bytes: int) -> None:
    """Allocate and write ``n_bytes`` (so every page becomes resident), then free them."""
    array = np.empty(n_bytes, dtype=np.uint8)
    array[::4096] = np.random.default_rng().integers(1, 255, size=array[::4096].shape, dtype=np.uint8)
    del array


def test_growth_of_a_known_allocation_is_measured_after_a_larger_earlier_peak():
    touch(400 * MiB)  # an earlier, larger peak must not hide the next one (it would with ru_maxrss)
    growth = peak_growth_bytes(lambda: touch(150 * MiB))
    assert 140 * MiB <= growth <= 190 * MiB


def test_reset_brings_the_peak_down_to_the_current_resident_set():
    touch(300 * MiB)
    assert peak_resident_set_bytes() >= resident_set_bytes() + 250 * MiB
    reset_peak_resident_set()
    assert peak_resident_set_bytes() <= resident_set_bytes() + 20 * MiB


def test_a_fresh_subprocess_of_a_large_parent_measures_its_own_growth():
    keep = np.ones(500 * MiB, dtype=np.uint8)  # a large parent, as the benchmarks' measuring process
    code = ("from logvmamba_nnunet.profiling.resident_memory import peak_growth_bytes\n"
            "from tests.test_resident_memory import touch\n"
            "print(peak_growth_bytes(lambda: touch(100 * 2 ** 20)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 90 * MiB <= int(out.strip().splitlines()[-1]) <= 140 * MiB
    assert keep[-1] == 1

"""Peak resident-set growth of a piece of code on Linux, the CPU counterpart of ``torch.cuda.max_memory_allocated``.

``resource.getrusage(...).ru_maxrss`` cannot measure this: it is the process's all-time peak, and Linux carries it
across ``fork`` + ``exec``, so a fresh subprocess started by a large parent already reports the parent's peak and
a smaller step shows no growth at all. Instead :func:`peak_growth_bytes` resets the kernel's per-process
high-water mark (``/proc/self/clear_refs``, value 5) to the current resident set, runs the code, and reads the
new high-water mark (``VmHWM`` in ``/proc/self/status``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

_PROC_SELF = Path("/proc/self")


def _status_kib(field: str) -> int:
    for line in (_PROC_SELF / "status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; this measurement needs Linux.")


def resident_set_bytes() -> int:
    """Current resident set size of this process (``VmRSS``)."""
    return _status_kib("VmRSS") * 1024


def peak_resident_set_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_resident_set`
    (``VmHWM``)."""
    return _status_kib("VmHWM") * 1024


def reset_peak_resident_set() -> None:
    """Reset the high-water mark ``VmHWM`` to the current resident set (Linux 4.0 or later)."""
    try:
        (_PROC_SELF / "clear_refs").write_text("5")
    except OSError as error:
        raise RuntimeError(f"cannot reset the peak resident set through /proc/self/clear_refs ({error}); this "
                           "measurement needs Linux 4.0 or later.") from error


def peak_growth_bytes(run: Callable[[], object]) -> int:
    """Bytes by which the resident set peaked above its size before ``run()`` while it ran."""
    before = resident_set_bytes()
    reset_peak_resident_set()
    run()
    return max(0, peak_resident_set_bytes() - before)

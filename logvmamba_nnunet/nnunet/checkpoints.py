"""Checkpoints that survive a kill, and the divergence guard of the plugin's trainers.

nnU-Net writes ``checkpoint_latest.pth`` / ``checkpoint_best.pth`` / ``checkpoint_final.pth`` with a plain
``torch.save(checkpoint, filename)``: a process killed during that write (out of memory, a cluster's time limit,
Ctrl-C twice) leaves a truncated file in place of the last good one, and ``nnUNetv2_train --c`` then fails on it.
:func:`atomic_file` makes the write atomic: the checkpoint goes to a temporary file in the same folder, is flushed
to disk, and only then renamed onto the target (``os.replace`` is atomic on POSIX and Windows within one file
system), so the target is always either the previous checkpoint or the new one, complete.

The divergence guard (:class:`DivergenceGuard`) counts consecutive non-finite training losses. A single inf/nan
loss is not divergence: under mixed precision the gradient scaler skips such steps and lowers its scale, so the
weights stay unchanged and training recovers by itself. Several in a row mean the weights themselves are
non-finite (every later loss is then nan) or the run is stuck; :data:`DEFAULT_NONFINITE_PATIENCE` (5) tolerates
the scaler's isolated skips and stops a diverged run within a few iterations, before it writes anything.
:func:`nonfinite_tensors` lets checkpointing refuse weights with nan/inf values, so a diverged run never replaces
the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

PARTIAL_SUFFIX = ".partial"
DEFAULT_NONFINITE_PATIENCE = 5


class TrainingDivergedError(RuntimeError):
    """Raised by a trainer when the training loss has not been finite for too many iterations in a row."""


def _partial_prefix(target: Path) -> str:
    return f".{target.name}."


def partial_files(target: str | Path) -> list[Path]:
    """Temporary files that :func:`atomic_file` left for ``target`` (a process killed mid-write)."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    prefix = _partial_prefix(target)
    return sorted(p for p in target.parent.iterdir()
                  if p.name.startswith(prefix) and p.name.endswith(PARTIAL_SUFFIX))


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform allows opening a folder (POSIX)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; when the block has written it, it replaces ``target``.

    The temporary file is created empty (with the permissions a new file gets, umask applied), flushed and
    fsynced after the block, then ``os.replace``d onto ``target``, and the folder is fsynced. If the block writes
    nothing (the file stays empty), ``target`` is left alone. On an exception the temporary file is removed and
    ``target`` is untouched. Temporary files that an earlier, killed writer left for ``target`` are removed first
    (their names: ``.<target name>.<random>.partial``).
    """
    target = Path(target)
    folder = target.parent
    for stale in partial_files(target):
        with contextlib.suppress(OSError):
            stale.unlink()
    while True:
        temporary = folder / f"{_partial_prefix(target)}{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        if temporary.stat().st_size == 0:
            temporary.unlink()
            return
        with open(temporary, "rb") as handle:  # the writer closed it; fsync reaches its data through any handle
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        _fsync_folder(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def nonfinite_tensors(state_dict: Mapping[str, object]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a nan or an inf."""
    names = []
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).all()):
            names.append(name)
    return names


@dataclass
class DivergenceGuard:
    """Counts consecutive non-finite training losses; :meth:`update` says when training must stop.

    Iterations are given as (epoch, iteration within the epoch), both counted from 0 as nnU-Net counts epochs.
    """

    patience: int = DEFAULT_NONFINITE_PATIENCE
    consecutive: int = 0
    first: tuple[int, int] | None = None
    first_value: float | None = None

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"the number of non-finite losses to tolerate must be >= 1, got {self.patience}.")

    def update(self, loss: float, epoch: int, iteration: int) -> bool:
        """Record one iteration's loss; True when the last ``patience`` losses were all non-finite."""
        if math.isfinite(loss):
            self.consecutive, self.first, self.first_value = 0, None, None
            return False
        if self.consecutive == 0:
            self.first, self.first_value = (epoch, iteration), loss
        self.consecutive += 1
        return self.consecutive >= self.patience

    @property
    def diverged(self) -> bool:
        return self.consecutive >= self.patience


def divergence_message(guard: DivergenceGuard, epoch: int, iteration: int, iterations_per_epoch: int,
                       last_good_checkpoint: str | Path | None, remedies: str) -> str:
    """The one message a diverged training stops with: where, the checkpoint to resume from, what to change."""
    first_epoch, first_iteration = guard.first if guard.first is not None else (epoch, iteration)
    where = f"epoch {epoch}, iteration {iteration} of {iterations_per_epoch}"
    if (first_epoch, first_iteration) != (epoch, iteration):
        where += f"; the first of them at epoch {first_epoch}, iteration {first_iteration}"
    return (f"training diverged: the training loss was not finite ({guard.first_value}) for {guard.consecutive} "
            f"consecutive iterations ({where}); training stopped without saving. "
            f"{resume_sentence(last_good_checkpoint)} Remedies: {remedies}")


def resume_sentence(last_good_checkpoint: str | Path | None) -> str:
    """Where a stopped training can resume from, as a sentence of the divergence messages."""
    if last_good_checkpoint is None:
        return "No checkpoint had been written yet, so there is nothing to resume from."
    return (f"Last good checkpoint (not overwritten): {last_good_checkpoint}; nnUNetv2_train ... --c resumes "
            "from it.")

"""Writing output folders without ever destroying what this package did not create.

A folder is written under a temporary name next to its destination and renamed into place when complete. A
marker file records that this package created it; only such folders may be replaced (with ``overwrite``), and
never a folder without the marker. Output files (:func:`staged_files`) are written under temporary names next to
their destinations and renamed onto them only when all of them are complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

MARKER = ".created_by_logvmamba_nnunet"


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_destination(destination: Path, overwrite: bool, what: str) -> None:
    """Raise FileExistsError unless ``destination`` may be (re)written; see the module docstring."""
    if destination.exists() and not destination.is_dir():
        raise FileExistsError(f"{what} {destination} exists and is not a folder; choose another location.")
    if not is_nonempty_dir(destination):
        return
    if not overwrite:
        raise FileExistsError(f"{what} {destination} already exists and is not empty; nothing was changed. Choose "
                              "another location, or pass --overwrite to replace it.")
    if not (destination / MARKER).exists():
        raise FileExistsError(f"{what} {destination} was not created by logvmamba-nnunet, so it is never replaced, "
                              "even with --overwrite. Move it away yourself or choose another location.")


@contextlib.contextmanager
def staged_folder(destination: Path, overwrite: bool, what: str) -> Iterator[Path]:
    """Yield a temporary folder beside ``destination``; on success it replaces ``destination`` atomically-ish.

    On error the temporary folder is removed and ``destination`` is left untouched.
    """
    destination = Path(destination)
    check_destination(destination, overwrite, what)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))
    try:
        (staging / MARKER).write_text("This folder was written by logvmamba-nnunet.\n")
        yield staging
        if destination.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            destination.rename(backup / destination.name)
            staging.rename(destination)
            shutil.rmtree(backup)
        else:
            staging.rename(destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


@contextlib.contextmanager
def staged_files(destinations: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path beside each destination (same folder, hidden name); when the block has written
    them all, each replaces its destination (``os.replace``). On error the temporary files are removed and no
    destination is touched, so a failure never leaves a partial file or half-updated results."""
    destinations = [Path(d) for d in destinations]
    staging: list[Path] = []
    try:
        for destination in destinations:
            descriptor, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial",
                                                dir=destination.parent)
            os.close(descriptor)
            staging.append(Path(name))
        yield staging
        for temporary, destination in zip(staging, destinations, strict=True):
            os.chmod(temporary, 0o666 & ~_umask())  # the permissions of a file created normally
            os.replace(temporary, destination)
    finally:
        for temporary in staging:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Input checks shared by the ``logvmamba-nnunet`` subcommands, and how their user errors are reported.

A :class:`UserInputError` is a problem with what the user gave: a path, a file, an option, the environment. A
subcommand's ``run`` (decorated with :func:`reports_user_errors`) prints it as one line,
``logvmamba-nnunet <command>: error: <what is wrong>; <how to fix it>``, on stderr and returns a non-zero exit
status; ``cli.main`` does the same for anything raised outside ``run``. Anything else that goes wrong is a bug and
keeps its traceback. The library raises ``ValueError`` / ``FileExistsError`` for bad input; :func:`user_errors`
turns those into :class:`UserInputError` around the library calls a command makes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from logvmamba_nnunet.data.json_object import read_json_object

PROG = "logvmamba-nnunet"


class UserInputError(Exception):
    """A user error: reported as one line without a traceback; the message says what is wrong and the fix."""


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


def report(command: str, error: BaseException) -> None:
    print(f"{PROG} {command}: error: {one_line(error)}", file=sys.stderr)


def reports_user_errors(command: str, status: int = 2) -> Callable:
    """Decorator for a subcommand's ``run(args)``: a :class:`UserInputError` becomes one line on stderr and the
    exit status ``status``."""
    def decorate(run: Callable) -> Callable:
        @functools.wraps(run)
        def wrapper(*args, **kwargs) -> int:
            try:
                return run(*args, **kwargs)
            except UserInputError as error:
                report(command, error)
                return status
        return wrapper
    return decorate


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the library's input errors (``ValueError``, ``FileExistsError`` and any of ``types``) raised in the
    block into :class:`UserInputError` with the same message."""
    try:
        yield
    except UserInputError:
        raise
    except (ValueError, FileExistsError, *types) as error:
        raise UserInputError(one_line(error)) from error


def _require_readable(path: str | Path, what: str, fix: str, folder: bool) -> Path:
    """``path`` as a Path if it is a readable folder (``folder``) or file; else :class:`UserInputError`."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{what} {path} does not exist; {fix}")
    if path.is_dir() != folder:
        found, wanted = ("a folder", "a file") if path.is_dir() else ("a file", "a folder")
        raise UserInputError(f"{what} {path} is {found}, not {wanted}; {fix}")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise UserInputError(f"{what} {path} is not readable (permissions); fix its permissions or {fix}")
    return path


def require_folder(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a Path if it is a readable folder; else :class:`UserInputError` naming ``what`` and ``fix``."""
    return _require_readable(path, what, fix, folder=True)


def require_file(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a Path if it is a readable, non-empty file; else :class:`UserInputError`."""
    path = _require_readable(path, what, fix, folder=False)
    if path.stat().st_size == 0:
        raise UserInputError(f"{what} {path} is empty; {fix}")
    return path


def require_environment(name: str, purpose: str, alternative: str = "") -> str:
    """The value of environment variable ``name``; :class:`UserInputError` when it is unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        other = f", or {alternative}" if alternative else ""
        raise UserInputError(f"{name} is not set ({purpose}); export {name}=/path/to/{name}{other}")
    return value


def load_json_object(path: str | Path, what: str, fix: str) -> dict:
    """A JSON file holding an object, as a dict; :class:`UserInputError` when it is missing, unreadable or not
    a JSON object."""
    path = require_file(path, what, fix)
    try:
        return read_json_object(path)
    except ValueError as error:
        raise UserInputError(f"{what} {error}; {fix}") from None


def require_output_folder(path: str | Path, what: str) -> Path:
    """The folder an output file goes to: it may be created, but not where a file already is."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(f"{what} {path}: {parent} is a file, not a folder; choose another location")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserInputError(f"{what} {path}: {parent} is not writable; choose another location")
            break
    return path


def require_at_least(name: str, value: float, minimum: float, fix: str = "") -> None:
    if value < minimum:
        raise UserInputError(f"{name} must be at least {minimum:g}, got {value:g}{'; ' + fix if fix else ''}")


def require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserInputError(f"{name} must be greater than 0, got {value:g}")


def require_dataset_name(dataset: str, root_variable: str, root: Path) -> str:
    """nnU-Net's dataset name for an id or a name (``maybe_convert_to_dataset_name``); :class:`UserInputError` when
    the id is malformed, unknown (listing the datasets in ``root``, the folder of ``root_variable``) or ambiguous."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets, maybe_convert_to_dataset_name

    if not dataset.startswith("Dataset") and not dataset.isdigit():
        raise UserInputError(f"-d {dataset}: give a dataset id (e.g. 501) or name (e.g. Dataset501_Name)")
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError:  # no folder or several folders with that id
        candidates = [str(c) for c in find_candidate_datasets(int(dataset))]
    if candidates:
        raise UserInputError(f"dataset id {dataset} is used by several folders ({', '.join(candidates)}); nnU-Net "
                             "needs unique ids: rename or remove all but one, or pass the full name to -d")
    found = sorted(p.name for p in Path(root).glob("Dataset*") if p.is_dir())
    raise UserInputError(f"unknown dataset id {dataset}: no Dataset{int(dataset):03d}_* folder in nnUNet_raw, "
                         f"nnUNet_preprocessed or nnUNet_results; check the id (datasets in {root_variable} {root}: "
                         f"{', '.join(found) or 'none'})")

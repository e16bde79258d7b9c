"""Selective-scan backends: which ones exist, which one runs, and lazy, guarded imports of the optional ones.

Backends:
- ``torch``: the exact chunked scan in plain PyTorch (``scan_torch``); runs on every device.
- ``triton``: Triton kernels (``scan_triton``); needs ``import triton`` to work and CUDA tensors, or the
  Triton interpreter (environment variable ``TRITON_INTERPRET=1``), which also accepts CPU tensors.
- ``mamba_ssm``: mamba-ssm's CUDA kernel ``selective_scan_fn``; needs the ``mamba-ssm`` package with its
  compiled extension and CUDA tensors.

Optional packages are imported on first use only (never when this package is imported), at most once per
process; a failed import is remembered together with its reason.

Choosing a backend: ``selective_scan(..., backend=...)`` takes ``"auto"`` or a backend name. With
``"auto"`` the environment variable ``LOGVMAMBA_SCAN_BACKEND`` (``auto``, ``torch``, ``triton`` or
``mamba_ssm``) forces a backend; otherwise ``auto`` picks ``mamba_ssm`` for CUDA tensors when it imports,
else ``triton`` for CUDA tensors when it imports, else ``torch``. A backend that is named explicitly
(argument or environment variable) but cannot run raises ``RuntimeError`` saying why and how to fix it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

BACKENDS = ("torch", "triton", "mamba_ssm")
"""Names of the selective-scan backends."""

BACKEND_ENV_VAR = "LOGVMAMBA_SCAN_BACKEND"
"""Environment variable that forces a backend when ``backend="auto"``."""

_AUTO = "auto"


class OptionalImport:
    """An attribute of an optional module, imported on first use and at most once per process.

    A failed import is remembered with its reason (exception type and message, no traceback); later
    calls return the remembered outcome without trying again.
    """

    def __init__(self, module: str, attribute: str | None = None) -> None:
        self.module = module
        self.attribute = attribute
        self.attempted = False
        self.value: object | None = None
        self.reason = ""

    def load(self) -> object | None:
        """The module (or its attribute), or None when it cannot be imported (see ``reason``)."""
        if not self.attempted:
            self.attempted = True
            try:
                loaded = importlib.import_module(self.module)
                self.value = loaded if self.attribute is None else getattr(loaded, self.attribute)
            except Exception as error:  # any failure (ImportError, OSError, ...) means "unavailable"
                self.reason = import_failure(self.module, error)
        return self.value


def import_failure(module: str, error: Exception) -> str:
    """One line saying why importing ``module`` failed: the exception's type and first message line."""
    message = str(error).strip().splitlines()
    detail = f": {message[0]}" if message else ""
    return f"import {module} failed ({type(error).__name__}{detail})"


_MAMBA_SSM = OptionalImport("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
_TRITON = OptionalImport("triton")
_TRITON_SCAN = OptionalImport("logvmamba_nnunet.ops.scan_triton", "selective_scan_triton")

_MAMBA_FIX = "install it on a machine with CUDA: pip install 'logvmamba-nnunet[mamba]'"
_TRITON_FIX = "install triton: it ships with PyTorch's CUDA builds (pip install torch) or alone (pip install triton)"


def triton_interpreter_on() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``), which runs the kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def triton_unavailable_reason(failed_import: str | None, device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on tensors on ``device``, with the fix; None when they can.

    ``failed_import`` says why ``import triton`` failed (see ``import_failure``), None when it worked. This is
    the one availability check of the ``triton`` backend: the dispatcher and ``scan_triton`` both use it.
    """
    if failed_import is not None:
        return f"the triton backend needs the 'triton' package: {failed_import}; {_TRITON_FIX}"
    if device.type != "cuda" and not triton_interpreter_on():
        return (
            f"Triton kernels need CUDA tensors (tensors are on {device.type}); set TRITON_INTERPRET=1 before "
            "triton is imported to run them, slowly, in Triton's interpreter"
        )
    return None


def _availability(name: str, device: torch.device) -> tuple[bool, str]:
    """Whether backend ``name`` can run on ``device``, and a one-line reason."""
    if name == "torch":
        return True, "pure PyTorch chunked scan; runs on every device"
    if name == "mamba_ssm":
        if _MAMBA_SSM.load() is None:
            return False, f"{_MAMBA_SSM.reason}; {_MAMBA_FIX}"
        if device.type != "cuda":
            return False, f"mamba-ssm runs on CUDA tensors only (tensors are on {device.type})"
        return True, "mamba-ssm CUDA kernel"
    unavailable = triton_unavailable_reason(None if _TRITON.load() is not None else _TRITON.reason, device)
    if unavailable is not None:
        return False, unavailable
    if _TRITON_SCAN.load() is None:
        return False, _TRITON_SCAN.reason
    mode = "interpreter" if device.type != "cuda" else "CUDA"
    return True, f"Triton kernels ({mode})"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_backends(device: torch.device | str | None = None) -> dict[str, tuple[bool, str]]:
    """Availability of every backend for tensors on ``device`` (default: CUDA when present, else CPU).

    Returns a dict backend name -> (available, reason). Attempts the optional imports (once per process).
    """
    target = _default_device() if device is None else torch.device(device)
    return {name: _availability(name, target) for name in BACKENDS}


def _requested_backend(name: str) -> tuple[str, str]:
    """The backend asked for, after the environment variable, and where the request came from."""
    if name not in (_AUTO, *BACKENDS):
        raise ValueError(f"backend must be one of {(_AUTO, *BACKENDS)}, got {name!r}.")
    if name != _AUTO:
        return name, f"backend={name!r}"
    forced = os.environ.get(BACKEND_ENV_VAR, _AUTO).strip() or _AUTO
    if forced not in (_AUTO, *BACKENDS):
        raise ValueError(
            f"environment variable {BACKEND_ENV_VAR}={forced!r} is not one of {(_AUTO, *BACKENDS)}; "
            "fix or unset it."
        )
    return forced, f"{BACKEND_ENV_VAR}={forced!r}"


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The backend that runs a scan requested as ``name`` ("auto" or a backend) on ``device``.

    Raises:
        ValueError: ``name`` (or ``LOGVMAMBA_SCAN_BACKEND``) is not a known backend.
        RuntimeError: the requested backend cannot run here; the message says why and how to fix it.
    """
    target = torch.device(device)
    requested, source = _requested_backend(name)
    if requested != _AUTO:
        available, reason = _availability(requested, target)
        if not available:
            raise RuntimeError(
                f"selective-scan backend {requested!r} was requested ({source}) but cannot run: {reason}. "
                f"Use backend='torch' (runs everywhere) or unset {BACKEND_ENV_VAR}."
            )
        return requested
    if target.type == "cuda":
        for candidate in ("mamba_ssm", "triton"):
            if _availability(candidate, target)[0]:
                return candidate
    return "torch"


def load_optional_backend(name: str) -> Callable:
    """The scan function of the optional backend ``name`` ("triton" or "mamba_ssm").

    Call it only after ``resolve_backend`` returned ``name``; raises RuntimeError if it did not import.
    """
    loader = {"mamba_ssm": _MAMBA_SSM, "triton": _TRITON_SCAN}[name]
    function = loader.load()
    if function is None:
        raise RuntimeError(f"selective-scan backend {name!r} is unavailable: {loader.reason}.")
    return function

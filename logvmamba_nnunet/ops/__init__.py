"""Low-level operators: the Mamba-1 selective scan (S6) and its backends."""

from logvmamba_nnunet.ops.backends import BACKEND_ENV_VAR, BACKENDS, describe_backends, resolve_backend
from logvmamba_nnunet.ops.selective_scan import selective_scan

__all__ = ["BACKENDS", "BACKEND_ENV_VAR", "describe_backends", "resolve_backend", "selective_scan"]

"""Low-level operators: the Mamba-1 selective scan (S6) and its backends."""

from logvmamba_nnunet.ops.selective_scan import selective_scan

__all__ = ["selective_scan"]

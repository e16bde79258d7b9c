"""The residual pre-norm block: x + DropPath(mixer(LayerNorm(x))), channels-last, 2D and 3D (paper §3.3, Fig. 3)."""

from __future__ import annotations

from typing import Any

from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import Tensor, nn

from logvmamba_nnunet.modules.mixer import LoGVMambaMixer
from logvmamba_nnunet.modules.validation import check_positive_int

__all__ = ["DropPath", "LoGVMambaBlock"]


class LoGVMambaBlock(nn.Module):
    """Pre-norm residual block around ``LoGVMambaMixer``: (B, *S, dim) -> (B, *S, dim), input dtype.

    Args:
        dim, spatial_dims, kind: as ``LoGVMambaMixer``.
        drop_path: probability in [0, 1) that dynamic-network-architectures' ``DropPath`` (stochastic depth, the
            timm implementation) drops the mixer branch of a sample in training.
        **mixer_kwargs: the other keyword arguments of ``LoGVMambaMixer`` (planned_size, expand, d_state,
            directions, placement, ltx_squeeze, gtx_stride, gtx_squeeze, scan_backend, dt_rank).
    """

    def __init__(self, dim: int, spatial_dims: int, kind: str = "local_global", drop_path: float = 0.0,
                 **mixer_kwargs: Any) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path={drop_path} must be in [0, 1); it is the probability of dropping the "
                             "mixer branch (0 disables it).")
        self.norm = nn.LayerNorm(dim)
        self.mixer = LoGVMambaMixer(dim, spatial_dims, kind, **mixer_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, *S, dim) channels-last -> (B, *S, dim), dtype of x."""
        return (x + self.drop_path(self.mixer(self.norm(x)))).to(x.dtype)

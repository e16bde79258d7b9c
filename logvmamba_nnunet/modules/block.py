"""The residual pre-norm block: x + DropPath(mixer(LayerNorm(x))), channels-last, 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from logvmamba_nnunet.modules.mixer import LoGVMambaMixer
from logvmamba_nnunet.modules.validation import check_positive_int


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of each sample with probability
    ``drop_prob`` and scale the kept ones by 1 / (1 - drop_prob); identity in eval. x: (B, ...)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path={drop_prob} must be in [0, 1).")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, ...) -> same shape."""
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
        return x * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LoGVMambaBlock(nn.Module):
    """Pre-norm residual block around ``LoGVMambaMixer``: (B, *S, dim) -> (B, *S, dim), input dtype.

    Arguments as ``LoGVMambaMixer`` plus ``drop_path`` (the DropPath probability).
    """

    def __init__(
        self,
        dim: int,
        spatial_dims: int,
        kind: str = "local_global",
        planned_size: Sequence[int] | None = None,
        expand: float | None = None,
        d_state: int = 16,
        directions: int = 1,
        placement: str = "interleaved",
        ltx_squeeze: int | None = None,
        gtx_stride: int | Sequence[int] = 1,
        gtx_squeeze: int = 1,
        drop_path: float = 0.0,
        scan_backend: str = "auto",
        dt_rank: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        self.norm = nn.LayerNorm(dim)
        self.mixer = LoGVMambaMixer(
            dim, spatial_dims, kind=kind, planned_size=planned_size, expand=expand, d_state=d_state,
            directions=directions, placement=placement, ltx_squeeze=ltx_squeeze, gtx_stride=gtx_stride,
            gtx_squeeze=gtx_squeeze, scan_backend=scan_backend, dt_rank=dt_rank,
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, *S, dim) channels-last -> (B, *S, dim), dtype of x."""
        return (x + self.drop_path(self.mixer(self.norm(x)))).to(x.dtype)

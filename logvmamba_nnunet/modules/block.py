"""The residual pre-norm block: x + DropPath(mixer(LayerNorm(x))), channels-last, 2D and 3D (paper §3.3, Fig. 3).

In training the block recomputes its activations in backward by default (``recompute``): it keeps only its input
and the selective scan's results, and reruns the rest of its forward when the gradient reaches it (see
``docs/architecture.md``, "Memory and recomputation").
"""

from __future__ import annotations

from typing import Any

import torch
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import Tensor, nn
from torch.utils import checkpoint

from logvmamba_nnunet.modules.mixer import LoGVMambaMixer
from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.modules.validation import check_positive_int
from logvmamba_nnunet.ops.scan_memo import ScanMemo

__all__ = ["DropPath", "LoGVMambaBlock"]


class LoGVMambaBlock(nn.Module):
    """Pre-norm residual block around ``LoGVMambaMixer``: (B, *S, dim) -> (B, *S, dim), input dtype.

    Args:
        dim, spatial_dims, kind: as ``LoGVMambaMixer``.
        drop_path: probability in [0, 1) that dynamic-network-architectures' ``DropPath`` (stochastic depth, the
            timm implementation) drops the mixer branch of a sample in training.
        norm_eps: eps of the pre-norm LayerNorm (the authors: 1e-5 in their 2D model, 1e-6 in their 3D one).
        fp32: run the whole block in float32 with autocast disabled (an input in half precision is cast up and the
            output cast back), as the authors' 3D network does; otherwise only the SSM runs in float32 and the
            projections and convolutions follow autocast.
        recompute: in training with gradients enabled, keep only the block's input for backward and recompute the
            rest when backward reaches the block (``torch.utils.checkpoint``, non-reentrant, RNG state restored so
            the recomputed DropPath draws the same samples). The selective scan is not rerun: its output and
            saved states from the first run are kept and replayed (``ops/scan_memo.py``). Same outputs and
            gradients, far less memory, one more forward of the block but the scan per step. No effect in eval
            mode or without gradients.
        **mixer_kwargs: the other keyword arguments of ``LoGVMambaMixer`` (planned_size, expand, d_state,
            directions, placement, ltx_squeeze, gtx_stride, gtx_squeeze, scan_backend, dt_rank).

    The output follows the memory layout of the input: a channels-last view of a channels-first map gives a
    channels-last view of a channels-first output.
    """

    def __init__(self, dim: int, spatial_dims: int, kind: str = "local_global", drop_path: float = 0.0, *,
                 norm_eps: float = 1e-5, fp32: bool = False, recompute: bool = True, **mixer_kwargs: Any) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path={drop_path} must be in [0, 1); it is the probability of dropping the "
                             "mixer branch (0 disables it).")
        self.fp32 = fp32
        self.recompute = recompute
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = LoGVMambaMixer(dim, spatial_dims, kind, **mixer_kwargs)
        self.drop_path = DropPath(drop_path)

    @property
    def recomputes(self) -> bool:
        """Whether the next forward keeps only the input and recomputes in backward."""
        return self.recompute and self.training and torch.is_grad_enabled()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, *S, dim) channels-last -> (B, *S, dim), dtype and memory layout of x."""
        if self.recomputes:
            return checkpoint.checkpoint(self._recomputable_forward, ScanMemo(), x, use_reentrant=False,
                                         preserve_rng_state=True)
        return self._forward(x)

    def _recomputable_forward(self, memo: ScanMemo, x: Tensor) -> Tensor:
        """The forward as recomputation runs it: the scan's results of the first run are replayed, not rerun."""
        with memo.session():
            return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        if not self.fp32:
            return self._residual(x)
        with autocast_disabled(x.device):
            return self._residual(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)

    def _residual(self, x: Tensor) -> Tensor:
        y = self.mixer(self.norm(x))
        drop = self.drop_path
        if drop.drop_prob == 0.0 or not drop.training:
            return (x + y).to(x.dtype)
        # DropPath (the timm implementation, same random draw) fused with the residual sum: x + y * keep / p
        keep = 1.0 - drop.drop_prob
        scale = y.new_empty((y.shape[0],) + (1,) * (y.dim() - 1)).bernoulli_(keep)
        if drop.scale_by_keep:
            scale.div_(keep)
        return torch.addcmul(x, y, scale).to(x.dtype)

    def extra_repr(self) -> str:
        return f"fp32={self.fp32}, drop_path={self.drop_path.drop_prob}, recompute={self.recompute}"

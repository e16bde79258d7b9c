"""The token mixer of paper §3.3 / Fig. 3 in its four kinds, for 2D and 3D, channels-last I/O.

``vss`` (VMamba's SS2D/SS3D), ``local`` (L-VMamba), ``global`` (G-VMamba), ``local_global`` (LoG-VMamba):

    x, z = in_proj(x)                              Linear(C -> 2 d_inner, no bias)
    F = extractor(x)                               vanilla (width W = d_inner) or LTX (W = C')
    tokens = [flatten(F) ; GTX(F)]                 GTX only for global / local_global
    y = sum_k to_raster_k(SSM_k(sequence_k))       K directions, global tokens dropped on the way back
    y = fold(y)                                    Linear(C' -> d_inner, no bias), LTX kinds only
    out = out_proj(LayerNorm(y) * silu(z))         Linear(d_inner -> C, no bias)

The forward computes this with one copy per layout change (``docs/architecture.md``, "Memory and recomputation"):
x and z come from the two halves of in_proj as dense channels-last tensors, the convolutions run channels-last,
``ScanLayout`` builds and reads the direction sequences in one pass each way and returns channels-last outputs, and
the gate is fused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from logvmamba_nnunet.modules.scan_directions import DIRECTIONS, ScanLayout
from logvmamba_nnunet.modules.ssm import SelectiveSSM
from logvmamba_nnunet.modules.token_extractors import (
    DEFAULT_LTX_SQUEEZE,
    LTX_WINDOW,
    GlobalTokenExtractor,
    LocalTokenExtractor,
    VanillaTokenExtractor,
)
from logvmamba_nnunet.modules.token_placement import PLACEMENTS
from logvmamba_nnunet.modules.validation import (
    check_choice,
    check_divides,
    check_positive_int,
    check_spatial_dims,
    per_axis,
)

MIXER_KINDS = ("vss", "local", "global", "local_global")
LOCAL_KINDS = ("local", "local_global")
GLOBAL_KINDS = ("global", "local_global")
DEFAULT_EXPAND = {2: 2.0, 3: 1.0}


def inner_width(dim: int, expand: float) -> int:
    """d_inner = expand * dim; ValueError unless it is a positive integer."""
    d_inner = expand * dim
    if expand <= 0 or not math.isclose(d_inner, round(d_inner)):
        raise ValueError(
            f"expand={expand} times dim={dim} must be a positive integer (d_inner); "
            f"choose expand so that expand * dim is whole."
        )
    return round(d_inner)


def resolve_ltx_squeeze(ltx_squeeze: int | None, d_inner: int, spatial_dims: int) -> int:
    """The LTX channel squeeze factor. None -> the default (8 in 2D, 16 in 3D) or, when d_inner is not a
    multiple of it, the largest divisor of d_inner below it (so d_inner / squeeze >= 1 always). An explicit
    value must divide d_inner."""
    if ltx_squeeze is None:
        default = DEFAULT_LTX_SQUEEZE[spatial_dims]
        return max(d for d in range(1, min(default, d_inner) + 1) if d_inner % d == 0)
    check_divides("ltx_squeeze", ltx_squeeze, d_inner, "d_inner (expand * dim)")
    return ltx_squeeze


def block_width_dt_rank(dim: int, spatial_dims: int, ltx_squeeze: int | None = None) -> int:
    """Rank R of the dt projection from the block width C = ``dim``, as the authors' mixers compute it (2D and 3D):
    ceil(C / Sq * 3^dims / 16) with an LTX of channel squeeze Sq, ceil(C / 16) without one (VMamba's "auto" rank).

    Mamba's own rule, ceil(W / 16) of the SSM width W, gives the same rank when expand is 1 (the 3D default) and
    about twice it when expand is 2 (the 2D default): W = E * C / Sq * 3^dims with an LTX, E * C without.
    """
    if ltx_squeeze is None:
        return math.ceil(dim / 16)
    return -(-dim * LTX_WINDOW**spatial_dims // (16 * ltx_squeeze))


class LoGVMambaMixer(nn.Module):
    """Token mixer, (B, *S, dim) -> (B, *S, dim), same dtype as the input.

    Args:
        dim: channels C of the input.
        spatial_dims: 2 or 3.
        kind: one of ``MIXER_KINDS``.
        planned_size: spatial size (one int per axis) this mixer sees at the planned patch size; fixes
            the GTX's number of grid positions Ng. Required for ``global`` and ``local_global``.
        expand: E, d_inner = E * dim; None -> 2 in 2D, 1 in 3D.
        d_state: N of the SSM.
        directions: K in (1, 2, 4) (see ``scan_directions``).
        placement: one of ``PLACEMENTS`` (see ``token_placement``).
        ltx_squeeze: LTX channel squeeze (see ``resolve_ltx_squeeze``).
        gtx_stride: GTX spatial stride Ks, an int or one int per axis.
        gtx_squeeze: GTX channel squeeze q; the mixer gets W / q global tokens.
        scan_backend: ``backend`` argument of ``selective_scan``.
        dt_rank: rank R of the dt projection; None -> ``block_width_dt_rank`` (the authors' rule).
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
        scan_backend: str = "auto",
        dt_rank: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_spatial_dims(spatial_dims)
        check_choice("kind", kind, MIXER_KINDS)
        check_choice("placement", placement, PLACEMENTS)
        check_choice("directions", directions, DIRECTIONS)
        self.dim, self.spatial_dims, self.kind = dim, spatial_dims, kind
        self.d_inner = inner_width(dim, DEFAULT_EXPAND[spatial_dims] if expand is None else expand)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        squeeze = None
        if kind in LOCAL_KINDS:
            squeeze = resolve_ltx_squeeze(ltx_squeeze, self.d_inner, spatial_dims)
            self.extractor = LocalTokenExtractor(self.d_inner, spatial_dims, squeeze)
        else:
            self.extractor = VanillaTokenExtractor(self.d_inner, spatial_dims)
        width = self.extractor.out_channels
        self.global_extractor = None
        if kind in GLOBAL_KINDS:
            if planned_size is None:
                raise ValueError(
                    f"kind={kind!r} needs planned_size: pass the spatial size (one int per axis) of the "
                    f"feature map this block sees at the planned patch size, or use kind='vss'/'local'."
                )
            per_axis("gtx_stride", gtx_stride, spatial_dims)
            check_divides("gtx_squeeze", gtx_squeeze, width, f"the GTX input width of kind={kind!r}")
            self.global_extractor = GlobalTokenExtractor(
                width, spatial_dims, planned_size, gtx_stride, gtx_squeeze
            )
        rank = block_width_dt_rank(dim, spatial_dims, squeeze) if dt_rank is None else dt_rank
        self.ssm = SelectiveSSM(width, directions, d_state, rank, scan_backend=scan_backend)
        self.fold = nn.Linear(width, self.d_inner, bias=False) if kind in LOCAL_KINDS else None
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.layout = ScanLayout(directions, placement)

    @property
    def n_global_tokens(self) -> int:
        """Number of global tokens added to each sequence (0 without GTX)."""
        return 0 if self.global_extractor is None else self.global_extractor.n_tokens

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, *S, dim) channels-last -> (B, *S, dim), dtype of x."""
        if x.dim() != self.spatial_dims + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"expected a channels-last input (B, *S, {self.dim}) with {self.spatial_dims} spatial "
                f"axes, got shape {tuple(x.shape)}."
            )
        spatial_size = x.shape[1:-1]
        # in_proj as two products, so that x and z are each dense channels-last (the extractor's convolutions run
        # channels-last without a copy)
        weight_x, weight_z = self.in_proj.weight.chunk(2)
        features = self.extractor(F.linear(x, weight_x).movedim(-1, 1))
        tokens = features.flatten(2)
        global_tokens = None
        if self.global_extractor is not None:
            global_tokens = self.global_extractor(features).to(tokens.dtype)
        sequences = self.layout.sequences(tokens, global_tokens, spatial_size)
        outputs = self.ssm(sequences)
        y = self.layout.merge(outputs, spatial_size, self.n_global_tokens).to(features.dtype)
        if self.fold is not None:
            y = self.fold(y)
        y = silu_gate(self.out_norm(y), F.linear(x, weight_z).flatten(1, -2))
        return self.out_proj(y).view(x.shape).to(x.dtype)


class _SiLUGate(torch.autograd.Function):
    """y * silu(z) written into one buffer; saves y and z only and recomputes silu(z) in backward."""

    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(y, z)
        return F.silu(z).mul_(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        y, z = ctx.saved_tensors
        grad_y = F.silu(z).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_z = torch.ops.aten.silu_backward(grad * y, z) if ctx.needs_input_grad[1] else None
        return grad_y, grad_z


def silu_gate(y: Tensor, z: Tensor) -> Tensor:
    """``y * silu(z)`` with the same values and gradients, fused when y and z have one dtype and shape."""
    if y.dtype != z.dtype or y.shape != z.shape:
        return y * F.silu(z)
    return _SiLUGate.apply(y, z)

"""The 1D Mamba (Mamba-1) layer and U-Mamba's layer that runs it over a flattened feature map.

``Mamba1d`` maps token sequences (B, L, d_model) -> (B, L, d_model):
``in_proj`` (d_model -> 2 d_inner, no bias) gives x and the gate z; x goes through a causal depthwise conv1d
(kernel d_conv, bias) and SiLU; ``x_proj`` (d_inner -> R + 2N, no bias) gives dt, B and C; ``dt_proj``
(R -> d_inner) maps dt to the step, its bias is the scan's ``delta_bias`` with softplus; the selective scan
(this project's ``selective_scan``, A = -exp(A_log), skip D) is gated by silu(z); ``out_proj``
(d_inner -> d_model, no bias). d_inner = expand * d_model, R = ceil(d_model / 16).

The causal conv uses the ``causal-conv1d`` package's CUDA kernel for CUDA tensors when that package imports
(tried once, on first use, and a failure is remembered), and ``torch.nn.functional.conv1d`` otherwise.

``UMambaLayer`` is U-Mamba's layer: (B, C, *S) -> flatten to L = prod(S) tokens of width C -> LayerNorm ->
``Mamba1d`` -> back to (B, C, *S), all in float32 with autocast disabled. Like U-Mamba's, it has no residual
connection: it returns mamba(norm(x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.modules.ssm import check_dt_range, default_dt_rank, init_mamba_ssm_parameters
from logvmamba_nnunet.modules.validation import check_positive_int
from logvmamba_nnunet.modules.weight_decay import tag_no_weight_decay
from logvmamba_nnunet.ops import selective_scan
from logvmamba_nnunet.ops.backends import OptionalImport

_CAUSAL_CONV1D = OptionalImport("causal_conv1d", "causal_conv1d_fn")
_KERNEL_WIDTHS = (2, 3, 4)  # widths the causal-conv1d kernel supports


def causal_depthwise_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """silu(causal depthwise conv1d): x (B, D, L), weight (D, 1, W), bias (D,) or None -> (B, D, L).

    Output t sees inputs t - W + 1 .. t (zeros before the start). Uses causal-conv1d's kernel for CUDA tensors
    when the package imports and W is 2..4; ``F.conv1d`` otherwise.
    """
    width = weight.shape[-1]
    if x.is_cuda and width in _KERNEL_WIDTHS:
        kernel = _CAUSAL_CONV1D.load()
        if kernel is not None:
            return kernel(x.contiguous(), weight.squeeze(1), bias, activation="silu")
    length = x.shape[-1]
    return F.silu(F.conv1d(x, weight, bias, padding=width - 1, groups=x.shape[1])[..., :length])


class Mamba1d(nn.Module):
    """Mamba-1 layer on token sequences: (B, L, d_model) -> (B, L, d_model), same dtype.

    Args:
        d_model: token width.
        d_state: N, the SSM state size.
        d_conv: kernel width of the causal depthwise conv.
        expand: d_inner = expand * d_model.
        dt_rank: R; None -> ceil(d_model / 16) (Mamba's "auto").
        dt_min, dt_max, dt_init_floor: the initial step is log-uniform in [dt_min, dt_max], floored.
        scan_backend: passed to ``selective_scan`` as ``backend``.

    Initialisation as Mamba: Linear layers as ``nn.Linear``, dt_proj weight U(+-R^-0.5), dt_proj bias =
    softplus^-1(dt), A_log = log(1..N) for every channel, D = 1. A_log and D get no weight decay.
    """

    no_weight_decay_parameter_names = ("A_log", "D")

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, scan_backend: str = "auto") -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            check_positive_int(name, value)
        rank = default_dt_rank(d_model) if dt_rank is None else dt_rank
        check_positive_int("dt_rank", rank)
        check_dt_range(dt_min, dt_max)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.dt_rank = expand * d_model, rank
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=True)
        self.x_proj = nn.Linear(self.d_inner, rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(rank, self.d_inner, bias=True)
        self.A_log = tag_no_weight_decay(nn.Parameter(torch.empty(self.d_inner, d_state)))
        self.D = tag_no_weight_decay(nn.Parameter(torch.empty(self.d_inner)))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of dt_proj, A_log and D (``init_mamba_ssm_parameters``; the other layers keep
        PyTorch's defaults)."""
        init_mamba_ssm_parameters(self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D, self.dt_min,
                                  self.dt_max, self.dt_init_floor)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, L, d_model) -> (B, L, d_model)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.d_model:
            raise ValueError(f"expected tokens of shape (B, L, {self.d_model}), got {tuple(tokens.shape)}.")
        x, z = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = causal_depthwise_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L); the bias goes to the scan
        y = selective_scan(
            x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(), D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=self.scan_backend)
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}")


class UMambaLayer(nn.Module):
    """U-Mamba's layer on a channels-first map: (B, C, *S) -> (B, C, *S), same dtype; no residual.

    The map is flattened to L = prod(S) tokens of width C (raster order), normalised with LayerNorm(C) and
    passed through ``Mamba1d``, in float32 with autocast disabled; the result is cast back to the input dtype.

    Args:
        channels: C.
        d_state, d_conv, expand, scan_backend: passed to ``Mamba1d``.
    """

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_backend: str = "auto") -> None:
        super().__init__()
        check_positive_int("channels", channels)
        self.channels = channels
        self.norm = nn.LayerNorm(channels)
        self.mamba = Mamba1d(channels, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *S) with at least one spatial axis -> (B, C, *S)."""
        if x.dim() < 3 or x.shape[1] != self.channels:
            raise ValueError(f"expected a map of shape (B, {self.channels}, *spatial), got {tuple(x.shape)}.")
        with autocast_disabled(x.device):
            tokens = x.float().flatten(2).transpose(1, 2)  # (B, L, C)
            out = self.mamba(self.norm(tokens))
        return out.transpose(1, 2).reshape(x.shape).to(x.dtype)

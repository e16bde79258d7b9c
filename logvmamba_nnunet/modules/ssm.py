"""The S6 parameter set of K scan directions and the call to the selective scan (paper §3.1, §3.3).

Per direction k, on a sequence of width W: x_proj (W -> R + 2N, no bias) gives dt, B and C; dt_proj
(R -> W) maps dt to the step, its bias is passed to the scan as ``delta_bias`` with softplus;
A = -exp(A_log), A_log = log(1..N) per channel (S4D-real); skip D = 1. The K parameter sets are stacked
(VMamba's layout: x_proj_weight (K, R+2N, W), dt_proj_weight (K, W, R), dt_proj_bias (K, W),
A_log (K*W, N), D (K*W,)) so that all directions run in one scan call with K groups of B/C.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.modules.scan_directions import DIRECTIONS
from logvmamba_nnunet.modules.validation import check_choice, check_positive_int
from logvmamba_nnunet.modules.weight_decay import tag_no_weight_decay
from logvmamba_nnunet.ops import selective_scan


def inverse_softplus(x: Tensor) -> Tensor:
    """y with softplus(y) = x, for x > 0: x + log(1 - exp(-x))."""
    return x + torch.log(-torch.expm1(-x))


def default_dt_rank(width: int) -> int:
    """Mamba's "auto" rank of the dt projection: ceil(width / 16)."""
    return math.ceil(width / 16)


def check_dt_range(dt_min: float, dt_max: float) -> None:
    """ValueError unless 0 < dt_min <= dt_max (the range of the initial step)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}.")


@torch.no_grad()
def init_mamba_ssm_parameters(dt_proj_weight: Tensor, dt_proj_bias: Tensor, A_log: Tensor, D: Tensor,
                              dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """Mamba's initialisation of the S6 parameters, in place, for one or K stacked directions.

    dt_proj_weight (..., W, R): U(+-R^-0.5); dt_proj_bias (..., W): softplus^-1(dt) with dt log-uniform in
    [dt_min, dt_max], floored at dt_init_floor, so that softplus(bias) starts in that range; A_log (..., N):
    log(1..N) for every channel (S4D-real); D: 1.
    """
    rank = dt_proj_weight.shape[-1]
    nn.init.uniform_(dt_proj_weight, -rank**-0.5, rank**-0.5)
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand_like(dt_proj_bias) * (log_max - log_min) + log_min)
    dt_proj_bias.copy_(inverse_softplus(dt.clamp(min=dt_init_floor)))
    state_index = torch.arange(1, A_log.shape[-1] + 1, dtype=A_log.dtype, device=A_log.device)
    A_log.copy_(torch.log(state_index).expand_as(A_log))
    D.fill_(1.0)


class SelectiveSSM(nn.Module):
    """S6 over K direction sequences of width W, each direction with its own parameters.

    Args:
        width: W, the width of the token sequences.
        directions: K in (1, 2, 4).
        d_state: N.
        dt_rank: R; None -> ceil(W / 16). (VMamba's pretrained SS2D weights use ceil(C / 16) of the block
            width C instead: pass it explicitly to load them.)
        dt_min, dt_max, dt_init_floor: the initial step dt is log-uniform in [dt_min, dt_max], floored.
        scan_backend: passed to ``selective_scan`` as ``backend``.
    """

    no_weight_decay_parameter_names = ("A_log", "D")

    def __init__(
        self,
        width: int,
        directions: int = 1,
        d_state: int = 16,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        check_choice("directions", directions, DIRECTIONS)
        check_positive_int("d_state", d_state)
        rank = default_dt_rank(width) if dt_rank is None else dt_rank
        check_positive_int("dt_rank", rank)
        check_dt_range(dt_min, dt_max)
        self.width, self.directions, self.d_state, self.dt_rank = width, directions, d_state, rank
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.scan_backend = scan_backend
        self.x_proj_weight = nn.Parameter(torch.empty(directions, rank + 2 * d_state, width))
        self.dt_proj_weight = nn.Parameter(torch.empty(directions, width, rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(directions, width))
        self.A_log = tag_no_weight_decay(nn.Parameter(torch.empty(directions * width, d_state)))
        self.D = tag_no_weight_decay(nn.Parameter(torch.empty(directions * width)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation: x_proj as nn.Linear (U(+-W^-0.5)), then ``init_mamba_ssm_parameters``."""
        nn.init.uniform_(self.x_proj_weight, -self.width**-0.5, self.width**-0.5)
        init_mamba_ssm_parameters(self.dt_proj_weight, self.dt_proj_bias, self.A_log, self.D, self.dt_min,
                                  self.dt_max, self.dt_init_floor)

    def forward(self, sequences: Tensor) -> Tensor:
        """sequences: (B, K, W, T) -> outputs (B, K, W, T), float32.

        Runs in float32 with autocast disabled, whatever the input dtype and autocast state.
        """
        batch, directions, width, length = sequences.shape
        if (directions, width) != (self.directions, self.width):
            raise ValueError(
                f"expected sequences of shape (B, {self.directions}, {self.width}, T), "
                f"got {tuple(sequences.shape)}."
            )
        with autocast_disabled(sequences.device):
            u = sequences.float()
            # (K, c, W) @ (B, K, W, T): one batched product over the B * K sequences, no copy of u
            projected = torch.matmul(self.x_proj_weight.float(), u)
            dt, B, C = projected.split([self.dt_rank, self.d_state, self.d_state], dim=2)
            delta = torch.matmul(self.dt_proj_weight.float(), dt)
            y = selective_scan(
                u.reshape(batch, directions * width, length),
                delta.reshape(batch, directions * width, length),
                -torch.exp(self.A_log.float()),
                B.contiguous(),
                C.contiguous(),
                D=self.D.float(),
                delta_bias=self.dt_proj_bias.float().flatten(),
                delta_softplus=True,
                backend=self.scan_backend,
            )
        return y.view(batch, directions, width, length)

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, directions={self.directions}, d_state={self.d_state}, "
            f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}"
        )


"""Float64 sequential selective scan: the ground truth that tests and benchmarks compare against.

It follows the semantics of mamba-ssm's ``selective_scan_ref`` with a plain step-by-step loop in float64.
It is slow and keeps every step in the autograd graph; never use it in a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from logvmamba_nnunet.ops.scan_inputs import step_sizes


def _expand_groups(BC: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, channels, N, L); channel d reads group d // (channels // G)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, channels, -1, -1)
    return BC.repeat_interleave(channels // BC.shape[1], dim=1)


def selective_scan_reference(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False, return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan computed step by step in float64 (differentiable).

    Takes mamba-ssm's ``selective_scan_ref`` arguments:
        u, delta: (B, D, L) input and step.
        A: (D, N) state matrix (real, normally negative).
        B, C: (B, N, L) or grouped (B, G, N, L) with D divisible by G.
        D: optional (D,) skip weight; z: optional (B, D, L) gate; delta_bias: optional (D,).
        delta_softplus: apply softplus (the identity above ``SOFTPLUS_THRESHOLD``, 20) to ``delta + delta_bias``.
        return_last_state: also return the final state h_{L-1}.

    Returns:
        y (B, D, L) in float64, and the last state (B, D, N) in float64 when ``return_last_state``.
    """
    f64 = torch.float64
    u, A = u.to(f64), A.to(f64)
    delta = step_sizes(delta.to(f64), None if delta_bias is None else delta_bias.to(f64), delta_softplus)[1]
    channels = u.shape[1]
    B_full = _expand_groups(B.to(f64), channels)
    C_full = _expand_groups(C.to(f64), channels)

    h = u.new_zeros(u.shape[0], channels, A.shape[1], dtype=f64)
    outputs = []
    steps = zip(u.unbind(-1), delta.unbind(-1), B_full.unbind(-1), C_full.unbind(-1), strict=True)
    for u_t, delta_t, B_t, C_t in steps:
        h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t
        outputs.append((h * C_t).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.to(f64)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(f64))
    return (y, h) if return_last_state else y

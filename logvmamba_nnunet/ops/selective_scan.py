"""Public selective-scan entry point (placeholder: sequential loop, replaced by the chunked engine)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Mamba-1 selective scan with mamba-ssm's semantics. u, delta, z: (B, D, L); A: (D, N);
    B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,). Returns y (B, D, L) [, last state (B, D, N)]."""
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    Bm, Cm = B.float(), C.float()
    if Bm.dim() == 4:
        Bm = Bm.repeat_interleave(d // Bm.shape[1], dim=1)
        Cm = Cm.repeat_interleave(d // Cm.shape[1], dim=1)
    else:
        Bm, Cm = Bm[:, None], Cm[:, None]
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * Bm[..., t]
        ys.append((h * Cm[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, h) if return_last_state else y

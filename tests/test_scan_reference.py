"""The float64 reference scan against the recurrence written out with Python floats."""

from __future__ import annotations

import math

import torch

from logvmamba_nnunet.ops.reference import selective_scan_reference


def scalar_scan(u, delta, A, B, C, D, z, bias):
    """The Mamba-1 recurrence with nested Python lists: u/delta/z [b][d][l], A [d][n], B/C [b][g][n][l], D/bias [d]."""
    batch, channels, length, state = len(u), len(u[0]), len(u[0][0]), len(A[0])
    per_group = channels // len(B[0])
    ys, lasts = [], []
    for b in range(batch):
        y_b, last_b = [], []
        for d in range(channels):
            g = d // per_group
            h = [0.0] * state
            y_d = []
            for t in range(length):
                x = delta[b][d][t] + bias[d]
                dt = x if x > 20 else math.log1p(math.exp(x))
                h = [math.exp(dt * A[d][n]) * h[n] + dt * u[b][d][t] * B[b][g][n][t] for n in range(state)]
                out = sum(C[b][g][n][t] * h[n] for n in range(state)) + D[d] * u[b][d][t]
                gate = z[b][d][t] / (1 + math.exp(-z[b][d][t]))
                y_d.append(out * gate)
            y_b.append(y_d)
            last_b.append(h)
        ys.append(y_b)
        lasts.append(last_b)
    return torch.tensor(ys, dtype=torch.float64), torch.tensor(lasts, dtype=torch.float64)


def test_reference_matches_the_recurrence_with_groups_and_every_option() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, channels, groups, state, length = 2, 4, 2, 3, 5
    u = torch.randn(batch, channels, length, generator=gen)
    delta = torch.randn(batch, channels, length, generator=gen)
    delta[0, 0, 0] = 25.0  # above the softplus threshold
    A = -torch.rand(channels, state, generator=gen) * 4
    B = torch.randn(batch, groups, state, length, generator=gen)
    C = torch.randn(batch, groups, state, length, generator=gen)
    D = torch.randn(channels, generator=gen)
    z = torch.randn(batch, channels, length, generator=gen)
    bias = torch.randn(channels, generator=gen)
    y, last = selective_scan_reference(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                       return_last_state=True)
    expected_y, expected_last = scalar_scan(*(t.tolist() for t in (u, delta, A, B, C, D, z, bias)))
    assert y.dtype == torch.float64 and last.dtype == torch.float64
    torch.testing.assert_close(y, expected_y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, expected_last, rtol=1e-10, atol=1e-12)


def test_reference_ungrouped_equals_one_group_and_options_default_off() -> None:
    gen = torch.Generator().manual_seed(1)
    u, delta = torch.randn(1, 3, 6, generator=gen), torch.rand(1, 3, 6, generator=gen)
    A = -torch.rand(3, 2, generator=gen)
    B, C = torch.randn(1, 2, 6, generator=gen), torch.randn(1, 2, 6, generator=gen)
    ungrouped = selective_scan_reference(u, delta, A, B, C)
    grouped = selective_scan_reference(u, delta, A, B[:, None], C[:, None])
    torch.testing.assert_close(ungrouped, grouped, rtol=0, atol=0)
    # Without D, z, delta_bias or softplus, delta itself is the step: the first two steps written out.
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    h0 = delta[0, :, 0, None] * u[0, :, 0, None] * B[0, None, :, 0]
    h1 = torch.exp(delta[0, :, 1, None] * A) * h0 + delta[0, :, 1, None] * u[0, :, 1, None] * B[0, None, :, 1]
    torch.testing.assert_close(ungrouped[0, :, 0], (h0 * C[0, None, :, 0]).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ungrouped[0, :, 1], (h1 * C[0, None, :, 1]).sum(-1), rtol=1e-12, atol=1e-12)

"""The S6 parameter set of K directions: Mamba's initialisation, numerics, fp32 under autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

import logvmamba_nnunet.modules.ssm as ssm_module
from logvmamba_nnunet.modules.ssm import SelectiveSSM, inverse_softplus


def closed_form_s6(u, delta, A, B, C, D):
    """Non-recurrent float64 S6: y_t = sum_{s<=t} <C_t, exp(A (cs_t - cs_s)) delta_s u_s B_s> + D u_t
    with cs the cumulative sum of delta. u, delta: (B, W, T); A: (W, N); B, C: (B, N, T); D: (W,)."""
    cumulative = delta.cumsum(-1)
    gap = cumulative[..., :, None] - cumulative[..., None, :]
    causal = torch.ones(gap.shape[-2:], dtype=torch.bool).tril()
    decay = torch.exp(A[None, :, :, None, None] * torch.where(causal, gap, 0.0)[:, :, None]) * causal
    inputs = (delta * u)[:, :, None, None, :] * B[:, None, :, None, :]
    state_terms = decay * inputs * C[:, None, :, :, None]
    return state_terms.sum(dim=(2, 4)) + D[:, None] * u


def test_initialisation_follows_mamba():
    torch.manual_seed(0)
    ssm = SelectiveSSM(width=40, directions=2, d_state=16)
    rank = math.ceil(40 / 16)
    assert ssm.dt_rank == rank == 3
    assert ssm.x_proj_weight.shape == (2, rank + 32, 40)
    assert ssm.x_proj_weight.abs().max() <= 40**-0.5
    assert ssm.dt_proj_weight.shape == (2, 40, rank)
    assert ssm.dt_proj_weight.abs().max() <= rank**-0.5
    assert ssm.dt_proj_weight.std() > 0.3 * rank**-0.5
    dt = F.softplus(ssm.dt_proj_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.log().std() > 0.5
    expected_a_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(80, 16)
    torch.testing.assert_close(ssm.A_log.detach(), expected_a_log)
    assert torch.equal(ssm.D.detach(), torch.ones(80))


def test_dt_floor_applies():
    ssm = SelectiveSSM(width=8, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    torch.testing.assert_close(F.softplus(ssm.dt_proj_bias.detach()), torch.full((1, 8), 1e-4))


def test_inverse_softplus():
    x = torch.tensor([1e-4, 1e-3, 0.05, 0.1, 3.0], dtype=torch.float64)
    torch.testing.assert_close(F.softplus(inverse_softplus(x)), x)


@pytest.mark.parametrize("directions", [1, 2, 4])
def test_forward_equals_closed_form_per_direction(directions):
    torch.manual_seed(0)
    width, n_state, length = 5, 4, 7
    ssm = SelectiveSSM(width, directions, d_state=n_state, dt_rank=2)
    with torch.no_grad():
        ssm.A_log.add_(0.3 * torch.randn_like(ssm.A_log))
        ssm.D.add_(torch.randn_like(ssm.D))
        ssm.dt_proj_bias.add_(torch.randn_like(ssm.dt_proj_bias))
    sequences = torch.randn(2, directions, width, length)
    out = ssm(sequences)
    assert out.shape == (2, directions, width, length) and out.dtype == torch.float32
    for k in range(directions):
        u = sequences[:, k].double()
        projected = torch.einsum("cw,bwt->bct", ssm.x_proj_weight[k].double(), u)
        dt, B, C = projected[:, :2], projected[:, 2 : 2 + n_state], projected[:, 2 + n_state :]
        delta = F.softplus(torch.einsum("wr,brt->bwt", ssm.dt_proj_weight[k].double(), dt)
                           + ssm.dt_proj_bias[k].double()[:, None])
        channels = slice(k * width, (k + 1) * width)
        A = -torch.exp(ssm.A_log[channels].double())
        expected = closed_form_s6(u, delta, A, B, C, ssm.D[channels].double())
        torch.testing.assert_close(out[:, k].double(), expected, rtol=1e-5, atol=1e-5)


def test_directions_have_separate_parameters():
    torch.manual_seed(0)
    ssm = SelectiveSSM(6, directions=2, d_state=4)
    sequences = torch.randn(1, 2, 6, 5)
    before = ssm(sequences)
    with torch.no_grad():
        ssm.x_proj_weight[1].mul_(2.0)
        ssm.A_log[6:].add_(0.5)
    after = ssm(sequences)
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_scan_runs_in_fp32_without_autocast(monkeypatch):
    seen = {}
    real_scan = ssm_module.selective_scan

    def spy(u, delta, A, B, C, **kwargs):
        seen["dtypes"] = {t.dtype for t in (u, delta, A, B, C, kwargs["D"], kwargs["delta_bias"])}
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["kwargs"] = kwargs
        return real_scan(u, delta, A, B, C, **kwargs)

    monkeypatch.setattr(ssm_module, "selective_scan", spy)
    ssm = SelectiveSSM(8, directions=2, d_state=4, scan_backend="auto")
    sequences = torch.randn(1, 2, 8, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ssm(sequences)
    assert seen["dtypes"] == {torch.float32}
    assert seen["autocast"] is False
    assert seen["kwargs"]["delta_softplus"] is True and seen["kwargs"]["backend"] == "auto"
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"directions=3"):
        SelectiveSSM(8, directions=3)
    with pytest.raises(ValueError, match=r"d_state=0"):
        SelectiveSSM(8, d_state=0)
    with pytest.raises(ValueError, match=r"expected sequences of shape \(B, 1, 8, T\)"):
        SelectiveSSM(8)(torch.randn(1, 2, 8, 4))

"""The torch backend of ``selective_scan`` against the float64 sequential reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from logvmamba_nnunet.ops import scan_torch, selective_scan
from logvmamba_nnunet.ops.reference import selective_scan_reference

OUTPUT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_case(
    length: int,
    regime: str,
    *,
    groups: int | None,
    with_D: bool,
    with_z: bool,
    with_bias: bool,
    softplus: bool,
    seed: int,
    batch: int = 2,
    channels: int = 4,
    state: int = 4,
) -> dict[str, torch.Tensor | None]:
    """Fresh random fp32 inputs. ``groups=None`` gives ungrouped (B, N, L) B/C.

    Regimes: "default" is Mamba's initialisation (A = -(1..16) spread over N, dt log-uniform in
    [1e-3, 0.1] through delta_bias/softplus); "large" has steps up to ~3 so that delta * A reaches -50.
    """
    gen = torch.Generator().manual_seed(seed)
    A = -torch.linspace(1.0, 16.0, state).repeat(channels, 1) * (1 + 0.1 * torch.rand(channels, state, generator=gen))
    shape = (batch, channels, length)
    if regime == "default":
        dt = torch.exp(torch.empty(channels).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
        if softplus:
            bias = dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)
            delta = 0.3 * torch.randn(shape, generator=gen)
        else:
            bias = 0.1 * dt
            delta = dt[:, None] * (0.5 + torch.rand(shape, generator=gen))
    else:
        bias = 0.2 * torch.randn(channels, generator=gen)
        # Steps up to 50 / 16 (plus the bias) so that delta * A reaches about -50.
        delta = torch.rand(shape, generator=gen) * 3.2
        delta[..., length // 2] = 3.2  # make sure the extreme step occurs
    B_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    return {
        "u": torch.randn(shape, generator=gen),
        "delta": delta,
        "A": A,
        "B": torch.randn(B_shape, generator=gen),
        "C": torch.randn(B_shape, generator=gen),
        "D": torch.randn(channels, generator=gen) if with_D else None,
        "z": torch.randn(shape, generator=gen) if with_z else None,
        "delta_bias": bias if with_bias else None,
    }


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.norm().item()
    error = (value.double() - reference).norm().item()
    return error / scale if scale > 0 else error


def run_both(case: dict, softplus: bool, chunk_size: int | None = None, seed: int = 0):
    """Outputs, last states and gradients of the torch backend (fp32) and the reference (float64)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    batch, channels, length = case["u"].shape
    grad_y = torch.randn(batch, channels, length, generator=gen)
    grad_last = torch.randn(batch, channels, case["A"].shape[1], generator=gen)
    ours = {k: None if v is None else v.clone().requires_grad_(True) for k, v in case.items()}
    ref = {k: None if v is None else v.double().requires_grad_(True) for k, v in case.items()}
    y, last = selective_scan(
        **ours, delta_softplus=softplus, return_last_state=True, backend="torch", chunk_size=chunk_size
    )
    ((y * grad_y).sum() + (last * grad_last).sum()).backward()
    y_ref, last_ref = selective_scan_reference(**ref, delta_softplus=softplus, return_last_state=True)
    ((y_ref * grad_y.double()).sum() + (last_ref * grad_last.double()).sum()).backward()
    return (y, last, ours), (y_ref, last_ref, ref)


def assert_matches_reference(case: dict, softplus: bool, chunk_size: int | None = None) -> None:
    (y, last, ours), (y_ref, last_ref, ref) = run_both(case, softplus, chunk_size)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert relative_error(y, y_ref) <= OUTPUT_TOLERANCE
    assert relative_error(last, last_ref) <= OUTPUT_TOLERANCE
    for name in NAMES:
        if ours[name] is None:
            continue
        grad = ours[name].grad
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        error = relative_error(grad, ref[name].grad)
        assert error <= GRADIENT_TOLERANCE, f"gradient of {name}: relative error {error:.2e}"


@pytest.mark.parametrize("length", [1, 7, 127, 1000, 4096])
@pytest.mark.parametrize("regime", ["default", "large"])
@pytest.mark.parametrize("full", [True, False], ids=["grouped+D+z+bias+softplus", "ungrouped-plain"])
def test_matches_reference_over_lengths(length: int, regime: str, full: bool) -> None:
    state = 16 if length <= 127 else 4
    case = make_case(
        length, regime, groups=2 if full else None, with_D=full, with_z=full, with_bias=full,
        softplus=full, seed=length + (7 if full else 0), state=state,
    )
    assert_matches_reference(case, softplus=full)


def test_large_regime_reaches_minus_fifty() -> None:
    case = make_case(127, "large", groups=None, with_D=False, with_z=False, with_bias=False,
                     softplus=False, seed=3, state=16)
    assert (case["delta"][..., None] * case["A"][None, :, None, :]).min() <= -50


@pytest.mark.parametrize(
    ("with_D", "with_z", "with_bias", "softplus"), list(itertools.product([False, True], repeat=4))
)
def test_every_option_combination(with_D: bool, with_z: bool, with_bias: bool, softplus: bool) -> None:
    case = make_case(37, "default", groups=4, with_D=with_D, with_z=with_z, with_bias=with_bias,
                     softplus=softplus, seed=11)
    assert_matches_reference(case, softplus=softplus)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 50, 64, 1000])
def test_any_chunk_size_gives_the_same_scan(chunk_size: int) -> None:
    case = make_case(50, "large", groups=1, with_D=True, with_z=True, with_bias=True, softplus=True, seed=5)
    assert_matches_reference(case, softplus=True, chunk_size=chunk_size)


def test_backward_in_several_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny block budget forces the backward to walk the chunks in many blocks (and a ragged last one)."""
    monkeypatch.setattr(scan_torch, "_BLOCK_ELEMENTS", 1)
    case = make_case(203, "default", groups=2, with_D=True, with_z=True, with_bias=True, softplus=True, seed=9)
    assert_matches_reference(case, softplus=True, chunk_size=10)


def test_backward_keeps_only_inputs_and_chunk_starts() -> None:
    """The autograd node saves the inputs plus (B, D, N) states at the K chunk starts, nothing (B, D, L, N)."""
    case = make_case(4096, "default", groups=None, with_D=True, with_z=True, with_bias=True, softplus=True,
                     seed=2, batch=1, channels=8, state=16)
    inputs = {k: v.requires_grad_(True) for k, v in case.items() if v is not None}
    y = selective_scan(**inputs, delta_softplus=True, backend="torch")
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    input_elements = sum(t.numel() for t in inputs.values()) + case["B"].numel()  # B/C normalised to 4-D views
    chunks = math.ceil(4096 / scan_torch.default_chunk_size(4096))
    assert sum(t.numel() for t in saved) <= input_elements + 1 * 8 * 16 * chunks
    assert sum(t.numel() for t in saved) < 1 * 8 * 4096 * 16  # never a (B, D, L, N) tensor


def test_default_chunk_size_grows_like_sqrt_length() -> None:
    assert scan_torch.default_chunk_size(1) == 1
    assert scan_torch.default_chunk_size(32768) == 128
    assert all(scan_torch.default_chunk_size(n) <= math.isqrt(n) + 1 for n in (7, 127, 1000, 4096))


def test_gradcheck_float64() -> None:
    """Autograd's numerical check of every gradient, with two chunks and padding (L = 7, T = 4)."""
    case = make_case(7, "default", groups=2, with_D=True, with_z=True, with_bias=True, softplus=True, seed=4,
                     batch=1, channels=2, state=3)
    inputs = tuple(case[k].double().requires_grad_(True) for k in NAMES)

    def scan(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return selective_scan(*args, delta_softplus=True, return_last_state=True, backend="torch", chunk_size=4)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_repeated_runs_are_bit_identical() -> None:
    case = make_case(300, "default", groups=2, with_D=True, with_z=True, with_bias=True, softplus=True, seed=8,
                     channels=8)
    runs = []
    for _ in range(2):
        (y, last, ours), _ = run_both(case, softplus=True)
        runs.append([y, last, *(ours[k].grad for k in NAMES)])
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    case = make_case(64, "default", groups=None, with_D=True, with_z=True, with_bias=True, softplus=True, seed=6)
    low = {k: v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v for k, v in case.items()}
    y, last = selective_scan(**low, delta_softplus=True, return_last_state=True, backend="torch")
    assert y.dtype == dtype and last.dtype == torch.float32
    y_ref, last_ref = selective_scan_reference(**low, delta_softplus=True, return_last_state=True)
    # The state is computed in float32 from the rounded inputs: only the output rounding remains.
    assert relative_error(last, last_ref) <= OUTPUT_TOLERANCE
    assert relative_error(y, y_ref.to(dtype).double()) <= 1e-3


def test_elementwise_contractions_used_on_cuda_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA code path (contractions as products and sums instead of bmm), run on CPU."""
    monkeypatch.setattr(scan_torch, "_use_matmul", lambda x: False)
    case = make_case(130, "large", groups=2, with_D=True, with_z=True, with_bias=True, softplus=True, seed=12)
    assert_matches_reference(case, softplus=True, chunk_size=16)


def test_autocast_does_not_lower_the_precision() -> None:
    case = make_case(200, "default", groups=None, with_D=True, with_z=True, with_bias=True, softplus=True,
                     seed=13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(**case, delta_softplus=True, backend="torch")
    y_ref = selective_scan_reference(**case, delta_softplus=True)
    assert y.dtype == torch.float32
    assert relative_error(y, y_ref) <= OUTPUT_TOLERANCE


def test_gradient_through_the_last_state_only() -> None:
    case = make_case(90, "default", groups=None, with_D=False, with_z=False, with_bias=True, softplus=True,
                     seed=14)
    ours = {k: v.clone().requires_grad_(True) for k, v in case.items() if v is not None}
    ref = {k: v.double().requires_grad_(True) for k, v in case.items() if v is not None}
    selective_scan(**ours, delta_softplus=True, return_last_state=True, backend="torch")[1].sum().backward()
    selective_scan_reference(**ref, delta_softplus=True, return_last_state=True)[1].sum().backward()
    assert ref["C"].grad is None  # C does not reach the state
    assert ours["C"].grad is None or not ours["C"].grad.any()
    for name in ("u", "delta", "A", "B", "delta_bias"):
        assert relative_error(ours[name].grad, ref[name].grad) <= GRADIENT_TOLERANCE, name


@pytest.mark.parametrize(
    ("length", "chunk_size", "step_elements", "block_elements", "regime"),
    [
        (4096, None, None, None, "default"),  # a long sequence with the default plan
        (4001, None, 1 << 10, 1 << 14, "default"),  # many blocks, a ragged last block and a padded last chunk
        (4001, None, 1 << 10, 1 << 14, "large"),
        (203, 8, 1, 1, "large"),  # one chunk per block (the last one padded)
        (5, 16, None, None, "default"),  # shorter than one chunk
        (1, None, None, None, "default"),
        (37, 1, 1 << 8, 1 << 10, "default"),  # chunks of one step, several blocks
    ],
)
def test_long_sequences_and_block_edges_match_reference(
    monkeypatch: pytest.MonkeyPatch, length: int, chunk_size: int | None, step_elements: int | None,
    block_elements: int | None, regime: str,
) -> None:
    """Outputs, last state and every gradient at a long sequence and where chunks and blocks end."""
    if step_elements is not None:
        monkeypatch.setattr(scan_torch, "_STEP_ELEMENTS", step_elements)
        monkeypatch.setattr(scan_torch, "_BLOCK_ELEMENTS", block_elements)
    case = make_case(length, regime, groups=None, with_D=True, with_z=True, with_bias=True, softplus=True,
                     seed=length + 17, batch=2, channels=4, state=16)
    plan = scan_torch._make_plan(length, 2 * 4 * 16, chunk_size, torch.device("cpu"))
    assert plan.padded_length >= length
    if step_elements is not None and length > 1000:
        assert plan.n_blocks > 2 and plan.n_chunks % plan.chunks_per_block != 0
        assert length % plan.chunk_len != 0
    assert_matches_reference(case, softplus=True, chunk_size=chunk_size)


def test_results_of_one_call_survive_the_next() -> None:
    """The CPU workspace is reused between calls; nothing a call returns may live in it."""
    first = make_case(300, "default", groups=None, with_D=True, with_z=False, with_bias=True, softplus=True, seed=21)
    second = make_case(300, "large", groups=None, with_D=True, with_z=False, with_bias=True, softplus=True, seed=22)
    (y, last, ours), _ = run_both(first, softplus=True)
    kept = [t.clone() for t in (y, last, *(ours[k].grad for k in NAMES if ours[k] is not None))]
    run_both(second, softplus=True)
    for before, after in zip(kept, (y, last, *(ours[k].grad for k in NAMES if ours[k] is not None)), strict=True):
        assert torch.equal(before, after)

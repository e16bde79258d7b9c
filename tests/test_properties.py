"""Property-based tests (hypothesis): the torch scan against the float64 reference for random shapes, groups,
dtypes, step regimes and optional inputs; token placement and scan directions as exact round trips.

The example counts are small and there is no deadline, so the default suite stays fast; run with
``--hypothesis-seed`` (or ``HYPOTHESIS_PROFILE=thorough``, 20x the examples) to search further.
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logvmamba_nnunet.modules.scan_directions import DIRECTIONS, ScanLayout, direction_orders
from logvmamba_nnunet.modules.token_placement import PLACEMENTS, TokenPlacement
from logvmamba_nnunet.ops import selective_scan
from logvmamba_nnunet.ops.reference import selective_scan_reference

SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1
# no example database: nothing is written into the checkout
QUICK = settings(max_examples=25 * SCALE, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# relative L2 error of the output against float64: fp32 compute; bf16/fp16 outputs add their rounding (2^-9, 2^-12)
OUTPUT_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@st.composite
def scan_cases(draw, dtypes=(torch.float32, torch.bfloat16, torch.float16)):
    """Shapes, groups (None: B and C shared, (B, N, L)), dtype, step regime, optional D / z / delta_bias, softplus,
    chunk size, and a seed for the values."""
    groups = draw(st.sampled_from([None, 1, 2, 3]))
    channels = (groups or 1) * draw(st.integers(1, 3))
    return {
        "batch": draw(st.integers(1, 2)), "channels": channels, "groups": groups,
        "state": draw(st.integers(1, 5)), "length": draw(st.integers(1, 48)),
        "dtype": draw(st.sampled_from(dtypes)), "regime": draw(st.sampled_from(["small", "large"])),
        "with_D": draw(st.booleans()), "with_z": draw(st.booleans()), "with_bias": draw(st.booleans()),
        "softplus": draw(st.booleans()), "chunk_size": draw(st.sampled_from([None, 1, 4, 16])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def make_inputs(case: dict) -> dict[str, torch.Tensor | None]:
    """Mamba-like values: A = -(1..16) spread over the state; positive steps (after bias and softplus) around
    1e-3..0.1 ("small", Mamba's initialisation) or up to ~3, so that delta * A reaches about -50 ("large").
    Sequence tensors in the case's dtype, parameters in fp32."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, d, n, length = case["batch"], case["channels"], case["state"], case["length"]
    shape = (b, d, length)
    A = -torch.linspace(1.0, 16.0, n).repeat(d, 1) * (1 + 0.1 * torch.rand(d, n, generator=gen))
    if case["regime"] == "small":
        dt = torch.exp(torch.empty(d).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
        if case["softplus"]:  # delta + bias is softplus^-1(dt) give or take 0.3
            inverse = dt + torch.log(-torch.expm1(-dt))
            bias = inverse
            delta = 0.3 * torch.randn(shape, generator=gen) + (0 if case["with_bias"] else inverse[:, None])
        else:
            bias = 0.1 * dt
            delta = dt[:, None] * (0.5 + torch.rand(shape, generator=gen))
    else:
        bias = 0.2 * torch.rand(d, generator=gen)
        delta = 3.2 * torch.rand(shape, generator=gen)
    bc_shape = (b, n, length) if case["groups"] is None else (b, case["groups"], n, length)
    dtype = case["dtype"]
    return {
        "u": torch.randn(shape, generator=gen).to(dtype), "delta": delta.to(dtype), "A": A,
        "B": torch.randn(bc_shape, generator=gen).to(dtype), "C": torch.randn(bc_shape, generator=gen).to(dtype),
        "D": torch.randn(d, generator=gen) if case["with_D"] else None,
        "z": torch.randn(shape, generator=gen).to(dtype) if case["with_z"] else None,
        "delta_bias": bias if case["with_bias"] else None,
    }


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.norm().item()
    error = (value.double() - reference).norm().item()
    return error / scale if scale > 0 else error


@QUICK
@given(scan_cases())
def test_torch_scan_matches_the_float64_reference(case):
    inputs = make_inputs(case)
    y, last = selective_scan(**inputs, delta_softplus=case["softplus"], return_last_state=True, backend="torch",
                             chunk_size=case["chunk_size"])
    y_ref, last_ref = selective_scan_reference(**inputs, delta_softplus=case["softplus"], return_last_state=True)
    assert y.dtype == case["dtype"] and y.shape == y_ref.shape and last.shape == last_ref.shape
    assert torch.isfinite(y).all()
    assert relative_error(y, y_ref) <= OUTPUT_TOLERANCE[case["dtype"]]
    assert relative_error(last, last_ref) <= 1e-5  # the state stays fp32 for every input dtype


@settings(QUICK, max_examples=10 * SCALE)
@given(scan_cases(dtypes=(torch.float32,)))
def test_torch_scan_gradients_match_the_float64_reference(case):
    inputs = make_inputs(case)
    ours = {k: None if v is None else v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref = {k: None if v is None else v.double().requires_grad_(True) for k, v in inputs.items()}
    grad = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(case["seed"] + 1))
    selective_scan(**ours, delta_softplus=case["softplus"], backend="torch",
                   chunk_size=case["chunk_size"]).backward(grad)
    selective_scan_reference(**ref, delta_softplus=case["softplus"]).backward(grad.double())
    for name, tensor in ours.items():
        if tensor is not None:
            assert relative_error(tensor.grad, ref[name].grad) <= 1e-4, name


@QUICK
@given(st.sampled_from(PLACEMENTS), st.integers(1, 300), st.integers(0, 64), st.integers(1, 3))
def test_token_placement_round_trip(mode, n_local, n_global, width):
    """remove(place(local, global), G) == local; globals sit in their slots, in order; locals keep their order."""
    placement = TokenPlacement(mode)
    local = torch.arange(1, n_local + 1, dtype=torch.float32).repeat(width, 1)
    global_tokens = -torch.arange(1, n_global + 1, dtype=torch.float32).repeat(width, 1)
    sequence = placement.place(local, global_tokens)
    assert sequence.shape == (width, n_local + n_global)
    assert torch.equal(placement.remove(sequence, n_global), local)
    local_slots, global_slots = placement.slots(n_local, n_global)
    assert torch.equal(torch.sort(torch.cat([local_slots, global_slots])).values, torch.arange(n_local + n_global))
    assert torch.equal(sequence[:, global_slots], global_tokens)
    assert torch.equal(sequence[:, local_slots], local)
    if n_global:
        assert bool((sequence[0] > 0).sum() == n_local)


spatial_sizes = st.one_of(st.lists(st.integers(1, 7), min_size=2, max_size=2),
                          st.lists(st.integers(1, 5), min_size=3, max_size=3))


@QUICK
@given(spatial_sizes, st.sampled_from(DIRECTIONS))
def test_scan_orders_are_permutations_whose_inverse_restores_raster_order(spatial_size, directions):
    orders = direction_orders(spatial_size, directions)
    n = math.prod(spatial_size)
    assert orders.shape == (directions, n)
    raster = torch.arange(n)
    tokens = torch.randn(n)
    for order in orders:
        assert torch.equal(torch.sort(order).values, raster)
        inverse = torch.empty_like(order)
        inverse[order] = raster
        assert torch.equal(tokens[order][inverse], tokens)
    assert torch.equal(orders[0], raster)


@QUICK
@given(spatial_sizes, st.sampled_from(DIRECTIONS), st.sampled_from(PLACEMENTS), st.integers(0, 9))
def test_scan_layout_sequences_and_back(spatial_size, directions, placement, n_global):
    """Each direction's sequence is its scan order of the locals with the globals placed in it; reading the outputs
    back gives every direction's locals in raster order."""
    n_local = math.prod(spatial_size)
    layout = ScanLayout(directions, placement)
    tokens = torch.randn(2, 3, n_local + n_global)
    sequences = layout.to_sequences(tokens, spatial_size, n_global)
    assert sequences.shape == (2, directions, 3, n_local + n_global)
    local_slots, global_slots = TokenPlacement(placement).slots(n_local, n_global)
    for k, order in enumerate(direction_orders(spatial_size, directions)):
        assert torch.equal(sequences[:, k][..., local_slots], tokens[..., order])
        assert torch.equal(sequences[:, k][..., global_slots], tokens[..., n_local:])
    back = layout.to_raster(sequences, spatial_size, n_global)
    assert torch.equal(back, tokens[:, None, :, :n_local].expand(-1, directions, -1, -1))

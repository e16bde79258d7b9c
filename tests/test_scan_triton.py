"""Triton selective-scan backend against the float64 reference, run on CPU in Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, while other tests import triton normally,
so the kernels run in one subprocess (this file executed as a script) that evaluates every case below
and prints the measured errors as JSON; the tests check those numbers. Interpreter runs are slow, so
the shapes are small; they still cover several tiles and chunks, grouped B/C, a channel block of one
(three channels per group), every optional input, softplus, the last state and large steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

OUTPUT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# name -> (batch, channels, d_state, length, groups, options)
CASES: dict[str, tuple[int, int, int, int, int, dict]] = {
    "all_options_three_chunks": (2, 8, 16, 70, 1, {"D": True, "z": True, "delta_bias": True,
                                                  "softplus": True, "last_state": True, "chunk_size": 32}),
    "grouped_plain_auto_chunks": (2, 8, 4, 70, 2, {}),
    "length_one": (1, 4, 4, 1, 1, {"D": True, "z": True, "delta_bias": True, "softplus": True,
                                   "last_state": True}),
    "length_seven_three_channels_per_group": (1, 6, 4, 7, 2, {"D": True, "z": True, "softplus": True}),
    "large_steps": (1, 4, 8, 40, 1, {"D": True, "delta_bias": True, "softplus": True, "last_state": True,
                                     "large_steps": True, "chunk_size": 16}),
    "last_state_gradient_only": (1, 4, 4, 20, 1, {"z": True, "last_state": True, "loss": "last_state",
                                                  "chunk_size": 8}),
    "bfloat16_inputs": (1, 4, 4, 20, 1, {"D": True, "z": True, "dtype": "bfloat16", "last_state": True}),
}
DETERMINISM_CASE = "grouped_plain_auto_chunks"


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def _inputs(batch: int, channels: int, d_state: int, length: int, groups: int, options: dict,
            seed: int) -> dict[str, torch.Tensor | None]:
    """Fresh random inputs; Mamba-like init, or steps large enough that delta * A reaches -50 and beyond."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    dtype = getattr(torch, options.get("dtype", "float32"))
    if options.get("large_steps"):
        delta = normal(batch, channels, length) + 3.0
        A = -torch.linspace(1.0, 16.0, d_state).repeat(channels, 1)
    else:
        delta = normal(batch, channels, length) * 0.5 - 2.0
        A = -torch.exp(normal(channels, d_state) * 0.5 + 1.0)
    if not options.get("softplus"):
        delta = F.softplus(delta)
    return {
        "u": normal(batch, channels, length).to(dtype),
        "delta": delta.to(dtype),
        "A": A,
        "B": normal(batch, groups, d_state, length).to(dtype),
        "C": normal(batch, groups, d_state, length).to(dtype),
        "D": normal(channels) if options.get("D") else None,
        "z": normal(batch, channels, length).to(dtype) if options.get("z") else None,
        "delta_bias": normal(channels) * 0.5 if options.get("delta_bias") else None,
    }


def _run(scan, inputs: dict, options: dict, output_weights: tuple[torch.Tensor, torch.Tensor],
         cast=None) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Run ``scan`` with gradients; returns the outputs and the gradients of every input."""
    leaves = {name: None if x is None else (x if cast is None else cast(x)).clone().requires_grad_()
              for name, x in inputs.items()}
    outputs = scan(**leaves, delta_softplus=bool(options.get("softplus")),
                   return_last_state=bool(options.get("last_state")))
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    weight_y, weight_state = output_weights
    loss = outputs[1].mul(weight_state.to(outputs[1].dtype)).sum() if options.get("last_state") else 0.0
    if options.get("loss") != "last_state":
        loss = loss + outputs[0].mul(weight_y.to(outputs[0].dtype)).sum()
    loss.backward()
    return [x.detach() for x in outputs], [None if x is None else x.grad for x in leaves.values()]


def _evaluate_case(name: str) -> dict:
    """Worker side: run one case through the Triton kernels and the float64 reference."""
    from logvmamba_nnunet.ops.reference import selective_scan_reference
    from logvmamba_nnunet.ops.scan_triton import selective_scan_triton

    batch, channels, d_state, length, groups, options = CASES[name]
    inputs = _inputs(batch, channels, d_state, length, groups, options, seed=len(name))
    generator = torch.Generator().manual_seed(1)
    weights = (torch.randn(batch, channels, length, generator=generator),
               torch.randn(batch, channels, d_state, generator=generator))

    def triton_scan(**kwargs):
        return selective_scan_triton(**kwargs, chunk_size=options.get("chunk_size"))

    outputs, grads = _run(triton_scan, inputs, options, weights)
    expected_outputs, expected_grads = _run(selective_scan_reference, inputs, options, weights,
                                            cast=lambda x: x.double())
    with torch.no_grad():
        no_grad_outputs = triton_scan(**inputs, delta_softplus=bool(options.get("softplus")),
                                      return_last_state=False)
    result = {
        "output_errors": [_relative_error(a, b) for a, b in zip(outputs, expected_outputs, strict=True)],
        "output_dtypes": [str(x.dtype) for x in outputs],
        "no_grad_output_equal": bool(torch.equal(no_grad_outputs, outputs[0])),
        "gradient_errors": {},
        "gradient_dtypes_match": all(g is None or g.dtype == x.dtype for g, x in zip(grads, inputs.values(),
                                                                                   strict=True)),
        "all_finite": all(torch.isfinite(x).all().item() for x in [*outputs, *grads] if x is not None),
    }
    result["unused_gradients_zero"] = True
    for input_name, grad, expected in zip(INPUT_NAMES, grads, expected_grads, strict=True):
        if expected is not None:
            result["gradient_errors"][input_name] = _relative_error(grad, expected)
        elif grad is not None:  # an input the loss does not depend on (C when only h_{L-1} is used)
            result["unused_gradients_zero"] &= not grad.any().item()
    if name == DETERMINISM_CASE:
        repeat_outputs, repeat_grads = _run(triton_scan, inputs, options, weights)
        pairs = zip([*outputs, *grads], [*repeat_outputs, *repeat_grads], strict=True)
        result["bit_identical_repeat"] = all(a is None or torch.equal(a, b) for a, b in pairs)
        result.update(_memo_replay(triton_scan, inputs, options, weights, [*outputs, *grads]))
    return result


def _memo_replay(triton_scan, inputs: dict, options: dict, weights: tuple, expected: list) -> dict:
    """Worker side: a scan memo's first session runs the forward kernels; a second session replays its results
    without them, and its backward gives the expected outputs and gradients."""
    from logvmamba_nnunet.ops import scan_triton
    from logvmamba_nnunet.ops.scan_memo import ScanMemo

    calls = []
    forward = scan_triton._forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    scan_triton._forward = counted
    memo = ScanMemo()
    try:
        with memo.session():
            _run(triton_scan, inputs, options, weights)
        with memo.session():
            replay_outputs, replay_grads = _run(triton_scan, inputs, options, weights)
    finally:
        scan_triton._forward = forward
    pairs = zip(expected, [*replay_outputs, *replay_grads], strict=True)
    return {"memo_forward_calls": len(calls),
            "memo_replay_identical": all(a is None or torch.equal(a, b) for a, b in pairs)}


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    environment = dict(os.environ, TRITON_INTERPRET="1")
    completed = subprocess.run([sys.executable, __file__], env=environment, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_float64_reference(interpreter_results: dict, name: str) -> None:
    result = interpreter_results[name]
    tolerance = OUTPUT_TOLERANCE
    assert result["output_dtypes"] == ["torch.float32"] * len(result["output_errors"])
    assert max(result["output_errors"]) <= tolerance, result["output_errors"]
    assert result["no_grad_output_equal"]
    assert result["all_finite"]


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_float64_reference(interpreter_results: dict, name: str) -> None:
    result = interpreter_results[name]
    options = CASES[name][-1]
    # bfloat16 inputs receive bfloat16 gradients: rounding them costs about 2**-9 relative error.
    tolerance = 1e-2 if options.get("dtype") == "bfloat16" else GRADIENT_TOLERANCE
    optional_inputs = {key for key in ("D", "z", "delta_bias") if options.get(key)}
    expected_inputs = {"u", "delta", "A", "B", "C"} | optional_inputs
    if options.get("loss") == "last_state":
        expected_inputs -= {"C", "D", "z"}
    assert set(result["gradient_errors"]) == expected_inputs
    assert max(result["gradient_errors"].values()) <= tolerance, result["gradient_errors"]
    assert result["gradient_dtypes_match"]
    assert result["unused_gradients_zero"]


def test_repeated_runs_are_bit_identical(interpreter_results: dict) -> None:
    assert interpreter_results[DETERMINISM_CASE]["bit_identical_repeat"]


def test_scan_memo_replays_without_the_forward_kernels(interpreter_results: dict) -> None:
    result = interpreter_results[DETERMINISM_CASE]
    assert result["memo_forward_calls"] == 1 and result["memo_replay_identical"]


def _small_cpu_inputs() -> list[torch.Tensor | None]:
    generator = torch.Generator().manual_seed(0)
    u, delta = torch.randn(1, 2, 5, generator=generator), torch.rand(1, 2, 5, generator=generator)
    A = -torch.rand(2, 4, generator=generator)
    B, C = torch.randn(1, 1, 4, 5, generator=generator), torch.randn(1, 1, 4, 5, generator=generator)
    return [u, delta, A, B, C, None, None, None]


def test_cpu_tensors_without_interpreter_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    from logvmamba_nnunet.ops.scan_triton import selective_scan_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        selective_scan_triton(*_small_cpu_inputs(), False, False)


def test_bad_chunk_size_and_empty_sequence_raise() -> None:
    from logvmamba_nnunet.ops.scan_triton import selective_scan_triton

    inputs = _small_cpu_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_triton(*inputs, False, False, chunk_size=0)
    empty = [None if x is None else (x[..., :0] if x.dim() > 2 else x) for x in inputs]
    with pytest.raises(ValueError, match="at least one step"):
        selective_scan_triton(*empty, False, False)


def test_module_imports_without_triton_and_raises_on_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import logvmamba_nnunet.ops.scan_triton as installed

    monkeypatch.setitem(sys.modules, "triton", None)  # makes ``import triton`` raise ImportError
    spec = importlib.util.spec_from_file_location("scan_triton_without_triton", Path(installed.__file__))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.TRITON_AVAILABLE is False
    with pytest.raises(RuntimeError, match="needs the 'triton' package"):
        module.selective_scan_triton(*_small_cpu_inputs(), False, False)


if __name__ == "__main__":
    print(json.dumps({case: _evaluate_case(case) for case in CASES}))

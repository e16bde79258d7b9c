"""Bad arguments to ``selective_scan`` raise ValueError naming the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

from logvmamba_nnunet.ops import selective_scan


def valid_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "u": torch.randn(2, 4, 5, generator=gen),
        "delta": torch.rand(2, 4, 5, generator=gen),
        "A": -torch.rand(4, 3, generator=gen),
        "B": torch.randn(2, 3, 5, generator=gen),
        "C": torch.randn(2, 3, 5, generator=gen),
        "D": torch.randn(4, generator=gen),
        "z": torch.randn(2, 4, 5, generator=gen),
        "delta_bias": torch.randn(4, generator=gen),
    }


CASES = {
    "u is 2-D": ("u", torch.randn(4, 5), r"u must be a tensor of shape \(B, D, L\)"),
    "u is a list": ("u", [[1.0]], r"u must be a tensor of shape \(B, D, L\), got list"),
    "u is int": ("u", torch.ones(2, 4, 5, dtype=torch.int64), "u must have dtype"),
    "delta length": ("delta", torch.rand(2, 4, 6), r"delta must have shape \(B, D, L\) = \(2, 4, 5\)"),
    "A channels": ("A", -torch.rand(5, 3), r"A must have shape \(D, N\) = \(4, 3\)"),
    "A 1-D": ("A", -torch.rand(4), r"A must be a tensor of shape \(D, N\)"),
    "A half": ("A", -torch.rand(4, 3).half(), "A must have dtype float32, float64"),
    "B state": ("B", torch.randn(2, 2, 5), r"B must have shape \(B, G, N, L\) = \(2, 1, 3, 5\)"),
    "B 5-D": ("B", torch.randn(2, 1, 1, 3, 5), r"B must be a tensor of shape \(B, N, L\) or \(B, G, N, L\)"),
    "B groups": ("B", torch.randn(2, 3, 3, 5), "B has 3 groups, which does not divide the 4 channels"),
    "C length": ("C", torch.randn(2, 3, 4), r"C must have shape \(B, G, N, L\) = \(2, 1, 3, 5\)"),
    "D shape": ("D", torch.randn(3), r"D must have shape \(D,\) = \(4,\)"),
    "z shape": ("z", torch.randn(2, 4), r"z must have shape \(B, D, L\)"),
    "delta_bias dtype": ("delta_bias", torch.randn(4).bfloat16(), "delta_bias must have dtype float32"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_argument_raises_value_error(case: str) -> None:
    name, value, message = CASES[case]
    inputs = valid_inputs()
    inputs[name] = value
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, backend="torch")


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_bad_chunk_size(chunk_size: object) -> None:
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        selective_scan(**valid_inputs(), backend="torch", chunk_size=chunk_size)


def test_tensors_on_different_devices() -> None:
    inputs = valid_inputs()
    inputs["z"] = inputs["z"].to("meta")
    with pytest.raises(ValueError, match="all tensors must be on one device.*z on meta"):
        selective_scan(**inputs, backend="torch")


def test_valid_inputs_pass() -> None:
    y, last = selective_scan(**valid_inputs(), delta_softplus=True, return_last_state=True, backend="torch")
    assert y.shape == (2, 4, 5) and last.shape == (2, 4, 3)

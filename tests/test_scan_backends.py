"""Backend selection, the environment override, lazy optional imports and dispatch of ``selective_scan``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from logvmamba_nnunet.ops import backends, selective_scan
from logvmamba_nnunet.ops.reference import selective_scan_reference

# The package re-exports the function under its module's name; this is the module.
selective_scan_module = importlib.import_module("logvmamba_nnunet.ops.selective_scan")

ENV = backends.BACKEND_ENV_VAR


def small_inputs(grouped: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    B_shape = (2, 2, 3, 9) if grouped else (2, 3, 9)
    return {
        "u": torch.randn(2, 4, 9, generator=gen),
        "delta": torch.rand(2, 4, 9, generator=gen),
        "A": -torch.rand(4, 3, generator=gen),
        "B": torch.randn(B_shape, generator=gen),
        "C": torch.randn(B_shape, generator=gen),
    }


@pytest.fixture
def failing_mamba(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A fresh, never-attempted mamba-ssm loader whose import fails; returns the list of import attempts."""
    attempts: list[str] = []
    real_import = importlib.import_module

    def counting_import(name: str, *args, **kwargs):
        attempts.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm...` raise ImportError
    monkeypatch.setattr(backends.importlib, "import_module", counting_import)
    monkeypatch.setattr(backends, "_MAMBA_SSM", backends.OptionalImport(backends._MAMBA_SSM.module,
                                                                         backends._MAMBA_SSM.attribute))
    return attempts


def test_package_import_does_not_import_optional_backends() -> None:
    code = (
        "import sys, logvmamba_nnunet.ops as ops; "
        "print(sorted(m for m in ('mamba_ssm', 'triton', 'logvmamba_nnunet.ops.scan_triton') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_auto_on_cpu_is_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert backends.resolve_backend("auto", "cpu") == "torch"
    assert backends.resolve_backend("torch", "cpu") == "torch"


def test_failed_mamba_import_is_attempted_once_and_remembered(failing_mamba: list[str]) -> None:
    first = backends.describe_backends("cpu")
    second = backends.describe_backends("cpu")
    assert failing_mamba.count("mamba_ssm.ops.selective_scan_interface") == 1
    assert first["mamba_ssm"] == second["mamba_ssm"]
    available, reason = first["mamba_ssm"]
    assert not available
    assert "import mamba_ssm.ops.selective_scan_interface failed" in reason and "pip install" in reason


def test_describe_backends_lists_every_backend() -> None:
    description = backends.describe_backends("cpu")
    assert set(description) == set(backends.BACKENDS)
    assert description["torch"][0] is True
    assert all(isinstance(ok, bool) and isinstance(reason, str) and reason for ok, reason in description.values())


def test_env_var_forces_torch_and_explicit_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "torch")
    assert backends.resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv(ENV, "mamba_ssm")
    assert backends.resolve_backend("torch", "cpu") == "torch"
    y = selective_scan(**small_inputs(), backend="torch")
    assert y.shape == (2, 4, 9)


def test_forcing_unavailable_mamba_ssm_says_why_and_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, failing_mamba: list[str]
) -> None:
    monkeypatch.setenv(ENV, "mamba_ssm")
    with pytest.raises(RuntimeError) as error:
        selective_scan(**small_inputs())
    message = str(error.value)
    assert "mamba_ssm" in message and ENV in message
    assert "pip install 'logvmamba-nnunet[mamba]'" in message
    assert "backend='torch'" in message


def test_mamba_ssm_needs_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = backends.OptionalImport("math", "fsum")  # any importable stand-in for selective_scan_fn
    monkeypatch.setattr(backends, "_MAMBA_SSM", loader)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        backends.resolve_backend("mamba_ssm", "cpu")


def test_forcing_triton_on_cpu_without_interpreter_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backends, "_TRITON", backends.OptionalImport("math"))
    monkeypatch.setenv(ENV, "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selective_scan(**small_inputs())


def test_triton_is_available_on_cpu_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backends, "_TRITON", backends.OptionalImport("math"))
    monkeypatch.setattr(backends, "_TRITON_SCAN", backends.OptionalImport("math", "fsum"))
    assert backends.resolve_backend("triton", "cpu") == "triton"
    monkeypatch.delenv(ENV, raising=False)
    assert backends.resolve_backend("auto", "cpu") == "torch"  # auto picks triton only on CUDA


def test_missing_triton_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setattr(backends, "_TRITON", backends.OptionalImport("triton"))
    available, reason = backends.describe_backends("cpu")["triton"]
    assert not available and "import triton failed" in reason


@pytest.mark.parametrize("value", ["cuda", "Torch", "mamba"])
def test_unknown_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        backends.resolve_backend("auto", "cpu")


def test_unknown_backend_argument_is_rejected() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**small_inputs(), backend="cuda")


@pytest.mark.parametrize("name", ["triton", "mamba_ssm"])
def test_optional_backends_receive_grouped_fp32_arguments(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Dispatch contract: B/C normalised to (B, G, N, L), A/D/delta_bias float32, y cast to u.dtype."""
    received: dict[str, object] = {}

    def fake_backend(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, *rest):
        received.update(B=B, C=C, A=A, D=D, delta_bias=delta_bias, rest=rest)
        y = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus).float()
        return (y, torch.zeros(u.shape[0], u.shape[1], A.shape[1])) if return_last_state else y

    monkeypatch.setattr(selective_scan_module, "resolve_backend", lambda backend, device: name)
    monkeypatch.setattr(selective_scan_module, "load_optional_backend", lambda backend: fake_backend)
    inputs = small_inputs()
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    y, last = selective_scan(**inputs, D=torch.ones(4, dtype=torch.float64), return_last_state=True,
                             backend=name, chunk_size=3)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert received["B"].shape == (2, 1, 3, 9) and received["C"].shape == (2, 1, 3, 9)
    assert received["A"].dtype == torch.float32 and received["D"].dtype == torch.float32
    assert received["rest"] == ((3,) if name == "triton" else ())


def test_load_optional_backend_reports_failure(failing_mamba: list[str]) -> None:
    with pytest.raises(RuntimeError, match="unavailable"):
        backends.load_optional_backend("mamba_ssm")

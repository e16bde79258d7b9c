"""Public selective-scan entry point: argument validation and backend dispatch."""

from __future__ import annotations

import torch

from logvmamba_nnunet.ops.backends import load_optional_backend, resolve_backend
from logvmamba_nnunet.ops.flops import active_scan_flop_counter
from logvmamba_nnunet.ops.scan_inputs import as_grouped, check_chunk_size
from logvmamba_nnunet.ops.scan_memo import run_or_replay
from logvmamba_nnunet.ops.scan_torch import saved_state_shape, selective_scan_torch

_SEQUENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PARAMETER_DTYPES = (torch.float32, torch.float64)


def _check_tensor(name: str, x: object, shape: tuple[int, ...], expected: str, dtypes: tuple) -> None:
    """Raise ValueError unless ``x`` is a tensor of exactly ``shape`` with a dtype in ``dtypes``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}.")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {expected} = {shape}, got {tuple(x.shape)}.")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must have dtype {names}; got {str(x.dtype).removeprefix('torch.')}.")


def _grouped(name: str, x: object, batch: int, channels: int, state: int, length: int) -> torch.Tensor:
    """Validate B or C, given as (B, N, L) or (B, G, N, L), and return it grouped (B, G, N, L)."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, N, L) or (B, G, N, L), got {shape}.")
    x = as_grouped(x)
    groups = x.shape[1]
    if groups < 1 or channels % groups != 0:
        raise ValueError(f"{name} has {groups} groups, which does not divide the {channels} channels of u.")
    _check_tensor(name, x, (batch, groups, state, length), "(B, G, N, L)", _SEQUENCE_DTYPES)
    return x


def _check_devices(named: dict[str, torch.Tensor | None]) -> None:
    devices = {name: x.device for name, x in named.items() if x is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device; got {listed}.")


def _modelled_results(u: torch.Tensor, state: int, chunk_size: int | None) -> tuple[torch.Tensor, ...]:
    """Zeros shaped as what the torch scan returns and saves: y (b, d, L), the last state (b, d, n) and the
    chunk-start states, all float32; what a flop-counting run records in a scan memo."""
    batch, channels, length = u.shape
    shape = saved_state_shape(batch, channels, state, length, chunk_size, u.device)
    return tuple(u.new_zeros(s, dtype=torch.float32) for s in (u.shape, (batch, channels, state), shape))


def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False, return_last_state: bool = False, backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan (S6) with mamba-ssm's ``selective_scan_fn`` semantics.

    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t``, ``y_t = <C_t, h_t> + D * u_t``, then
    ``y * silu(z)``; ``delta`` gets ``delta_bias`` added and, with ``delta_softplus``, softplus.

    Args:
        u, delta: (B, D, L), float16/bfloat16/float32/float64 (computed in float32; float64 stays float64
            on the ``torch`` backend).
        A: (D, N) float32 (or float64).
        B, C: (B, N, L), or grouped (B, G, N, L) where channel d uses group d // (D // G).
        D: optional (D,) float32 skip weight. z: optional (B, D, L) gate. delta_bias: optional (D,) float32.
        delta_softplus: apply softplus (the identity above ``SOFTPLUS_THRESHOLD``, 20) to ``delta + delta_bias``.
        return_last_state: also return the final state h_{L-1}.
        backend: "auto", "torch", "triton" or "mamba_ssm" (see ``logvmamba_nnunet.ops.backends``; the
            environment variable ``LOGVMAMBA_SCAN_BACKEND`` applies when this is "auto").
        chunk_size: chunk length of the ``torch``/``triton`` backends (default: chosen from L).

    Returns:
        y (B, D, L) in ``u.dtype``, and with ``return_last_state`` also the last state (B, D, N) in
        float32 (float64 for float64 inputs on the ``torch`` backend).

    Raises:
        ValueError: a tensor has the wrong shape, dtype or device, or an option is invalid.
        RuntimeError: the requested backend cannot run here (the message says how to fix it).
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a tensor of shape (B, D, L), got {shape}.")
    batch, channels, length = u.shape
    _check_tensor("u", u, (batch, channels, length), "(B, D, L)", _SEQUENCE_DTYPES)
    _check_tensor("delta", delta, (batch, channels, length), "(B, D, L)", _SEQUENCE_DTYPES)
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must be a tensor of shape (D, N) with D = {channels}, got {shape}.")
    state = A.shape[1]
    _check_tensor("A", A, (channels, state), "(D, N)", _PARAMETER_DTYPES)
    B = _grouped("B", B, batch, channels, state, length)
    C = _grouped("C", C, batch, channels, state, length)
    if D is not None:
        _check_tensor("D", D, (channels,), "(D,)", _PARAMETER_DTYPES)
    if z is not None:
        _check_tensor("z", z, (batch, channels, length), "(B, D, L)", _SEQUENCE_DTYPES)
    if delta_bias is not None:
        _check_tensor("delta_bias", delta_bias, (channels,), "(D,)", _PARAMETER_DTYPES)
    check_chunk_size(chunk_size)
    _check_devices({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})

    counter = active_scan_flop_counter()
    if counter is not None:
        counter.add(batch, channels, length, state, D is not None, z is not None, (u, delta, B, C, z))
        y, last_state, _ = run_or_replay(u, lambda: _modelled_results(u, state, chunk_size))
        return (y.to(u.dtype), last_state) if return_last_state else y.to(u.dtype)
    name = resolve_backend(backend, u.device)
    if name == "torch":
        result = selective_scan_torch(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size
        )
    else:
        A, D, delta_bias = (None if x is None else x.float() for x in (A, D, delta_bias))
        run = load_optional_backend(name)
        if name == "triton":
            result = run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size)
        else:
            result = run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if return_last_state:
        y, last_state = result
        return y.to(u.dtype), last_state
    return result.to(u.dtype)

"""Exact two-level chunked selective scan in plain PyTorch, with a hand-written, memory-lean backward.

Notation: batch b, channels d = g * h (g groups of B/C, h channels per group), state size n, sequence
length L padded to ``n_chunks`` chunks of ``chunk_len`` steps. Padding steps have ``dt = 0`` and
``B = C = 0``, so they leave the state unchanged.

Forward:
1. scan every chunk from a zero state, all chunks at once (``chunk_len`` steps on (b, g, n_chunks, h, n)
   tensors);
2. carry the state across chunk ends with the chunk's total decay ``exp(A * sum(dt))`` (``n_chunks`` small
   steps);
3. rescan every chunk from its true start state and read out ``y_t = <C_t, h_t>``.
Only decays <= 1 are ever multiplied; nothing is divided by a running decay.

Backward saves only the inputs and the ``n_chunks`` chunk-start states. The adjoint state
``lambda_t = dL/dh_t`` obeys the reverse recurrence ``lambda_t = exp(dt_{t+1} A) lambda_{t+1} + C_t g_t`` and
is chunked the same way (local reverse scan, carry across chunks, rescan). The rescan runs on blocks of
chunks whose per-step states are recomputed from the saved chunk starts, so temporaries stay bounded by
``_BLOCK_ELEMENTS`` elements per buffer and never reach b*d*L*n for a long sequence.

Step layout: per-channel sequences are kept as (chunk_len, b, g, n_chunks, h) and B/C as
(chunk_len, b, g, n_chunks, n) so that every step of a loop reads one contiguous slab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from logvmamba_nnunet.ops.constants import LOG2_E, SOFTPLUS_THRESHOLD
from logvmamba_nnunet.ops.scan_inputs import step_sizes

_Z_INPUT = 8
"""Position of z among the inputs of ``ChunkedSelectiveScan.forward`` (after delta_softplus and chunk_len)."""

_BLOCK_ELEMENTS = 1 << 24
"""Upper bound on the elements of one per-block buffer (chunk_len, b, g, chunks_per_block, h, n) in backward."""


def default_chunk_size(length: int) -> int:
    """Chunk length for a sequence of ``length`` tokens: about sqrt(length / 2), at least 1."""
    return max(1, round(math.sqrt(length / 2)))


def _pad_to_chunks(x: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """Zero-pad the last dimension up to a multiple of ``chunk_len`` (no copy when it already is one)."""
    padding = -x.shape[-1] % chunk_len
    return F.pad(x, (0, padding)) if padding else x


def _to_steps(x: torch.Tensor, groups: int, chunk_len: int) -> torch.Tensor:
    """(b, c, L) -> zero-padded step layout (chunk_len, b, g, n_chunks, c / g).

    The result is a view of a contiguous (chunk_len, b, g, c / g, n_chunks) tensor, made with one 2-D
    transpose (far faster than a general permute); each step's slab is contiguous in memory.
    """
    x = _pad_to_chunks(x, chunk_len)
    b, c, padded = x.shape
    n_chunks = padded // chunk_len
    steps = x.reshape(b * c * n_chunks, chunk_len).t().contiguous()
    return steps.view(chunk_len, b, groups, c // groups, n_chunks).transpose(3, 4)


def _to_steps_contiguous(x: torch.Tensor, groups: int, chunk_len: int) -> torch.Tensor:
    """Like ``_to_steps`` but contiguous in (chunk_len, b, g, n_chunks, c / g) order: for B and C, which are
    read with a broadcast over channels at every step and would be slow to read strided."""
    return _to_steps(x, groups, chunk_len).contiguous()


def _from_steps(x: torch.Tensor, length: int) -> torch.Tensor:
    """Step layout (chunk_len, b, g, n_chunks, c) -> (b, g * c, L) with the padding removed."""
    chunk_len, b, g, n_chunks, c = x.shape
    rows = x.transpose(3, 4).reshape(chunk_len, b * g * c * n_chunks).t()
    return rows.reshape(b, g * c, n_chunks * chunk_len)[..., :length]


@dataclass
class _Steps:
    """Scan inputs in step layout, in the compute dtype.

    dt, du: (chunk_len, b, g, n_chunks, h) step sizes and dt * u; B, C: (chunk_len, b, g, n_chunks, n);
    A: (g, 1, h, n) broadcastable against states (b, g, n_chunks, h, n); A_log2 = A * log2(e), so that a
    decay exp(dt A) is exp2(dt A_log2), which torch evaluates about twice as fast as exp; dt_sums:
    (b, g, n_chunks, h), the sum of dt over each chunk.
    """

    dt: torch.Tensor
    du: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    A: torch.Tensor
    A_log2: torch.Tensor
    dt_sums: torch.Tensor

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape (b, g, n_chunks, h, n) of the states of all chunks at one step."""
        _, b, g, n_chunks, h = self.dt.shape
        return (b, g, n_chunks, h, self.A.shape[-1])

    def chunk_decays(self) -> torch.Tensor:
        """Total decay of each chunk, exp(A * sum_t dt_t): (b, g, n_chunks, h, n), every entry in [0, 1]."""
        return torch.exp2(self.dt_sums.unsqueeze(-1) * self.A_log2)


def _prepare_steps(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_len: int
) -> tuple[_Steps, torch.Tensor]:
    """Convert u, dt (b, d, L), A (d, n) and grouped B, C (b, g, n, L) into the step layout.

    Returns the steps and u in step layout (chunk_len, b, g, n_chunks, h).
    """
    groups = B.shape[1]
    d, n = A.shape
    A = A.view(groups, 1, d // groups, n)
    dt_steps = _to_steps(dt, groups, chunk_len)
    u_steps = _to_steps(u, groups, chunk_len)
    dt_sums = _pad_to_chunks(dt, chunk_len).view(dt.shape[0], groups, d // groups, -1, chunk_len).sum(-1)
    steps = _Steps(
        dt=dt_steps,
        du=dt_steps * u_steps,
        B=_to_steps_contiguous(B.flatten(1, 2), groups, chunk_len),
        C=_to_steps_contiguous(C.flatten(1, 2), groups, chunk_len),
        A=A,
        A_log2=A * LOG2_E,
        dt_sums=dt_sums.transpose(2, 3),
    )
    return steps, u_steps


def _use_matmul(x: torch.Tensor) -> bool:
    """Whether contractions run as batched matrix products (CPU) or as elementwise products and sums.

    On CUDA, matrix products may run in TF32 or, under autocast, in half precision, depending on global
    settings; elementwise products and sums are always exact float32 and cheap on a GPU.
    """
    return x.device.type == "cpu"


def _sum_over_state(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_n x[..., h, n] * v[..., n] -> (..., h). On CPU it maps onto ``bmm`` without copies when the
    leading dimensions of x and v are laid out alike."""
    if _use_matmul(x):
        return torch.einsum("...hn,...n->...h", x, v)
    return (x * v.unsqueeze(-2)).sum(-1)


def _sum_over_channels(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_h x[..., h, n] * w[..., h] -> (..., n), the per-group reduction for the B and C gradients."""
    if _use_matmul(x):
        return torch.einsum("...hn,...h->...n", x, w)
    return (x * w.unsqueeze(-1)).sum(-2)


def _decay(steps: _Steps, t: int, out: torch.Tensor) -> torch.Tensor:
    """exp(dt_t * A) for all chunks at step t, written into ``out`` (b, g, n_chunks, h, n)."""
    torch.mul(steps.dt[t].unsqueeze(-1), steps.A_log2, out=out)
    return out.exp2_()


def _chunk_end_states(steps: _Steps) -> torch.Tensor:
    """Pass 1: the state at the end of every chunk when each chunk starts from zero, (b, g, n_chunks, h, n)."""
    state = steps.dt.new_zeros(steps.state_shape)
    decay = torch.empty_like(state)
    for t in range(steps.dt.shape[0]):
        state.mul_(_decay(steps, t, decay))
        state.addcmul_(steps.du[t].unsqueeze(-1), steps.B[t].unsqueeze(-2))
    return state


def _carry_forward(local_ends: torch.Tensor, chunk_decays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 2: the true start state of every chunk (b, g, n_chunks, h, n) and the final state (b, g, h, n).

    start_{i+1} = decay_i * start_i + local_end_i, start_0 = 0.
    """
    b, g, n_chunks, h, n = local_ends.shape
    starts = local_ends.new_zeros(b, g, n_chunks + 1, h, n)
    for i in range(n_chunks):
        torch.addcmul(local_ends[:, :, i], chunk_decays[:, :, i], starts[:, :, i], out=starts[:, :, i + 1])
    return starts[:, :, :-1], starts[:, :, -1]


def _chunk_outputs(steps: _Steps, starts: torch.Tensor) -> torch.Tensor:
    """Pass 3: rescan every chunk from its true start state.

    Returns <C_t, h_t> in step layout (chunk_len, b, g, n_chunks, h).
    """
    state = starts.clone()
    decay = torch.empty_like(state)
    out = torch.empty_like(steps.dt)
    for t in range(steps.dt.shape[0]):
        state.mul_(_decay(steps, t, decay))
        state.addcmul_(steps.du[t].unsqueeze(-1), steps.B[t].unsqueeze(-2))
        out[t] = _sum_over_state(state, steps.C[t])
    return out


def _chunk_start_adjoints(steps: _Steps, grad_yc: torch.Tensor) -> torch.Tensor:
    """Backward pass 1: the adjoint each chunk sends to the state before its first step, assuming no
    adjoint enters the chunk from its end: (b, g, n_chunks, h, n).

    grad_yc: (chunk_len, b, g, n_chunks, h), gradient with respect to <C_t, h_t>.
    """
    adjoint = steps.dt.new_zeros(steps.state_shape)
    decay = torch.empty_like(adjoint)
    for t in range(steps.dt.shape[0] - 1, -1, -1):
        adjoint.addcmul_(grad_yc[t].unsqueeze(-1), steps.C[t].unsqueeze(-2))
        adjoint.mul_(_decay(steps, t, decay))
    return adjoint


def _carry_backward(
    local_starts: torch.Tensor, chunk_decays: torch.Tensor, grad_last: torch.Tensor | None
) -> torch.Tensor:
    """Backward pass 2: the adjoint entering each chunk from its end, (b, g, n_chunks, h, n).

    end_{n_chunks-1} = grad_last (or 0); end_{i-1} = local_start_i + decay_i * end_i.
    """
    ends = torch.zeros_like(local_starts)
    n_chunks = local_starts.shape[2]
    if grad_last is not None:
        ends[:, :, n_chunks - 1] = grad_last
    for i in range(n_chunks - 1, 0, -1):
        torch.addcmul(local_starts[:, :, i], chunk_decays[:, :, i], ends[:, :, i], out=ends[:, :, i - 1])
    return ends


@dataclass
class _StepGrads:
    """Gradients in step layout: with respect to dt and to u through the scan (the D skip is added
    later), (chunk_len, b, g, n_chunks, h); B, C (chunk_len, b, g, n_chunks, n); A (g, h, n); and yc, the
    recomputed <C_t, h_t> (chunk_len, b, g, n_chunks, h) that the gradient of z needs, or None when it is
    not needed."""

    dt: torch.Tensor
    u: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    A: torch.Tensor
    yc: torch.Tensor | None


def _block_slice(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Chunks [start, stop) of a step-layout tensor (chunk_len, b, g, n_chunks, c), contiguous."""
    return x[:, :, :, start:stop].contiguous()


class _BlockWorkspace:
    """Three flat buffers reused by every backward block (states, decays, adjoints).

    Reusing them avoids paging in fresh memory for each block, which costs more than the arithmetic.
    Each holds (chunk_len + 1) * b * d * chunks_per_block * n elements for the largest block.
    """

    def __init__(self, steps: _Steps, chunks_per_block: int) -> None:
        chunk_len = steps.dt.shape[0]
        b, g, _, h, n = steps.state_shape
        numel = (chunk_len + 1) * b * g * chunks_per_block * h * n
        self.buffers = [steps.dt.new_empty(numel) for _ in range(3)]

    def view(self, index: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Buffer ``index`` as a contiguous tensor of ``shape``."""
        return self.buffers[index][: math.prod(shape)].view(shape)


def _backward_block(
    steps: _Steps,
    u_steps: torch.Tensor,
    grad_yc: torch.Tensor,
    starts: torch.Tensor,
    end_adjoints: torch.Tensor,
    grads: _StepGrads,
    workspace: _BlockWorkspace,
    start: int,
    stop: int,
) -> None:
    """Backward pass 3 for chunks [start, stop): recompute their states, rescan the adjoint from the true
    end adjoints and accumulate every gradient into ``grads``."""
    block = _Steps(
        dt=_block_slice(steps.dt, start, stop),
        du=_block_slice(steps.du, start, stop),
        B=_block_slice(steps.B, start, stop),
        C=_block_slice(steps.C, start, stop),
        A=steps.A,
        A_log2=steps.A_log2,
        dt_sums=steps.dt_sums[:, :, start:stop],
    )
    grad_block = _block_slice(grad_yc, start, stop)
    chunk_len = block.dt.shape[0]
    states = workspace.view(0, (chunk_len + 1, *block.state_shape))
    decays = workspace.view(1, (chunk_len, *block.state_shape))
    adjoints = workspace.view(2, (chunk_len, *block.state_shape))
    states[0] = starts[:, :, start:stop]
    for t in range(chunk_len):
        torch.mul(_decay(block, t, decays[t]), states[t], out=states[t + 1])
        states[t + 1].addcmul_(block.du[t].unsqueeze(-1), block.B[t].unsqueeze(-2))

    torch.addcmul(
        end_adjoints[:, :, start:stop], grad_block[-1].unsqueeze(-1), block.C[-1].unsqueeze(-2),
        out=adjoints[-1],
    )
    for t in range(chunk_len - 2, -1, -1):
        torch.mul(decays[t + 1], adjoints[t + 1], out=adjoints[t])
        adjoints[t].addcmul_(grad_block[t].unsqueeze(-1), block.C[t].unsqueeze(-2))

    states_after = states[1:]
    grads.C[:, :, :, start:stop] = _sum_over_channels(states_after, grad_block)
    if grads.yc is not None:
        grads.yc[:, :, :, start:stop] = _sum_over_state(states_after, block.C)
    adjoint_dot_B = _sum_over_state(adjoints, block.B)
    grads.u[:, :, :, start:stop] = block.dt * adjoint_dot_B
    grads.B[:, :, :, start:stop] = _sum_over_channels(adjoints, block.du)
    # Gradient with respect to the exponent dt_t * A of each decay: lambda_t * exp(dt_t A) * h_{t-1}.
    exponent_grad = decays.mul_(states[:-1]).mul_(adjoints)
    scratch = torch.mul(exponent_grad, block.dt.unsqueeze(-1), out=adjoints)
    grads.A.add_(scratch.sum((0, 1, 3)))
    dt_grad = exponent_grad.mul_(steps.A).sum(-1)
    grads.dt[:, :, :, start:stop] = dt_grad.addcmul_(_block_slice(u_steps, start, stop), adjoint_dot_B)


def _chunks_per_block(steps: _Steps) -> int:
    """How many chunks one backward block holds so that a (chunk_len, b, g, chunks_per_block, h, n) buffer
    stays within ``_BLOCK_ELEMENTS``."""
    per_chunk = math.prod(steps.state_shape) // steps.state_shape[2] * steps.dt.shape[0]
    return min(steps.state_shape[2], max(1, _BLOCK_ELEMENTS // per_chunk))


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    """Derivative of silu(z) = z * sigmoid(z)."""
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


def _softplus_grad(x: torch.Tensor) -> torch.Tensor:
    """Derivative of softplus, which is the identity above ``SOFTPLUS_THRESHOLD``."""
    return torch.where(x > SOFTPLUS_THRESHOLD, torch.ones_like(x), torch.sigmoid(x))


class ChunkedSelectiveScan(torch.autograd.Function):
    """Autograd function for the chunked scan. Inputs are validated by the caller; B and C are grouped.

    Forward and backward run with autocast disabled: the scan is always computed in float32 (float64 for
    float64 inputs), also inside an autocast region.
    """

    @staticmethod
    def forward(
        ctx, delta_softplus: bool, chunk_len: int, *tensors: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tensors``: u, delta, A, B, C, D, z, delta_bias, with the shapes ``selective_scan_torch`` takes.

        Returns y (b, d, L) and the last state (b, d, n), both in the compute dtype.
        """
        u, delta, A, B, C, D, z, delta_bias = tensors
        with torch.autocast(device_type=u.device.type, enabled=False):
            dtype = _compute_dtype(u)
            uf, Af, Bf, Cf = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
            dt = step_sizes(delta.to(dtype), _cast(delta_bias, dtype), delta_softplus)[1]
            steps = _prepare_steps(uf, dt, Af, Bf, Cf, chunk_len)[0]
            del dt
            starts, last_state = _carry_forward(_chunk_end_states(steps), steps.chunk_decays())
            y = _from_steps(_chunk_outputs(steps, starts), u.shape[-1])
            if D is not None:
                y = y + D.to(dtype)[:, None] * uf
            if z is not None:
                y = y * F.silu(z.to(dtype))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_len = chunk_len
        ctx.set_materialize_grads(False)
        return y, last_state.reshape(u.shape[0], A.shape[0], A.shape[1])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor | None, grad_last: torch.Tensor | None):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        with torch.autocast(device_type=u.device.type, enabled=False):
            dtype = starts.dtype
            length, groups = u.shape[-1], B.shape[1]
            uf = u.to(dtype)
            if grad_y is None:
                grad_y = torch.zeros_like(uf)
            grad_y = grad_y.to(dtype)
            pre_softplus, dt = step_sizes(delta.to(dtype), _cast(delta_bias, dtype), ctx.delta_softplus)
            steps, u_steps = _prepare_steps(uf, dt, A.to(dtype), B.to(dtype), C.to(dtype), ctx.chunk_len)
            del dt
            grad_yc_full = grad_y if z is None else grad_y * F.silu(z.to(dtype))
            grad_yc = _to_steps(grad_yc_full, groups, ctx.chunk_len)

            b, g, n_chunks, h, n = starts.shape
            chunk_decays = steps.chunk_decays()
            last = None if grad_last is None else grad_last.to(dtype).reshape(b, g, h, n)
            end_adjoints = _carry_backward(_chunk_start_adjoints(steps, grad_yc), chunk_decays, last)
            del chunk_decays
            grads = _StepGrads(
                dt=torch.empty_like(steps.dt),
                u=torch.empty_like(steps.dt),
                B=torch.empty_like(steps.B),
                C=torch.empty_like(steps.C),
                A=A.new_zeros(g, h, n, dtype=dtype),
                yc=torch.empty_like(steps.dt) if z is not None and ctx.needs_input_grad[_Z_INPUT] else None,
            )
            per_block = _chunks_per_block(steps)
            workspace = _BlockWorkspace(steps, per_block)
            for start in range(0, n_chunks, per_block):
                stop = min(start + per_block, n_chunks)
                _backward_block(steps, u_steps, grad_yc, starts, end_adjoints, grads, workspace, start, stop)
            del steps, u_steps, grad_yc, end_adjoints, workspace

            grad_u = _from_steps(grads.u, length)
            grad_dt = _from_steps(grads.dt, length)
            grad_D = grad_z = grad_bias = None
            if D is not None:
                grad_u = grad_u + grad_yc_full * D.to(dtype)[:, None]
                grad_D = (grad_yc_full * uf).sum((0, 2)).to(D.dtype)
            if grads.yc is not None:
                skip = _from_steps(grads.yc, length)
                if D is not None:
                    skip = skip + D.to(dtype)[:, None] * uf
                grad_z = (grad_y * skip * _silu_grad(z.to(dtype))).to(z.dtype)
            grad_delta = grad_dt * _softplus_grad(pre_softplus) if ctx.delta_softplus else grad_dt
            if delta_bias is not None:
                grad_bias = grad_delta.sum((0, 2)).to(delta_bias.dtype)
        return (
            None,
            None,
            grad_u.to(u.dtype),
            grad_delta.to(delta.dtype),
            grads.A.reshape(A.shape).to(A.dtype),
            _from_steps(grads.B, length).view(B.shape).to(B.dtype),
            _from_steps(grads.C, length).view(C.shape).to(C.dtype),
            grad_D,
            grad_z,
            grad_bias,
        )


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for gradcheck); every other float dtype is computed in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _cast(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``x`` in ``dtype``, or None when ``x`` is None."""
    return None if x is None else x.to(dtype)


def selective_scan_torch(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    delta_softplus: bool, return_last_state: bool, chunk_size: int | None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan on validated tensors: u/delta/z (b, d, L), A (d, n), B/C grouped (b, g, n, L),
    D/delta_bias (d,) or None; ``chunk_size`` steps per chunk (None: ``default_chunk_size(L)``).

    Returns y (b, d, L) in the compute dtype (float32, or float64 for float64 inputs), and the last state
    (b, d, n) when ``return_last_state``.
    """
    chunk_len = chunk_size if chunk_size is not None else default_chunk_size(u.shape[-1])
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    y, last_state = ChunkedSelectiveScan.apply(delta_softplus, chunk_len, *tensors)
    return (y, last_state) if return_last_state else y

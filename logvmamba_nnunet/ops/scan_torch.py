"""Exact chunked selective scan in plain PyTorch, with a hand-written, memory-lean backward.

Notation: batch b, channels d = g * h (g groups of B/C, h channels per group), state size n, sequence
length L padded to ``n_chunks`` chunks of ``T`` steps. Padding steps have ``dt = 0`` and ``B = C = 0``, so
they leave the state unchanged.

The chunks are processed in blocks of ``K`` consecutive chunks, one block after the other, so that each
block buffer (T, K, b, g, n, h) stays in the CPU caches. Forward, for each block:
1. compute the decays ``exp(dt_t * A)`` of all its steps once, into a block buffer;
2. scan every chunk of the block from a zero state, all chunks at once (``T`` steps on (K, b, g, n, h)
   states), to get the chunks' local end states;
3. carry the state across the chunk ends with the chunk's total decay ``exp(A * sum(dt))``, starting from
   the end state of the previous block (``K`` small steps);
4. rescan every chunk from its true start state with the stored decays, writing the states over them, and
   read out ``y_t = <C_t, h_t>`` with one batched matrix product for the whole block.
Only decays <= 1 are ever multiplied; nothing is divided by a running decay.

Forward saves only the inputs and the state at every chunk start (as many values as one (b, d, L) sequence when
T = n). Backward walks the blocks from the last to the first. For each block it recomputes the decays and the
states (steps 1 and 4, from the saved chunk starts) and scans the adjoint state
``lambda_t = dL/dh_t``, which obeys ``lambda_t = exp(dt_{t+1} A) lambda_{t+1} + C_t g_t``, the same way: a
local reverse scan, a carry across the chunks from the adjoint entering the block's end, and a rescan. Every
gradient of the block then takes one or two whole-block products or batched matrix products.

Layouts: states are (..., n, h), channels innermost, which makes both contractions (over n for
``<C_t, h_t>``, over h for the B and C gradients) fast ``bmm`` calls. Each block copies its part of every
sequence into step layout (T, K, b, g, c), in which the values of one step of all its chunks are contiguous,
and copies its outputs back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from logvmamba_nnunet.ops.constants import LOG2_E, SOFTPLUS_THRESHOLD
from logvmamba_nnunet.ops.scan_memo import run_or_replay

_Z_INPUT = 8
"""Position of z among the inputs of ``ChunkedSelectiveScan.forward`` (after delta_softplus and chunk_size)."""

_BLOCK_ELEMENTS = 1 << 20
"""Upper bound on the elements of one block buffer (T, K, b, g, n, h) on the CPU (4 MiB in float32), so that
the two or three such buffers of a block stay in the last-level cache."""

_STEP_ELEMENTS = 1 << 16
"""Target elements of one step's states (K, b, g, n, h) on the CPU: large enough that the per-step PyTorch
calls cost little next to their arithmetic."""

_ACCELERATOR_BLOCK_ELEMENTS = 1 << 24
"""Upper bound on one block buffer on other devices, where one block normally holds every chunk."""

_KEPT_WORKSPACE_ELEMENTS = 1 << 23
"""Largest CPU workspace kept between calls (32 MiB in float32): a fresh one would have all its pages faulted
in again by the kernel on every call, which costs about as much as a pass over it."""

_KEPT_WORKSPACES = threading.local()
"""Per thread, the last CPU workspace of each dtype (a flat tensor), reused by the next call that fits in it."""


def default_chunk_size(length: int) -> int:
    """Chunk length for a sequence of ``length`` tokens: about sqrt(length / 2), at least 1."""
    return max(1, round(math.sqrt(length / 2)))


@dataclass(frozen=True)
class _Plan:
    """How a sequence of ``length`` steps is cut: ``n_chunks`` chunks of ``chunk_len`` steps, processed in
    blocks of ``chunks_per_block`` chunks (the last block may hold fewer)."""

    length: int
    chunk_len: int
    n_chunks: int
    chunks_per_block: int

    @property
    def padded_length(self) -> int:
        return self.n_chunks * self.chunk_len

    @property
    def n_blocks(self) -> int:
        return -(-self.n_chunks // self.chunks_per_block)

    def blocks(self, reverse: bool = False) -> Iterator[tuple[int, int, int]]:
        """(block index, first chunk, end chunk) of every block, first to last (or last to first)."""
        order = range(self.n_blocks - 1, -1, -1) if reverse else range(self.n_blocks)
        for index in order:
            start = index * self.chunks_per_block
            yield index, start, min(start + self.chunks_per_block, self.n_chunks)


def _make_plan(length: int, state_elements: int, chunk_size: int | None, device: torch.device) -> _Plan:
    """Chunk length and chunks per block for ``length`` steps of b * d * n = ``state_elements`` states.

    On the CPU the chunk length is at most ``default_chunk_size(length)`` and small enough that a block of
    about ``_STEP_ELEMENTS / state_elements`` chunks fits in ``_BLOCK_ELEMENTS``. On other devices the chunk
    length is ``default_chunk_size(length)`` and a block holds as many chunks as ``_ACCELERATOR_BLOCK_ELEMENTS``
    allows. ``chunk_size`` overrides the chunk length.
    """
    budget = _BLOCK_ELEMENTS if device.type == "cpu" else _ACCELERATOR_BLOCK_ELEMENTS
    if chunk_size is not None:
        chunk_len = chunk_size
    elif device.type == "cpu":
        chunks_per_step = max(1, _STEP_ELEMENTS // state_elements)
        chunk_len = max(1, min(default_chunk_size(length), budget // (chunks_per_step * state_elements)))
    else:
        chunk_len = default_chunk_size(length)
    n_chunks = -(-length // chunk_len)
    chunks_per_block = max(1, min(n_chunks, budget // (chunk_len * state_elements)))
    return _Plan(length, chunk_len, n_chunks, chunks_per_block)


def saved_state_shape(batch: int, channels: int, state: int, length: int, chunk_size: int | None,
                      device: torch.device) -> tuple[int, int, int, int]:
    """Shape (n_chunks, b, d, n) of the chunk-start states that the scan saves for backward on ``device`` (as
    many elements as the (n_chunks, b, g, n, h) tensor it stores)."""
    plan = _make_plan(length, batch * channels * state, chunk_size, device)
    return (plan.n_chunks, batch, channels, state)


def _pad_steps(x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Zero-pad the last dimension (time) to the plan's padded length (no copy when it already is)."""
    padding = plan.padded_length - x.shape[-1]
    return F.pad(x, (0, padding)) if padding else x


def _chunk_view(x: torch.Tensor, groups: int, plan: _Plan) -> torch.Tensor:
    """(b, c, padded L) or (b, g, c / g, padded L) -> view (b, g, c / g, n_chunks, T)."""
    b = x.shape[0]
    return x.view(b, groups, -1, plan.n_chunks, plan.chunk_len)


def _block_sources(x: torch.Tensor, groups: int, plan: _Plan) -> tuple[torch.Tensor, ...]:
    """Padded (b, c, L) or (b, g, c / g, L) -> the (K, b, g, c / g, T) view of every block, first to last."""
    return _chunk_view(x, groups, plan).permute(3, 0, 1, 2, 4).split(plan.chunks_per_block)


def _block_targets(x: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, ...]:
    """(b, g, c, padded L) -> the step-layout (T, K, b, g, c) view of every block of it, first to last."""
    return _chunk_view(x, x.shape[1], plan).permute(4, 3, 0, 1, 2).split(plan.chunks_per_block, dim=1)


def _use_matmul(x: torch.Tensor) -> bool:
    """Whether contractions run as batched matrix products (CPU) or as elementwise products and sums.

    On CUDA, matrix products may run in TF32 or, under autocast, in half precision, depending on global
    settings; elementwise products and sums are always exact float32 and cheap on a GPU.
    """
    return x.device.type == "cpu"


def _sum_over_state(x: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[..., h] = sum_n v[..., n] * x[..., n, h]; x (..., n, h), v (..., n), out (..., h), all contiguous
    with the same leading dimensions. On CPU one ``bmm`` of (1, n) rows with (n, h) states."""
    n, h = x.shape[-2:]
    if _use_matmul(x):
        torch.bmm(v.view(-1, 1, n), x.view(-1, n, h), out=out.view(-1, 1, h))
    else:
        torch.sum(x * v.unsqueeze(-1), dim=-2, out=out)
    return out


def _sum_over_channels(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[..., n] = sum_h w[..., h] * x[..., n, h]; x (..., n, h), w (..., h), out (..., n), all contiguous
    with the same leading dimensions; the per-group reduction for the B and C gradients. On CPU one ``bmm``
    of (1, h) rows with the transposed (h, n) states."""
    n, h = x.shape[-2:]
    if _use_matmul(x):
        torch.bmm(w.view(-1, 1, h), x.view(-1, n, h).transpose(1, 2), out=out.view(-1, 1, n))
    else:
        torch.sum(x * w.unsqueeze(-2), dim=-1, out=out)
    return out


@dataclass
class _Sequences:
    """Scan inputs in the compute dtype: delta, u (c = h) and B, C (c = n) as the (K, b, g, c, T) views of
    every block of zero-padded tensors; delta_bias and D as (g, h) or None; A, A_log2: (g, n, h),
    A_log2 = A * log2(e), so that a decay exp(dt A) is exp2(dt A_log2), which torch evaluates about twice
    as fast as exp."""

    plan: _Plan
    delta: tuple[torch.Tensor, ...]
    u: tuple[torch.Tensor, ...]
    B: tuple[torch.Tensor, ...]
    C: tuple[torch.Tensor, ...]
    delta_bias: torch.Tensor | None
    softplus: bool
    D: torch.Tensor | None
    A: torch.Tensor
    A_log2: torch.Tensor

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape (b, g, n, h) of one chunk's state."""
        b, g, h = self.u[0].shape[1:4]
        return (b, g, self.A.shape[1], h)


def _prepare(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, delta_bias: torch.Tensor | None, softplus: bool, chunk_size: int | None,
) -> _Sequences:
    """u, delta (b, d, L), A (d, n), grouped B, C (b, g, n, L) and D, delta_bias (d,) or None, all in the
    compute dtype, as the views the blocks read."""
    b, groups, n, length = B.shape
    d = A.shape[0]
    plan = _make_plan(length, b * d * n, chunk_size, u.device)
    A = A.view(groups, d // groups, n).transpose(1, 2).contiguous()
    return _Sequences(
        plan=plan,
        delta=_block_sources(_pad_steps(delta, plan), groups, plan),
        u=_block_sources(_pad_steps(u, plan), groups, plan),
        B=_block_sources(_pad_steps(B, plan), groups, plan),
        C=_block_sources(_pad_steps(C, plan), groups, plan),
        delta_bias=None if delta_bias is None else delta_bias.view(groups, -1),
        softplus=softplus,
        D=None if D is None else D.view(groups, -1),
        A=A,
        A_log2=A * LOG2_E,
    )


def _view(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The first elements of a flat buffer as a contiguous tensor of ``shape``."""
    return flat[: math.prod(shape)].view(shape)


def _workspace_memory(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat uninitialised tensor of ``numel`` elements with the dtype and device of ``like``.

    On the CPU, up to ``_KEPT_WORKSPACE_ELEMENTS`` elements are kept per thread and dtype and handed to the
    next call, so that repeated calls do not fault the same pages in again. A workspace never leaves a call:
    every tensor that a call returns or saves is a copy.
    """
    if like.device.type != "cpu" or numel > _KEPT_WORKSPACE_ELEMENTS:
        return like.new_empty(numel)
    kept = getattr(_KEPT_WORKSPACES, "by_dtype", None)
    if kept is None:
        kept = _KEPT_WORKSPACES.by_dtype = {}
    memory = kept.get(like.dtype)
    if memory is None or memory.numel() < numel:
        memory = kept[like.dtype] = like.new_empty(numel)
    return memory[:numel]


class _Workspace:
    """Flat buffers reused by every block, so that no block pages in fresh memory (which costs more than the
    arithmetic): ``count`` block buffers (T, K, b, g, n, h), four chunk-state buffers (K, b, g, n, h), a
    step-layout buffer (T, K, b, g, c) per named sequence and two staging buffers for the copies.

    Views of the buffers, whole or split into steps or chunks, are made once per number of chunks K (all
    blocks but the last have the same) and reused: making them costs about as much as a small operation.
    """

    def __init__(self, seq: _Sequences, count: int, sequences: dict[str, int]) -> None:
        plan = seq.plan
        self.state_shape = seq.state_shape
        self.chunk_len = plan.chunk_len
        chunk_state = math.prod(self.state_shape)
        steps = plan.chunks_per_block * plan.chunk_len
        b, g = self.state_shape[:2]
        sizes = (
            [steps * chunk_state] * count
            + [plan.chunks_per_block * chunk_state] * 4
            + [steps * b * g * c for c in sequences.values()]
            + [steps * b * g * max(sequences.values())] * 2
        )
        flat = _workspace_memory(sum(sizes), seq.u[0])
        buffers = list(flat.split(sizes))
        self.blocks = buffers[:count]
        self.chunk_states = buffers[count : count + 4]
        self.sequence_shapes = {name: (b, g, c) for name, c in sequences.items()}
        self.sequences = dict(zip(sequences, buffers[count + 4 : -2], strict=True))
        self.staging = buffers[-2:]
        self.views: dict[tuple, torch.Tensor | tuple[torch.Tensor, ...]] = {}

    def _cached(self, key: tuple, make: Callable[[], torch.Tensor | tuple[torch.Tensor, ...]]):
        if key not in self.views:
            self.views[key] = make()
        return self.views[key]

    def block(self, index: int, chunks: int) -> torch.Tensor:
        """Block buffer ``index`` as a contiguous (T, K, b, g, n, h) tensor for K = ``chunks``."""
        shape = (self.chunk_len, chunks, *self.state_shape)
        return self._cached(("block", index, chunks), lambda: _view(self.blocks[index], shape))

    def block_steps(self, index: int, chunks: int) -> tuple[torch.Tensor, ...]:
        """The T steps (K, b, g, n, h) of block buffer ``index``."""
        return self._cached(("block steps", index, chunks), lambda: self.block(index, chunks).unbind(0))

    def chunk_state(self, index: int, chunks: int) -> torch.Tensor:
        """Chunk-state buffer ``index`` as a contiguous (K, b, g, n, h) tensor."""
        shape = (chunks, *self.state_shape)
        return self._cached(("chunks", index, chunks), lambda: _view(self.chunk_states[index], shape))

    def chunk_state_steps(self, index: int, chunks: int) -> tuple[torch.Tensor, ...]:
        """The K chunks (b, g, n, h) of chunk-state buffer ``index``."""
        return self._cached(("chunk steps", index, chunks), lambda: self.chunk_state(index, chunks).unbind(0))

    def sequence(self, name: str, chunks: int) -> torch.Tensor:
        """The step-layout buffer ``name`` as a contiguous (T, K, b, g, c) tensor."""
        shape = (self.chunk_len, chunks, *self.sequence_shapes[name])
        return self._cached(("sequence", name, chunks), lambda: _view(self.sequences[name], shape))

    def sequence_steps(self, name: str, chunks: int) -> tuple[torch.Tensor, ...]:
        """The T steps of the step-layout buffer ``name``, as (K, b, g, 1, c) views that broadcast over n."""
        return self._cached(
            ("sequence steps", name, chunks), lambda: self.sequence(name, chunks).unsqueeze(-2).unbind(0)
        )

    def gather(self, name: str, source: torch.Tensor) -> torch.Tensor:
        """A block's (K, b, g, c, T) view of a sequence, copied into the step-layout buffer ``name``.

        A direct permuting copy reads one element per time row and is several times slower than three copies
        that each move contiguous runs: to (K, b, g, c, T), then (K, T, b, g, c), then (T, K, b, g, c).
        """
        chunks, b, g, c, T = source.shape

        def stages() -> tuple[torch.Tensor, ...]:
            by_chunk = _view(self.staging[0], (chunks, b, g, c, T))
            by_step = _view(self.staging[1], (chunks, T, b, g, c))
            return by_chunk, by_chunk.permute(0, 4, 1, 2, 3), by_step, by_step.transpose(0, 1)

        by_chunk, by_chunk_steps, by_step, by_step_steps = self._cached(("stages", c, chunks), stages)
        by_chunk.copy_(source)
        by_step.copy_(by_chunk_steps)
        return self.sequence(name, chunks).copy_(by_step_steps)


@dataclass
class _Block:
    """Chunks [start, stop) in step layout, contiguous: x = delta + delta_bias, dt (the step sizes, 0 on
    padding), u and du = dt * u (T, K, b, g, h); B, C (T, K, b, g, n). ``padding``: the first padded step of
    the block's last chunk (T when it has none)."""

    start: int
    stop: int
    x: torch.Tensor
    dt: torch.Tensor
    u: torch.Tensor
    du: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    padding: int

    @property
    def chunks(self) -> int:
        return self.stop - self.start

    @staticmethod
    def gather(seq: _Sequences, workspace: _Workspace, index: int, start: int, stop: int) -> _Block:
        chunks, plan = stop - start, seq.plan
        x = workspace.gather("x", seq.delta[index])
        if seq.delta_bias is not None:
            x.add_(seq.delta_bias)
        dt = F.softplus(x, threshold=SOFTPLUS_THRESHOLD) if seq.softplus else x
        padding = plan.length - (plan.n_chunks - 1) * plan.chunk_len if stop == plan.n_chunks else plan.chunk_len
        if padding < plan.chunk_len:
            dt[padding:, -1] = 0
        u = workspace.gather("u", seq.u[index])
        du = torch.mul(dt, u, out=workspace.sequence("du", chunks))
        B = workspace.gather("B", seq.B[index])
        C = workspace.gather("C", seq.C[index])
        return _Block(start, stop, x, dt, u, du, B, C, padding)


def _outer(channels: torch.Tensor, state: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """channels (..., h) times state (..., n) -> ``out`` (..., n, h)."""
    return torch.mul(channels.unsqueeze(-2), state.unsqueeze(-1), out=out)


def _block_decays(seq: _Sequences, block: _Block, out: torch.Tensor) -> torch.Tensor:
    """exp(dt_t * A) for every step of the block, written into ``out`` (T, K, b, g, n, h)."""
    torch.mul(block.dt.unsqueeze(-2), seq.A_log2, out=out)
    return out.exp2_()


def _chunk_decays(seq: _Sequences, block: _Block, workspace: _Workspace) -> tuple[torch.Tensor, ...]:
    """Total decay of each chunk of the block, exp(A * sum_t dt_t), (b, g, n, h) each, entries in [0, 1]."""
    torch.mul(block.dt.sum(0).unsqueeze(-2), seq.A_log2, out=workspace.chunk_state(3, block.chunks)).exp2_()
    return workspace.chunk_state_steps(3, block.chunks)


def _chunk_starts(
    seq: _Sequences, block: _Block, decays: tuple[torch.Tensor, ...], drives: tuple[torch.Tensor, ...],
    start: torch.Tensor, workspace: _Workspace,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """True start state of every chunk of the block (K, b, g, n, h), given the block's start state; ``drives``:
    the inputs dt_t u_t B_t of every step.

    Scans every chunk from zero to its local end state (all chunks at once), then carries the state across
    the chunk ends: start_{k+1} = decay_k * start_k + local_end_k. Also returns the chunks' total decays
    (None for a block of one chunk, which needs none).
    """
    chunks = block.chunks
    starts = workspace.chunk_state(0, chunks)
    starts[0] = start
    if chunks == 1:
        return starts, None
    local = workspace.chunk_state(1, chunks).copy_(drives[0])
    for decay, drive in zip(decays[1:], drives[1:], strict=True):
        torch.addcmul(drive, decay, local, out=local)
    local_ends, totals = workspace.chunk_state_steps(1, chunks), _chunk_decays(seq, block, workspace)
    start_steps = workspace.chunk_state_steps(0, chunks)
    for k in range(1, chunks):
        torch.addcmul(local_ends[k - 1], totals[k - 1], start_steps[k - 1], out=start_steps[k])
    return starts, totals


def _rescan(decays: tuple[torch.Tensor, ...], drives: tuple[torch.Tensor, ...], starts: torch.Tensor) -> None:
    """Overwrite the inputs ``drives`` of every step with the states h_t, scanning from the chunks' true start
    states: h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t."""
    previous = starts
    for decay, drive in zip(decays, drives, strict=True):
        previous = torch.addcmul(drive, decay, previous, out=drive)


def _sequence_sizes(seq: _Sequences, names: tuple[str, ...]) -> dict[str, int]:
    """Channels per group of each named step-layout sequence: n for B, C and the outputs named "*_n", else h."""
    n, h = seq.state_shape[2:]
    return {name: n if name in ("B", "C") or name.endswith("_n") else h for name in names}


_BLOCK_SEQUENCES = ("x", "u", "du", "B", "C", "out_h")


def _forward_scan(seq: _Sequences) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """<C_t, h_t> + D u_t (b, g, h, padded L), the state at every chunk start (n_chunks, b, g, n, h) and the last
    state (b, g, n, h)."""
    plan = seq.plan
    b, g, n, h = seq.state_shape
    workspace = _Workspace(seq, 2, _sequence_sizes(seq, _BLOCK_SEQUENCES))
    outputs = seq.u[0].new_empty(b, g, h, plan.padded_length)
    output_blocks = _block_targets(outputs, plan)
    boundaries = seq.u[0].new_zeros(plan.n_chunks, b, g, n, h)
    last = boundaries[0]
    for index, start, stop in plan.blocks():
        block = _Block.gather(seq, workspace, index, start, stop)
        _block_decays(seq, block, workspace.block(0, block.chunks))
        decays = workspace.block_steps(0, block.chunks)
        states = _outer(block.du, block.B, out=workspace.block(1, block.chunks))
        drives = workspace.block_steps(1, block.chunks)
        starts = _chunk_starts(seq, block, decays, drives, boundaries[start], workspace)[0]
        boundaries[start:stop] = starts
        _rescan(decays, drives, starts)
        y = _sum_over_state(states, block.C, out=workspace.sequence("out_h", block.chunks))
        if seq.D is not None:
            y.addcmul_(block.u, seq.D)
        output_blocks[index].copy_(y)
        last = drives[-1][-1]
        if stop < plan.n_chunks:
            boundaries[stop] = last
    return outputs, boundaries, last.clone()


@dataclass
class _Gradients:
    """Gradients gathered over the blocks: u, delta (b, g, h, padded L); B, C (b, g, n, padded L); yc, the
    recomputed <C_t, h_t> that the gradient of z needs (None when it is not needed); A (g, n, h); D and
    delta_bias (g, h), or None when there is none."""

    plan: _Plan
    u: torch.Tensor
    delta: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    yc: torch.Tensor | None
    A: torch.Tensor
    D: torch.Tensor | None
    delta_bias: torch.Tensor | None

    def __post_init__(self) -> None:
        """``blocks[name]``: the step-layout (T, K, b, g, c) views of every block of gradient ``name``."""
        names = ("u", "delta", "B", "C") + (("yc",) if self.yc is not None else ())
        self.blocks = {name: _block_targets(getattr(self, name), self.plan) for name in names}


def _adjoint_ends(
    block: _Block, decays: tuple[torch.Tensor, ...], totals: tuple[torch.Tensor, ...] | None,
    injections: tuple[torch.Tensor, ...], entering: torch.Tensor, workspace: _Workspace,
) -> torch.Tensor:
    """The adjoint entering every chunk of the block from its end (K, b, g, n, h), given the adjoint
    ``entering`` the block's end; ``totals``: the chunks' total decays; ``injections``: C_t g_t of every
    step.

    Scans every chunk backwards from a zero adjoint (all chunks at once) to the adjoint it sends to the state
    before its first step, then carries across the chunks: end_{k-1} = local_start_k + decay_k * end_k.
    """
    chunks = block.chunks
    ends = workspace.chunk_state(2, chunks)
    ends[-1] = entering
    if chunks == 1:
        return ends
    local = workspace.chunk_state(1, chunks).copy_(injections[-1])
    for t in range(len(decays) - 2, -1, -1):
        torch.addcmul(injections[t], decays[t + 1], local, out=local)
    local.mul_(decays[0])
    local_starts = workspace.chunk_state_steps(1, chunks)
    end_steps = workspace.chunk_state_steps(2, chunks)
    for k in range(chunks - 1, 0, -1):
        torch.addcmul(local_starts[k], totals[k], end_steps[k], out=end_steps[k - 1])
    return ends


def _backward_block(
    seq: _Sequences, index: int, block: _Block, grad: torch.Tensor, starts: torch.Tensor,
    entering: torch.Tensor, grads: _Gradients, workspace: _Workspace,
) -> torch.Tensor:
    """Recompute the block's states from its chunks' start states ``starts`` (K, b, g, n, h), scan its adjoint
    from ``entering`` (the adjoint of the block's end state) and write or add every gradient of the block into
    ``grads``. Returns the adjoint of the block's start state. ``grad``: the block's gradient with respect to
    <C_t, h_t>, (T, K, b, g, h).
    """
    plan = seq.plan
    chunks = block.chunks
    exponent_grad = _block_decays(seq, block, workspace.block(0, chunks))
    decays = workspace.block_steps(0, chunks)
    states = _outer(block.du, block.B, out=workspace.block(1, chunks))
    drives = workspace.block_steps(1, chunks)
    totals = _chunk_decays(seq, block, workspace) if chunks > 1 else None
    _rescan(decays, drives, starts)

    # The adjoint lambda_t = C_t g_t + exp(dt_{t+1} A) lambda_{t+1}, written over the injections C_t g_t.
    # Once lambda_{t-1} is known, the decays of step t are replaced by the gradient with respect to their
    # exponent dt_t * A, e_t = lambda_t * exp(dt_t A) * h_{t-1}.
    adjoints = _outer(grad, block.C, out=workspace.block(2, chunks))
    injections = workspace.block_steps(2, chunks)
    ends = _adjoint_ends(block, decays, totals, injections, entering, workspace)
    injections[-1].add_(ends)
    for t in range(len(decays) - 1, 0, -1):
        torch.addcmul(injections[t - 1], decays[t], injections[t], out=injections[t - 1])
        decays[t].mul_(injections[t]).mul_(drives[t - 1])
    leaving = decays[0].mul_(injections[0])[0].clone()
    decays[0].mul_(starts)

    def store(name: str, values: torch.Tensor) -> None:
        grads.blocks[name][index].copy_(values)

    store("B", _sum_over_channels(adjoints, block.du, out=workspace.sequence("out_n", chunks)))
    store("C", _sum_over_channels(states, grad, out=workspace.sequence("out_n", chunks)))
    if grads.yc is not None:
        store("yc", _sum_over_state(states, block.C, out=workspace.sequence("out_h", chunks)))
    # The gradient with respect to du = dt * u gives those of u and, with the one through the decays
    # (sum_n A e_t), of dt.
    grad_du = _sum_over_state(adjoints, block.B, out=workspace.sequence("grad_du", chunks))
    grad_u = torch.mul(block.dt, grad_du, out=workspace.sequence("out_h", chunks))
    if seq.D is not None:
        grad_u.addcmul_(grad, seq.D)
        grads.D.add_(torch.mul(grad, block.u, out=workspace.sequence("scratch", chunks)).sum((0, 1, 2)))
    store("u", grad_u)
    # The sum of dt_t * e_t is the gradient of A, and sum_n A * e_t that of dt_t through the decay.
    grads.A.add_(torch.mul(exponent_grad, block.dt.unsqueeze(-2), out=adjoints).sum((0, 1, 2)))
    exponent_grad.mul_(seq.A)
    grad_delta = _sum_over_state(exponent_grad, workspace.sequence("ones_n", chunks), out=grad_u)
    grad_delta.addcmul_(block.u, grad_du)
    if seq.softplus:
        grad_delta.mul_(torch.sigmoid(block.x, out=grad_du))
    if block.padding < plan.chunk_len:
        grad_delta[block.padding :, -1] = 0
    store("delta", grad_delta)
    if grads.delta_bias is not None:
        grads.delta_bias.add_(grad_delta.sum((0, 1, 2)))
    return leaving


_BACKWARD_SEQUENCES = (*_BLOCK_SEQUENCES, "grad", "grad_du", "scratch", "out_n", "ones_n")


def _backward_scan(
    seq: _Sequences, boundaries: torch.Tensor, grad_yc: torch.Tensor, grad_last: torch.Tensor | None,
    needs_yc: bool,
) -> _Gradients:
    """Walk the blocks from last to first; ``boundaries`` (n_chunks, b, g, n, h) are the states at the chunk
    starts, ``grad_yc`` (b, d, L) is the gradient with respect to <C_t, h_t> + D u_t and ``grad_last``
    (b, g, n, h) the one of the last state (or None)."""
    plan = seq.plan
    b, g, n, h = seq.state_shape
    grad_blocks = _block_sources(_pad_steps(grad_yc, plan), g, plan)
    new = seq.u[0].new_empty
    grads = _Gradients(
        plan=plan,
        u=new(b, g, h, plan.padded_length),
        delta=new(b, g, h, plan.padded_length),
        B=new(b, g, n, plan.padded_length),
        C=new(b, g, n, plan.padded_length),
        yc=new(b, g, h, plan.padded_length) if needs_yc else None,
        A=seq.u[0].new_zeros(g, n, h),
        D=None if seq.D is None else seq.u[0].new_zeros(g, h),
        delta_bias=None if seq.delta_bias is None else seq.u[0].new_zeros(g, h),
    )
    workspace = _Workspace(seq, 3, _sequence_sizes(seq, _BACKWARD_SEQUENCES))
    workspace.sequences["ones_n"].fill_(1)
    entering = grad_last if grad_last is not None else seq.u[0].new_zeros(b, g, n, h)
    for index, start, stop in plan.blocks(reverse=True):
        block = _Block.gather(seq, workspace, index, start, stop)
        grad = workspace.gather("grad", grad_blocks[index])
        entering = _backward_block(seq, index, block, grad, boundaries[start:stop], entering, grads, workspace)
    return grads


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    """Derivative of silu(z) = z * sigmoid(z)."""
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


class ChunkedSelectiveScan(torch.autograd.Function):
    """Autograd function for the chunked scan. Inputs are validated by the caller; B and C are grouped.

    Forward and backward run with autocast disabled: the scan is always computed in float32 (float64 for
    float64 inputs), also inside an autocast region.
    """

    @staticmethod
    def forward(
        ctx, delta_softplus: bool, chunk_size: int | None, *tensors: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tensors``: u, delta, A, B, C, D, z, delta_bias, with the shapes ``selective_scan_torch`` takes.

        Returns y (b, d, L) and the last state (b, d, n), both in the compute dtype.
        """
        u, delta, A, B, C, D, z, delta_bias = tensors

        def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            with torch.autocast(device_type=u.device.type, enabled=False):
                dtype = _compute_dtype(u)
                cast = (_cast(x, dtype) for x in (u, delta, A, B, C, D, delta_bias))
                outputs, chunk_starts, last = _forward_scan(_prepare(*cast, delta_softplus, chunk_size))
                y = _unpad(outputs, u.shape[-1])
                if z is not None:
                    y = y.mul_(F.silu(z.to(dtype)))
            return y, last.transpose(2, 3).reshape(u.shape[0], A.shape[0], A.shape[1]), chunk_starts

        y, last, chunk_starts = run_or_replay(u, compute)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_starts)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor | None, grad_last: torch.Tensor | None):
        u, delta, A, B, C, D, z, delta_bias, boundaries = ctx.saved_tensors
        with torch.autocast(device_type=u.device.type, enabled=False):
            dtype = boundaries.dtype
            length = u.shape[-1]
            uf = u.to(dtype)
            if grad_y is None:
                grad_y = torch.zeros_like(uf)
            grad_y = grad_y.to(dtype)
            seq = _prepare(
                uf, *(_cast(x, dtype) for x in (delta, A, B, C, D, delta_bias)), ctx.delta_softplus, ctx.chunk_size
            )
            grad_yc = grad_y if z is None else grad_y * F.silu(z.to(dtype))
            b, g, n, h = seq.state_shape
            last = None if grad_last is None else grad_last.to(dtype).view(b, g, h, n).transpose(2, 3).contiguous()
            needs_yc = z is not None and ctx.needs_input_grad[_Z_INPUT]
            grads = _backward_scan(seq, boundaries, grad_yc, last, needs_yc)
            del seq
            grad_z = None
            if grads.yc is not None:
                skip = _unpad(grads.yc, length)
                if D is not None:
                    skip.addcmul_(D.to(dtype)[:, None], uf)
                grad_z = (grad_y * skip * _silu_grad(z.to(dtype))).to(z.dtype)
        return (
            None,
            None,
            _unpad(grads.u, length).to(u.dtype),
            _unpad(grads.delta, length).to(delta.dtype),
            grads.A.transpose(1, 2).reshape(A.shape).to(A.dtype),
            _unpad(grads.B, length).view(B.shape).to(B.dtype),
            _unpad(grads.C, length).view(C.shape).to(C.dtype),
            None if D is None else grads.D.reshape(D.shape).to(D.dtype),
            grad_z,
            None if delta_bias is None else grads.delta_bias.reshape(delta_bias.shape).to(delta_bias.dtype),
        )


def _unpad(x: torch.Tensor, length: int) -> torch.Tensor:
    """(b, g, c, padded L) -> contiguous (b, g * c, L) without the padding."""
    b, g, c, padded = x.shape
    x = x.view(b, g * c, padded)
    return x if padded == length else x[..., :length].contiguous()


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
    D/delta_bias (d,) or None; ``chunk_size`` steps per chunk (None: chosen from L, the sizes and the device).

    Returns y (b, d, L) in the compute dtype (float32, or float64 for float64 inputs), and the last state
    (b, d, n) when ``return_last_state``.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    y, last_state = ChunkedSelectiveScan.apply(delta_softplus, chunk_size, *tensors)
    return (y, last_state) if return_last_state else y

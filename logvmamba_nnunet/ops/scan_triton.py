"""Triton backend of the Mamba-1 selective scan, forward and backward.

Layout of the work: every program owns one batch element, a block of ``BLOCK_D`` channels (all in one
B/C group) and one chunk of the sequence; it walks its chunk in tiles of ``BLOCK_T`` steps, with the
states of a tile ``(BLOCK_T, BLOCK_D, N)`` in registers, in fp32 (one thread per (channel, state) pair
holds all ``BLOCK_T`` steps). Inside a tile the recurrence ``h_t = a_t h_{t-1} + b_t`` is an associative
scan over the pairs ``(a_t, b_t)``, which only ever multiplies decays ``a_t <= 1`` (no division, no
log-space), so it is as exact as the sequential loop.

Forward (three launches):
  1. chunk summaries: each chunk scanned from a zero state gives its end state and its decay product;
  2. carry: one program per channel block walks the chunks in order and writes each chunk's true start
     state (``h_start[c+1] = decay[c] * h_start[c] + end[c]``);
  3. output: each chunk is rescanned from its true start state, giving ``y`` (and ``h_{L-1}``); when
     gradients are needed it also stores the state at the start of every tile (B, D, L / BLOCK_T, N) in
     fp32 (for N = BLOCK_T = 16 as large as u in fp32), the only thing the backward keeps besides the
     inputs.
With a single chunk, launches 1 and 2 are skipped.

Backward (three launches), with the adjoint ``lambda_t = dL/dh_t`` obeying the reverse recurrence
``lambda_t = C_t dy_t + a_{t+1} lambda_{t+1}``:
  1. chunk summaries of the reverse recurrence from a zero carry;
  2. carry: the chunks walked backwards give each chunk the adjoint entering from its right (the same
     kernel as the forward carry, ``_chunk_carry_kernel``, walking in reverse);
  3. main: each chunk is walked tile by tile from its end; a tile recomputes ``h_{t-1}`` from its saved
     start state, scans the adjoint backwards and forms every gradient. Per-element gradients (u, delta,
     z) are written directly; the reductions are deterministic: B/C partial sums per channel block and
     A/D/delta_bias partial sums per (batch, chunk) are written to buffers and summed with torch.

Importing this module never fails: without triton it still imports, and calling it raises. On CPU tensors
the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported),
which is how the tests check them; ``backends.triton_unavailable_reason`` is the one check of both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from logvmamba_nnunet.ops.backends import import_failure, triton_unavailable_reason
from logvmamba_nnunet.ops.constants import LN_2, LOG2_E, SOFTPLUS_THRESHOLD
from logvmamba_nnunet.ops.integers import largest_power_of_two_divisor
from logvmamba_nnunet.ops.scan_inputs import check_chunk_size
from logvmamba_nnunet.ops.scan_memo import run_or_replay

try:
    import triton
    import triton.language as tl
except ImportError as _error:
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR: ImportError | None = _error
else:
    _TRITON_IMPORT_ERROR = None

__all__ = ["TRITON_AVAILABLE", "selective_scan_triton"]

TRITON_AVAILABLE = triton is not None

# A program's tile is (BLOCK_T, BLOCK_D, BLOCK_N): one thread per (channel, state) pair, holding the
# BLOCK_T steps in registers. With N = 16 the backward kernel needs about 200 registers per thread for
# BLOCK_T = 16 (checked with ptxas for sm_90); twice that would spill.
_MAX_BLOCK_D = 16
_BLOCK_T = 16
_MAX_WARPS = 8
_THREADS_PER_WARP = 32
# Aim for at least this many programs per launch so that a large GPU is filled a few times over.
_TARGET_PROGRAMS = 2048
_MIN_CHUNK_TILES = 4


def _jit(fn):
    """``triton.jit`` when triton is importable; otherwise the plain (never launched) function."""
    return fn if triton is None else triton.jit(fn)


def _constexpr(value: float) -> object:
    """``value`` as a Triton compile-time constant: kernels may only read globals that are ``tl.constexpr``."""
    return value if tl is None else tl.constexpr(value)


_LOG2_E = _constexpr(LOG2_E)
_LN_2 = _constexpr(LN_2)
_SOFTPLUS_THRESHOLD = _constexpr(SOFTPLUS_THRESHOLD)


# --------------------------------------------------------------------------------------------------
# Device helpers. Tiles are time-major: (BLOCK_T, BLOCK_D) per channel, (BLOCK_T, BLOCK_N) per state
# index, (BLOCK_T, BLOCK_D, BLOCK_N) for the state sequence, so that a thread holds one (channel, state)
# pair for all BLOCK_T steps and the scans along time run in registers.
# --------------------------------------------------------------------------------------------------


@_jit
def _compose(decay_first, value_first, decay_second, value_second):
    """Compose two affine maps ``h -> a h + b``, applying ``first`` then ``second``.

    The forward scan walks time forwards, so ``first`` is the earlier segment; a reverse scan walks time
    backwards (Triton applies the combine to the flipped sequence), so ``first`` is the later segment.
    """
    return decay_first * decay_second, value_first * decay_second + value_second


@_jit
def _load_exp2_rates(A_ptr, d, n, n_valid, d_state):
    """A[d, n] * log2(e) (BLOCK_D, BLOCK_N), so that ``exp(step * A)`` is one exp2."""
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=n_valid[None, :], other=0.0)
    return A * _LOG2_E


@_jit
def _softplus(x):
    """``log(1 + exp(x))``, the identity above ``SOFTPLUS_THRESHOLD`` as in PyTorch; accurate when ``exp(x)``
    is tiny (Kahan's log1p trick)."""
    w = tl.exp(tl.minimum(x, _SOFTPLUS_THRESHOLD))
    one_plus_w = 1.0 + w
    denominator = one_plus_w - 1.0
    safe_denominator = tl.where(denominator == 0.0, 1.0, denominator)
    log1p_w = tl.where(denominator == 0.0, w, tl.log(one_plus_w) * (w / safe_denominator))
    return tl.where(x > _SOFTPLUS_THRESHOLD, x, log1p_w)


@_jit
def _softplus_grad(x):
    """Derivative of ``_softplus``: sigmoid(x), and 1 above ``SOFTPLUS_THRESHOLD``."""
    return tl.where(x > _SOFTPLUS_THRESHOLD, 1.0, tl.sigmoid(x))


@_jit
def _load_rows(rows, t, valid):
    """Load ``rows[t]`` as fp32 (BLOCK_T, R), zero where invalid; ``rows`` (1, R) points at R rows."""
    return tl.load(rows + t[:, None], mask=valid, other=0.0).to(tl.float32)


@_jit
def _load_step(delta_rows, t, valid, delta_bias, DELTA_SOFTPLUS: tl.constexpr):
    """Step at times ``t`` for a channel block, (BLOCK_T, BLOCK_D) fp32, and ``delta + delta_bias``.

    ``delta_rows`` (1, BLOCK_D) points at the channels' rows. The step is ``softplus(delta + bias)``
    when asked; invalid positions get step 0 (decay 1, no input), which leaves the state unchanged.
    """
    raw = tl.load(delta_rows + t[:, None], mask=valid, other=0.0).to(tl.float32) + delta_bias[None, :]
    step = _softplus(raw) if DELTA_SOFTPLUS else raw
    return tl.where(valid, step, 0.0), raw


@_jit
def _decays(step, A_log2):
    """``exp(step * A)``: steps (BLOCK_T, BLOCK_D), log2 rates (BLOCK_D, BLOCK_N) -> (BLOCK_T, BLOCK_D,
    BLOCK_N)."""
    return tl.exp2(step[:, :, None] * A_log2[None, :, :])


@_jit
def _drives(step, u, B):
    """``step * u * B``: (BLOCK_T, BLOCK_D) and (BLOCK_T, BLOCK_N) -> (BLOCK_T, BLOCK_D, BLOCK_N)."""
    return (step * u)[:, :, None] * B[:, None, :]


@_jit
def _time_slice(x, index, BLOCK_T: tl.constexpr):
    """Time step ``index`` of a (BLOCK_T, BLOCK_D, BLOCK_N) tile: (BLOCK_D, BLOCK_N)."""
    pick = tl.arange(0, BLOCK_T) == index
    return tl.sum(tl.where(pick[:, None, None], x, 0.0), axis=0)


@_jit
def _fold_tile(decays, values, carry, decay_product, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr):
    """Fold one tile into a running chunk summary.

    The tile's affine maps ``h -> decays[t] h + values[t]`` (BLOCK_T, BLOCK_D, BLOCK_N) are composed in
    time order (from the tile's last step when ``REVERSE``) and applied to ``carry`` (BLOCK_D, BLOCK_N);
    ``decay_product`` (BLOCK_D, BLOCK_N) is multiplied by the tile's total decay. Returns both.
    """
    decay_scan, value_scan = tl.associative_scan((decays, values), 0, _compose, reverse=REVERSE)
    edge = 0 if REVERSE else BLOCK_T - 1
    tile_decay = _time_slice(decay_scan, edge, BLOCK_T)
    return tile_decay * carry + _time_slice(value_scan, edge, BLOCK_T), decay_product * tile_decay


@_jit
def _state_offsets(pid_batch, d, n, channels, slots, slot, d_state):
    """Offsets (BLOCK_D, BLOCK_N) into a (batch, channels, slots, d_state) fp32 buffer at ``slot``."""
    rows = ((pid_batch * channels + d).to(tl.int64) * slots + slot) * d_state
    return rows[:, None] + n[None, :]


@_jit
def _block_indices(pid_block, d_state, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Channels d (BLOCK_D,) of channel block ``pid_block``, state indices n (BLOCK_N,) and the mask
    ``n < d_state`` (BLOCK_N,)."""
    d = pid_block * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    return d, n, n < d_state


@_jit
def _chunk_program(delta_ptr, A_ptr, delta_bias_ptr, channels, groups, d_state, length, channels_per_group,
                   chunk_len, n_chunks, HAS_DELTA_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Prologue of the chunked kernels, whose grid is (n_chunks, channels // BLOCK_D, batch).

    Returns, for this program's chunk, channel block and batch element:
        pid_chunk, pid_block, pid_batch: the program ids; chunk_start: the chunk's first step;
        d (BLOCK_D,), n (BLOCK_N,), n_valid (BLOCK_N,): channels, state indices and ``n < d_state``;
        channel_rows (1, BLOCK_D), state_rows (1, BLOCK_N): int64 offsets of the u/delta/z rows and of the
            B/C rows of the channels' group, relative to the tensors' base pointers;
        delta_rows (1, BLOCK_D): pointers to the delta rows;
        chunk_offsets (BLOCK_D, BLOCK_N): offsets of this chunk's entry in a (batch, channels, n_chunks,
            d_state) buffer;
        A_log2 (BLOCK_D, BLOCK_N): A * log2(e); delta_bias (BLOCK_D,) fp32, zeros without one.
    """
    pid_chunk, pid_block, pid_batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d, n, n_valid = _block_indices(pid_block, d_state, BLOCK_D, BLOCK_N)
    group = (pid_block * BLOCK_D) // channels_per_group
    channel_rows = ((pid_batch * channels + d).to(tl.int64) * length)[None, :]
    state_rows = (((pid_batch * groups + group) * d_state + n).to(tl.int64) * length)[None, :]
    chunk_offsets = _state_offsets(pid_batch, d, n, channels, n_chunks, pid_chunk, d_state)
    A_log2 = _load_exp2_rates(A_ptr, d, n, n_valid, d_state)
    delta_bias = tl.load(delta_bias_ptr + d) if HAS_DELTA_BIAS else tl.zeros([BLOCK_D], tl.float32)
    return (pid_chunk, pid_block, pid_batch, pid_chunk * chunk_len, d, n, n_valid, channel_rows, state_rows,
            delta_ptr + channel_rows, chunk_offsets, A_log2, delta_bias)


@_jit
def _chunk_carry_kernel(
    summary_ptr, decay_ptr, carry_ptr, channels, d_state, n_chunks,
    REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Launch 2 of forward and backward: walk the chunks in order (from the last one when ``REVERSE``) and
    write the carry entering each chunk, ``carry <- decay[chunk] * carry + summary[chunk]``.

    Forward: the summaries are the chunk end states, the carries the chunks' true start states.
    Backward (``REVERSE``): the summaries are the chunk start adjoints, the carries the adjoints entering
    each chunk from its right. On entry ``carry`` holds the carry into the first chunk walked (zeros, or the
    gradient of the last state); on exit every chunk's carry. All buffers (batch, channels, n_chunks,
    d_state) fp32. Grid (channels // BLOCK_D, batch).
    """
    pid_block, pid_batch = tl.program_id(0), tl.program_id(1)
    d, n, n_valid = _block_indices(pid_block, d_state, BLOCK_D, BLOCK_N)
    mask = n_valid[None, :]
    first = n_chunks - 1 if REVERSE else 0
    carry = tl.load(carry_ptr + _state_offsets(pid_batch, d, n, channels, n_chunks, first, d_state), mask=mask,
                    other=0.0)
    for k in range(0, n_chunks):
        chunk = n_chunks - 1 - k if REVERSE else k
        offsets = _state_offsets(pid_batch, d, n, channels, n_chunks, chunk, d_state)
        tl.store(carry_ptr + offsets, carry, mask=mask)
        summary = tl.load(summary_ptr + offsets, mask=mask, other=0.0)
        decay = tl.load(decay_ptr + offsets, mask=mask, other=0.0)
        carry = decay * carry + summary


# --------------------------------------------------------------------------------------------------
# Forward kernels
# --------------------------------------------------------------------------------------------------


@_jit
def _forward_chunk_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, delta_bias_ptr, chunk_end_ptr, chunk_decay_ptr,
    channels, groups, d_state, length, channels_per_group, chunk_len, n_chunks,
    DELTA_SOFTPLUS: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Forward launch 1: per chunk, the end state from a zero start and the product of decays.

    Grid (n_chunks, channels // BLOCK_D, batch). Writes (batch, channels, n_chunks, d_state) buffers.
    """
    (_pid_chunk, _pid_block, _pid_batch, chunk_start, _d, _n, n_valid, channel_rows, state_rows, delta_rows,
     chunk_offsets, A_log2, delta_bias) = _chunk_program(delta_ptr, A_ptr, delta_bias_ptr, channels, groups,
        d_state, length, channels_per_group, chunk_len, n_chunks, HAS_DELTA_BIAS, BLOCK_D, BLOCK_N)
    state = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    decay_product = tl.full([BLOCK_D, BLOCK_N], 1.0, tl.float32)
    for t0 in range(chunk_start, tl.minimum(chunk_start + chunk_len, length), BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        valid = (t < length)[:, None]
        step, _raw = _load_step(delta_rows, t, valid, delta_bias, DELTA_SOFTPLUS)
        u = _load_rows(u_ptr + channel_rows, t, valid)
        B = _load_rows(B_ptr + state_rows, t, valid & n_valid[None, :])
        state, decay_product = _fold_tile(_decays(step, A_log2), _drives(step, u, B), state, decay_product,
                                          False, BLOCK_T)

    tl.store(chunk_end_ptr + chunk_offsets, state, mask=n_valid[None, :])
    tl.store(chunk_decay_ptr + chunk_offsets, decay_product, mask=n_valid[None, :])


@_jit
def _forward_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, chunk_start_ptr,
    y_ptr, last_state_ptr, tile_state_ptr,
    channels, groups, d_state, length, channels_per_group, chunk_len, n_chunks, n_tiles,
    DELTA_SOFTPLUS: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    SAVE_TILE_STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Forward launch 3: rescan each chunk from its true start state.

    Writes y (batch, channels, length), the last state (batch, channels, d_state) and, if asked, the
    state at every tile start (batch, channels, n_tiles, d_state). Grid (n_chunks, channels // BLOCK_D,
    batch).
    """
    (pid_chunk, _pid_block, pid_batch, chunk_start, d, n, n_valid, channel_rows, state_rows, delta_rows,
     chunk_offsets, A_log2, delta_bias) = _chunk_program(delta_ptr, A_ptr, delta_bias_ptr, channels, groups,
        d_state, length, channels_per_group, chunk_len, n_chunks, HAS_DELTA_BIAS, BLOCK_D, BLOCK_N)
    skip = tl.load(D_ptr + d) if HAS_D else tl.zeros([BLOCK_D], tl.float32)

    state = tl.load(chunk_start_ptr + chunk_offsets, mask=n_valid[None, :], other=0.0)
    for t0 in range(chunk_start, tl.minimum(chunk_start + chunk_len, length), BLOCK_T):
        if SAVE_TILE_STATES:
            tile_offsets = _state_offsets(pid_batch, d, n, channels, n_tiles, t0 // BLOCK_T, d_state)
            tl.store(tile_state_ptr + tile_offsets, state, mask=n_valid[None, :])
        t = t0 + tl.arange(0, BLOCK_T)
        valid = (t < length)[:, None]
        step, _raw = _load_step(delta_rows, t, valid, delta_bias, DELTA_SOFTPLUS)
        u = _load_rows(u_ptr + channel_rows, t, valid)
        B = _load_rows(B_ptr + state_rows, t, valid & n_valid[None, :])
        C = _load_rows(C_ptr + state_rows, t, valid & n_valid[None, :])
        decay_scan, value_scan = tl.associative_scan(
            (_decays(step, A_log2), _drives(step, u, B)), 0, _compose)
        states = value_scan + decay_scan * state[None, :, :]
        y = tl.sum(states * C[:, None, :], axis=2) + skip[None, :] * u
        if HAS_Z:
            z = _load_rows(z_ptr + channel_rows, t, valid)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + channel_rows + t[:, None], y, mask=valid)
        state = _time_slice(states, BLOCK_T - 1, BLOCK_T)

    if pid_chunk == n_chunks - 1:
        last_offsets = (pid_batch * channels + d).to(tl.int64)[:, None] * d_state + n[None, :]
        tl.store(last_state_ptr + last_offsets, state, mask=n_valid[None, :])


# --------------------------------------------------------------------------------------------------
# Backward kernels
# --------------------------------------------------------------------------------------------------


@_jit
def _output_gradient(dout_rows, z_rows, t, valid, HAS_Z: tl.constexpr):
    """Gradient reaching the ungated output: dout * silu(z) (or dout), (BLOCK_T, BLOCK_D)."""
    dout = _load_rows(dout_rows, t, valid)
    if HAS_Z:
        z = _load_rows(z_rows, t, valid)
        dout = dout * z * tl.sigmoid(z)
    return dout


@_jit
def _backward_chunk_summary_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, delta_bias_ptr, dout_ptr, chunk_adjoint_ptr, chunk_decay_ptr,
    channels, groups, d_state, length, channels_per_group, chunk_len, n_chunks,
    DELTA_SOFTPLUS: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, HAS_Z: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Backward launch 1: per chunk, the adjoint at its first step with zero carry from the right, and
    the product of the decays ``a_{t+1}`` over the chunk. Grid (n_chunks, channels // BLOCK_D, batch)."""
    (_pid_chunk, _pid_block, _pid_batch, chunk_start, _d, _n, n_valid, channel_rows, state_rows, delta_rows,
     chunk_offsets, A_log2, delta_bias) = _chunk_program(delta_ptr, A_ptr, delta_bias_ptr, channels, groups,
        d_state, length, channels_per_group, chunk_len, n_chunks, HAS_DELTA_BIAS, BLOCK_D, BLOCK_N)
    adjoint = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    decay_product = tl.full([BLOCK_D, BLOCK_N], 1.0, tl.float32)
    chunk_tiles = tl.cdiv(tl.minimum(chunk_start + chunk_len, length) - chunk_start, BLOCK_T)
    for k in range(0, chunk_tiles):
        t = chunk_start + (chunk_tiles - 1 - k) * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = (t < length)[:, None]
        next_valid = (t + 1 < length)[:, None]
        next_step, _next_raw = _load_step(delta_rows, t + 1, next_valid, delta_bias, DELTA_SOFTPLUS)
        dy = _output_gradient(dout_ptr + channel_rows, z_ptr + channel_rows, t, valid, HAS_Z)
        C = _load_rows(C_ptr + state_rows, t, valid & n_valid[None, :])
        adjoint, decay_product = _fold_tile(_decays(next_step, A_log2), C[:, None, :] * dy[:, :, None], adjoint,
                                            decay_product, True, BLOCK_T)

    tl.store(chunk_adjoint_ptr + chunk_offsets, adjoint, mask=n_valid[None, :])
    tl.store(chunk_decay_ptr + chunk_offsets, decay_product, mask=n_valid[None, :])


@_jit
def _backward_main_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, dout_ptr,
    tile_state_ptr, incoming_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_part_ptr, dC_part_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr,
    channels, groups, d_state, length, channels_per_group, chunk_len, n_chunks, n_tiles, n_blocks,
    DELTA_SOFTPLUS: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Backward launch 3: all gradients of one chunk, tiles walked from the chunk's end.

    Writes du, ddelta (w.r.t. the raw delta), dz (batch, channels, length); dB/dC partial sums over
    this channel block (batch, n_blocks, d_state, length); dA partials (batch, channels, n_chunks,
    d_state); dD and d_delta_bias partials (batch, n_chunks, channels).
    Grid (n_chunks, channels // BLOCK_D, batch).
    """
    (pid_chunk, pid_block, pid_batch, chunk_start, d, n, n_valid, channel_rows, state_rows, delta_rows,
     chunk_offsets, A_log2, delta_bias) = _chunk_program(delta_ptr, A_ptr, delta_bias_ptr, channels, groups,
        d_state, length, channels_per_group, chunk_len, n_chunks, HAS_DELTA_BIAS, BLOCK_D, BLOCK_N)
    skip = tl.load(D_ptr + d) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    partial_rows = (((pid_batch * n_blocks + pid_block) * d_state + n).to(tl.int64) * length)[None, :]
    first = (tl.arange(0, BLOCK_T) == 0)[:, None, None]

    adjoint_next = tl.load(incoming_ptr + chunk_offsets, mask=n_valid[None, :], other=0.0)
    dA = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD = tl.zeros([BLOCK_D], tl.float32)
    dbias = tl.zeros([BLOCK_D], tl.float32)
    chunk_tiles = tl.cdiv(tl.minimum(chunk_start + chunk_len, length) - chunk_start, BLOCK_T)
    for k in range(0, chunk_tiles):
        t0 = chunk_start + (chunk_tiles - 1 - k) * BLOCK_T
        t = t0 + tl.arange(0, BLOCK_T)
        valid = (t < length)[:, None]
        prev_valid = ((t >= 1) & (t - 1 < length))[:, None]
        tile_offsets = _state_offsets(pid_batch, d, n, channels, n_tiles, t0 // BLOCK_T, d_state)
        tile_start = tl.load(tile_state_ptr + tile_offsets, mask=n_valid[None, :], other=0.0)

        # h_{t-1}: scan the previous steps' pairs, the first one replaced by the tile's start state.
        prev_step, _prev_raw = _load_step(delta_rows, t - 1, prev_valid, delta_bias,
                                          DELTA_SOFTPLUS)
        prev_u = _load_rows(u_ptr + channel_rows, t - 1, prev_valid)
        prev_B = _load_rows(B_ptr + state_rows, t - 1, prev_valid & n_valid[None, :])
        prev_decay = tl.where(first, 0.0, _decays(prev_step, A_log2))
        prev_drive = tl.where(first, tile_start[None, :, :], _drives(prev_step, prev_u, prev_B))
        _decay_prefix, state_before = tl.associative_scan((prev_decay, prev_drive), 0, _compose)

        step, raw_step = _load_step(delta_rows, t, valid, delta_bias, DELTA_SOFTPLUS)
        u = _load_rows(u_ptr + channel_rows, t, valid)
        B = _load_rows(B_ptr + state_rows, t, valid & n_valid[None, :])
        C = _load_rows(C_ptr + state_rows, t, valid & n_valid[None, :])
        dout = _load_rows(dout_ptr + channel_rows, t, valid)
        decayed_before = _decays(step, A_log2) * state_before
        states = decayed_before + _drives(step, u, B)
        if HAS_Z:
            z = _load_rows(z_ptr + channel_rows, t, valid)
            gate = tl.sigmoid(z)
            y = tl.sum(states * C[:, None, :], axis=2) + skip[None, :] * u
            dz = dout * y * gate * (1.0 + z * (1.0 - gate))
            tl.store(dz_ptr + channel_rows + t[:, None], dz, mask=valid)
            dy = dout * z * gate
        else:
            dy = dout

        # Adjoint lambda_t = C_t dy_t + a_{t+1} lambda_{t+1}, then the carry from the right.
        next_valid = (t + 1 < length)[:, None]
        next_step, _next_raw = _load_step(delta_rows, t + 1, next_valid, delta_bias, DELTA_SOFTPLUS)
        decay_suffix, local_adjoint = tl.associative_scan(
            (_decays(next_step, A_log2), C[:, None, :] * dy[:, :, None]), 0, _compose, reverse=True)
        adjoint = local_adjoint + decay_suffix * adjoint_next[None, :, :]
        adjoint_next = _time_slice(adjoint, 0, BLOCK_T)

        state_mask = valid & n_valid[None, :]
        dC = tl.sum(states * dy[:, :, None], axis=1)
        dB = tl.sum(adjoint * (step * u)[:, :, None], axis=1)
        tl.store(dC_part_ptr + partial_rows + t[:, None], dC, mask=state_mask)
        tl.store(dB_part_ptr + partial_rows + t[:, None], dB, mask=state_mask)
        adjoint_B = tl.sum(adjoint * B[:, None, :], axis=2)
        tl.store(du_ptr + channel_rows + t[:, None], step * adjoint_B + skip[None, :] * dy, mask=valid)
        adjoint_decayed = adjoint * decayed_before
        # d h_t / d step_t = A a_t h_{t-1} + u_t B_t; A = A_log2 * ln(2).
        dstep = u * adjoint_B + tl.sum(adjoint_decayed * A_log2[None, :, :], axis=2) * _LN_2
        if DELTA_SOFTPLUS:
            dstep = dstep * _softplus_grad(raw_step)
        dstep = tl.where(valid, dstep, 0.0)
        tl.store(ddelta_ptr + channel_rows + t[:, None], dstep, mask=valid)
        dA += tl.sum(adjoint_decayed * step[:, :, None], axis=0)
        dD += tl.sum(dy * u, axis=0)
        dbias += tl.sum(dstep, axis=0)

    tl.store(dA_part_ptr + chunk_offsets, dA, mask=n_valid[None, :])
    reduction_offsets = (pid_batch * n_chunks + pid_chunk).to(tl.int64) * channels + d
    tl.store(dD_part_ptr + reduction_offsets, dD)
    tl.store(dbias_part_ptr + reduction_offsets, dbias)


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ScanGeometry:
    """How a (batch, channels, length) scan is split over programs.

    Programs cover ``block_d`` channels (inside one B/C group) and one chunk of ``chunk_len`` steps,
    walked in tiles of ``block_t`` steps; the state dimension is padded to ``block_n``. ``num_warps``
    gives about one thread per (channel, state) pair.
    """

    batch: int
    channels: int
    groups: int
    d_state: int
    length: int
    block_d: int
    block_n: int
    block_t: int
    chunk_len: int
    num_warps: int

    @property
    def n_chunks(self) -> int:
        return -(-self.length // self.chunk_len)

    @property
    def n_tiles(self) -> int:
        return -(-self.length // self.block_t)

    @property
    def n_blocks(self) -> int:
        return self.channels // self.block_d

    @property
    def channels_per_group(self) -> int:
        return self.channels // self.groups

    def scalars(self) -> tuple[int, int, int, int, int, int, int]:
        """The shape arguments shared by the chunked kernels, in their order."""
        return (self.channels, self.groups, self.d_state, self.length, self.channels_per_group,
                self.chunk_len, self.n_chunks)


def _plan(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, chunk_size: int | None) -> _ScanGeometry:
    """Choose block sizes and the chunk length for inputs u (B, D, L), A (D, N), B (B, G, N, L)."""
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    block_d = largest_power_of_two_divisor(channels // groups, _MAX_BLOCK_D)
    block_n = triton.next_power_of_2(d_state)
    block_t = min(_BLOCK_T, triton.next_power_of_2(length))
    if chunk_size is not None:
        block_t = min(block_t, 1 << (chunk_size.bit_length() - 1))
        chunk_tiles = -(-chunk_size // block_t)
    else:
        columns = batch * (channels // block_d)
        wanted_chunks = -(-_TARGET_PROGRAMS // columns)
        chunk_tiles = max(_MIN_CHUNK_TILES, -(-length // (wanted_chunks * block_t)))
    num_warps = min(_MAX_WARPS, max(1, block_d * block_n // _THREADS_PER_WARP))
    return _ScanGeometry(batch, channels, groups, d_state, length, block_d, block_n, block_t,
                         block_t * chunk_tiles, num_warps)


def _check_runnable(u: torch.Tensor) -> None:
    """Raise a clear error when the kernels cannot run on ``u``'s device (the backends' shared check)."""
    failed_import = None if _TRITON_IMPORT_ERROR is None else import_failure("triton", _TRITON_IMPORT_ERROR)
    reason = triton_unavailable_reason(failed_import, u.device)
    if reason is not None:
        raise RuntimeError(
            f"the 'triton' selective-scan backend cannot run: {reason}; use backend='torch' instead"
        ) from _TRITON_IMPORT_ERROR


def _device_scope(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``x``'s GPU the current one while kernels are launched (Triton launches on the current GPU)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _flags(D, z, delta_bias, delta_softplus: bool) -> dict[str, bool]:
    return {"DELTA_SOFTPLUS": bool(delta_softplus), "HAS_DELTA_BIAS": delta_bias is not None,
            "HAS_D": D is not None, "HAS_Z": z is not None}


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, geometry: _ScanGeometry,
             save_tile_states: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the forward launches. Returns y (B, D, L) fp32, the last state (B, D, N) fp32 and, when
    ``save_tile_states``, the state at the start of every tile (B, D, n_tiles, N) fp32."""
    g = geometry
    fp32 = {"device": u.device, "dtype": torch.float32}
    flags = _flags(D, z, delta_bias, delta_softplus)
    blocks = {"BLOCK_D": g.block_d, "BLOCK_N": g.block_n}
    dummy = u  # stands in for absent optional tensors; their loads are compiled out
    chunk_start = torch.zeros(g.batch, g.channels, g.n_chunks, g.d_state, **fp32)
    if g.n_chunks > 1:
        chunk_end = torch.empty_like(chunk_start)
        chunk_decay = torch.empty_like(chunk_start)
        grid = (g.n_chunks, g.n_blocks, g.batch)
        _forward_chunk_summary_kernel[grid](
            u, delta, A, B, dummy if delta_bias is None else delta_bias, chunk_end, chunk_decay, *g.scalars(),
            DELTA_SOFTPLUS=flags["DELTA_SOFTPLUS"], HAS_DELTA_BIAS=flags["HAS_DELTA_BIAS"], **blocks,
            BLOCK_T=g.block_t, num_warps=g.num_warps)
        _chunk_carry_kernel[(g.n_blocks, g.batch)](
            chunk_end, chunk_decay, chunk_start, g.channels, g.d_state, g.n_chunks, REVERSE=False, **blocks,
            num_warps=1)
    y = torch.empty(g.batch, g.channels, g.length, **fp32)
    last_state = torch.empty(g.batch, g.channels, g.d_state, **fp32)
    tile_states = torch.empty(g.batch, g.channels, g.n_tiles, g.d_state, **fp32) if save_tile_states else None
    _forward_output_kernel[(g.n_chunks, g.n_blocks, g.batch)](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, chunk_start, y, last_state,
        y if tile_states is None else tile_states, *g.scalars(), g.n_tiles, **flags,
        SAVE_TILE_STATES=save_tile_states, **blocks, BLOCK_T=g.block_t, num_warps=g.num_warps)
    return y, last_state, tile_states


def _backward(saved: tuple, dout: torch.Tensor, dlast: torch.Tensor | None, delta_softplus: bool,
              geometry: _ScanGeometry) -> tuple[torch.Tensor, ...]:
    """Run the backward launches. Returns du, ddelta, dA, dB, dC, dD, dz, d_delta_bias (absent optional
    inputs give None), each in its input's dtype and shape."""
    u, delta, A, B, C, D, z, delta_bias, tile_states = saved
    g = geometry
    fp32 = {"device": u.device, "dtype": torch.float32}
    flags = _flags(D, z, delta_bias, delta_softplus)
    blocks = {"BLOCK_D": g.block_d, "BLOCK_N": g.block_n}
    dummy = u
    grid = (g.n_chunks, g.n_blocks, g.batch)

    incoming = torch.zeros(g.batch, g.channels, g.n_chunks, g.d_state, **fp32)
    if dlast is not None:
        incoming[:, :, -1] = dlast
    if g.n_chunks > 1:
        chunk_adjoint = torch.empty_like(incoming)
        chunk_decay = torch.empty_like(incoming)
        _backward_chunk_summary_kernel[grid](
            delta, A, C, dummy if z is None else z, dummy if delta_bias is None else delta_bias, dout,
            chunk_adjoint, chunk_decay, *g.scalars(), DELTA_SOFTPLUS=flags["DELTA_SOFTPLUS"],
            HAS_DELTA_BIAS=flags["HAS_DELTA_BIAS"], HAS_Z=flags["HAS_Z"], **blocks, BLOCK_T=g.block_t,
            num_warps=g.num_warps)
        _chunk_carry_kernel[(g.n_blocks, g.batch)](
            chunk_adjoint, chunk_decay, incoming, g.channels, g.d_state, g.n_chunks, REVERSE=True, **blocks,
            num_warps=1)

    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dB_part = torch.empty(g.batch, g.n_blocks, g.d_state, g.length, **fp32)
    dC_part = torch.empty_like(dB_part)
    dA_part = torch.empty(g.batch, g.channels, g.n_chunks, g.d_state, **fp32)
    dD_part = torch.empty(g.batch, g.n_chunks, g.channels, **fp32)
    dbias_part = torch.empty_like(dD_part)
    _backward_main_kernel[grid](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, dout, tile_states, incoming,
        du, ddelta, du if dz is None else dz, dB_part, dC_part, dA_part, dD_part, dbias_part,
        *g.scalars(), g.n_tiles, g.n_blocks, **flags, **blocks, BLOCK_T=g.block_t, num_warps=g.num_warps)

    def per_group(part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        blocks_per_group = g.n_blocks // g.groups
        return part.view(g.batch, g.groups, blocks_per_group, g.d_state, g.length).sum(2).to(like.dtype)

    dA = dA_part.sum((0, 2)).to(A.dtype)
    dD = dD_part.sum((0, 1)).to(D.dtype) if D is not None else None
    d_delta_bias = dbias_part.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, per_group(dB_part, B), per_group(dC_part, C), dD, dz, d_delta_bias


class _TritonSelectiveScan(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the tile start states, recomputes the rest in backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, needs_grad):
        geometry = _plan(u, A, B, chunk_size)

        def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            with _device_scope(u):
                return _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, geometry,
                                save_tile_states=needs_grad)

        y, last_state, tile_states = run_or_replay(u, compute)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, tile_states)
        ctx.geometry = geometry
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return y, last_state

    @staticmethod
    def backward(ctx, dy, dlast):
        saved = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(saved[0], dtype=torch.float32)
        with _device_scope(dy):
            grads = _backward(saved, dy.float().contiguous(), None if dlast is None else dlast.float(),
                              ctx.delta_softplus, ctx.geometry)
        needed = ctx.needs_input_grad
        du, ddelta, dA, dB, dC, dD, dz, d_delta_bias = (
            grad if needed[index] else None for index, grad in enumerate(grads))
        return du, ddelta, dA, dB, dC, dD, dz, d_delta_bias, None, None, None


def selective_scan_triton(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    delta_softplus: bool, return_last_state: bool, chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan on Triton kernels, differentiable w.r.t. every tensor argument.

    Takes tensors already validated by the dispatcher:
        u, delta: (batch, D, L), any float dtype (computed in fp32); z: (batch, D, L) or None.
        A: (D, N) fp32; B, C: grouped (batch, G, N, L) with D divisible by G;
        D, delta_bias: (D,) fp32 or None.
        chunk_size: sequence steps per parallel chunk (rounded up to the tile length); None picks one
        that gives the GPU enough programs.

    Returns y (batch, D, L) in fp32, and the last state (batch, D, N) fp32 when ``return_last_state``.
    Gradients flow from both outputs.

    Raises:
        ValueError: the sequence is empty or ``chunk_size`` is not a positive int.
        RuntimeError: triton is not importable, or the tensors are not on CUDA (outside the interpreter).
    """
    if u.shape[-1] < 1:
        raise ValueError(f"the triton selective scan needs at least one step; u has shape {tuple(u.shape)}")
    check_chunk_size(chunk_size)
    _check_runnable(u)
    tensors = [None if x is None else x.contiguous() for x in (u, delta, A, B, C, D, z, delta_bias)]
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    y, last_state = _TritonSelectiveScan.apply(*tensors, bool(delta_softplus), chunk_size, needs_grad)
    return (y, last_state) if return_last_state else y


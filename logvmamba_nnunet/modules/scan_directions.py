"""Scan orders of the K directions and the maps between raster-ordered tokens and each direction's sequence.

Directions (ordered as VMamba's SS2D so its pretrained K=4 weights map one to one):
K=1: raster (row-major); K=2: raster, reversed raster; K=4: raster, transposed (the last two spatial
axes swapped: column-major in 2D), reversed raster, reversed transposed.

Each direction's sequence is its ordering of the L local tokens with the G global tokens inserted by the
token placement *in that direction's own sequence*, so every direction sees the global tokens before
its end.

Moving tokens costs one pass over them each way (see ``docs/architecture.md``, "Memory and recomputation"):
the raster direction places its tokens with a few strided block copies (the placement is runs of consecutive
slots), any other direction with one ``gather``; the way back is the same in reverse, the K directions summed
as they are read, and one transposition to channels-last. Backward passes use the same maps in the opposite
direction (a gather by the inverse permutation, never an indexed scatter-add). With K = 1 and no global tokens the
tokens are the sequence.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from logvmamba_nnunet.modules.token_placement import TokenPlacement
from logvmamba_nnunet.modules.validation import check_choice

DIRECTIONS = (1, 2, 4)


def direction_orders(spatial_size: Sequence[int], directions: int) -> Tensor:
    """(K, L) int64: row k lists the raster indices of the local tokens in direction k's scan order."""
    check_choice("directions", directions, DIRECTIONS)
    raster = torch.arange(math.prod(spatial_size))
    orders = [raster]
    if directions == 4:
        orders.append(raster.view(*spatial_size).transpose(-1, -2).flatten())
    if directions >= 2:
        orders += [order.flip(0) for order in orders]
    return torch.stack(orders)


@dataclass(frozen=True)
class Runs:
    """``count`` runs of ``length`` consecutive slots: run i starts at sequence slot ``start + i * step`` and holds
    the tokens ``source + i * length ... source + (i + 1) * length - 1`` of a source in raster order."""

    start: int
    step: int
    source: int
    count: int
    length: int

    def sequence_view(self, sequence: Tensor) -> Tensor:
        """The runs' slots of ``sequence`` (..., T) as a (..., count, length) view."""
        return _block_view(sequence, self.start, self.step, self.count, self.length)

    def source_view(self, source: Tensor) -> Tensor:
        """The runs' tokens of ``source`` (..., N) as a (..., count, length) view."""
        return _block_view(source, self.source, self.length, self.count, self.length)


def _block_view(x: Tensor, start: int, step: int, count: int, length: int) -> Tensor:
    """Positions start + i * step + j (i < count, j < length) of the last axis of ``x`` (any strides) as a view."""
    stride = x.stride(-1)
    return x.as_strided((*x.shape[:-1], count, length), (*x.stride()[:-1], step * stride, stride),
                        x.storage_offset() + start * stride)


def slot_runs(slots: Tensor) -> tuple[Runs, ...]:
    """The increasing slots of sources 0..n-1 as few ``Runs``: maximal runs of consecutive slots, runs of equal
    length at a constant distance merged (the interleaved layout gives at most three groups, head, middle and
    split at most two)."""
    values = slots.tolist()
    runs: list[tuple[int, int, int]] = []  # (start slot, first source, length)
    for source, slot in enumerate(values):
        if runs and slot == runs[-1][0] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((slot, source, 1))
    groups: list[Runs] = []
    for start, source, length in runs:
        last = groups[-1] if groups else None
        if last is not None and last.length == length and (
                last.count == 1 or start == last.start + last.count * last.step):
            step = start - last.start if last.count == 1 else last.step
            groups[-1] = Runs(last.start, step, last.source, last.count + 1, length)
        else:
            groups.append(Runs(start, length, source, 1, length))
    return tuple(groups)


@dataclass(frozen=True)
class SequenceMaps:
    """Index maps between raster-ordered tokens and the K direction sequences for one (spatial size, G).

    gather (K, T): source index into [local tokens in raster order, global tokens] for each slot of each
    direction's sequence. to_raster (K, L): for each direction k and raster position p, the index
    k * T + slot of p's output in the K sequences flattened to K * T. source_slot (K, L + G): the slot of every
    source in direction k (gather's inverse). gather_locals (K, T): gather with every global slot pointing at
    index L (a zero appended to the locals). raster (K,): whether direction k reads the locals in raster order;
    local_runs, global_runs: the slots of the locals and globals in such a direction.
    """

    n_local: int
    n_global: int
    gather: Tensor
    to_raster: Tensor
    source_slot: Tensor
    gather_locals: Tensor
    raster: tuple[bool, ...]
    local_runs: tuple[Runs, ...]
    global_runs: tuple[Runs, ...]

    @property
    def directions(self) -> int:
        return len(self.raster)

    @property
    def length(self) -> int:
        return self.n_local + self.n_global

    def to(self, device: torch.device) -> SequenceMaps:
        return SequenceMaps(self.n_local, self.n_global, self.gather.to(device), self.to_raster.to(device),
                            self.source_slot.to(device), self.gather_locals.to(device), self.raster,
                            self.local_runs, self.global_runs)


@functools.lru_cache(maxsize=128)
def _sequence_indices(spatial_size: tuple[int, ...], n_global: int, directions: int, placement: str) -> SequenceMaps:
    orders = direction_orders(spatial_size, directions)
    n_local = orders.shape[1]
    local_slots, global_slots = TokenPlacement(placement).slots(n_local, n_global)
    length = n_local + n_global
    gather = torch.empty(directions, length, dtype=torch.long)
    gather[:, local_slots] = orders
    gather[:, global_slots] = torch.arange(n_local, length)
    slot_of_raster = torch.empty(directions, n_local, dtype=torch.long)
    slot_of_raster.scatter_(1, orders, local_slots.expand(directions, -1))
    source_slot = torch.empty(directions, length, dtype=torch.long)
    source_slot.scatter_(1, gather, torch.arange(length).expand(directions, -1))
    raster = tuple(bool(torch.equal(order, orders[0])) for order in orders)
    return SequenceMaps(n_local, n_global, gather, slot_of_raster + length * torch.arange(directions)[:, None],
                        source_slot, gather.clamp(max=n_local), raster, slot_runs(local_slots),
                        slot_runs(global_slots))


def _expanded(index: Tensor, x: Tensor) -> Tensor:
    return index.expand(*x.shape[:-1], index.shape[-1])


def transposed_copy(x: Tensor) -> Tensor:
    """x (B, M, N), any strides -> x.transpose(1, 2) as a new contiguous (B, N, M) tensor.

    On CPU one 2D copy per sample, which takes PyTorch's blocked-transpose path when x (or its transpose) is
    contiguous: about twice as fast as the general strided copy of ``.contiguous()`` on the 3D view.
    """
    out = x.new_empty(x.shape[0], x.shape[2], x.shape[1])
    if x.device.type != "cpu":
        return out.copy_(x.transpose(1, 2))
    for sample, source in zip(out, x.transpose(1, 2), strict=True):
        sample.copy_(source)
    return out


class _Transposed(torch.autograd.Function):
    """x (B, M, N) -> x.transpose(1, 2) contiguous, forward and backward with ``transposed_copy``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return transposed_copy(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        return transposed_copy(grad)


def _contiguous_tokens(tokens: Tensor) -> Tensor:
    """Tokens (B, W, L) with unit stride on L: unchanged when they have it (channels-first maps), else (channels-last
    maps) one fast transposing copy."""
    if tokens.stride(-1) == 1:
        return tokens
    return _Transposed.apply(tokens.transpose(1, 2))


def _place(maps: SequenceMaps, local: Tensor, global_tokens: Tensor | None) -> Tensor:
    """locals (B, W, L) and globals (B, W, G) or None, any strides -> sequences (B, K, W, T), contiguous."""
    batch, width, _ = local.shape
    out = local.new_empty(batch, maps.directions, width, maps.length)
    source = None
    for k in range(maps.directions):
        if maps.raster[k]:
            for runs, tokens in ((maps.local_runs, local), (maps.global_runs, global_tokens)):
                for run in runs:
                    run.sequence_view(out[:, k]).copy_(run.source_view(tokens))
            continue
        if source is None:  # [locals; globals] contiguous: the raster sequence itself when there are no globals
            source = out[:, 0] if global_tokens is None else torch.cat([local, global_tokens], dim=-1)
        torch.gather(source, -1, _expanded(maps.gather[k], source), out=out[:, k])
    return out


def _read(maps: SequenceMaps, sequences: Tensor, target: Tensor) -> None:
    """Writes into ``target`` (B, W, N), any strides, the sum over the K directions of each direction's tokens of
    ``sequences`` (B, K, W, T) in source order: the L locals in raster order, then (N = L + G) the globals."""
    with_globals = target.shape[-1] > maps.n_local
    for k in range(maps.directions):
        sequence = sequences[:, k]
        if not maps.raster[k]:
            index = maps.source_slot[k, :target.shape[-1]]
            target.add_(torch.gather(sequence, -1, _expanded(index, target)))
            continue
        into = target if k == 0 else sequence.new_empty(target.shape)
        pairs = [(maps.local_runs, into[..., :maps.n_local])]
        if with_globals:
            pairs.append((maps.global_runs, into[..., maps.n_local:]))
        for runs, part in pairs:
            for run in runs:
                run.source_view(part).copy_(run.sequence_view(sequence))
        if k > 0:
            target.add_(into)


class _ToSequences(torch.autograd.Function):
    """locals (B, W, L), globals (B, W, G) or None -> sequences (B, K, W, T). Direction 0 (raster) is always
    read first, so its runs initialise every output."""

    @staticmethod
    def forward(ctx, local: Tensor, global_tokens: Tensor | None, maps: SequenceMaps) -> Tensor:
        ctx.maps = maps
        ctx.has_globals = global_tokens is not None
        return _place(maps, local, global_tokens)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        maps = ctx.maps
        batch, _, width, length = grad.shape
        grads = grad.new_empty(batch, width, length if ctx.has_globals else maps.n_local)
        _read(maps, grad, grads)
        if not ctx.has_globals:
            return grads, None, None
        return grads[..., :maps.n_local], grads[..., maps.n_local:], None


class _ToRaster(torch.autograd.Function):
    """sequences (B, K, W, T) -> the local outputs in raster order summed over the K directions, channels-last
    (B, L, W)."""

    @staticmethod
    def forward(ctx, sequences: Tensor, maps: SequenceMaps) -> Tensor:
        ctx.maps = maps
        batch, _, width, _ = sequences.shape
        merged = sequences.new_empty(batch, width, maps.n_local)
        _read(maps, sequences, merged)
        return transposed_copy(merged)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        maps = ctx.maps
        grad = transposed_copy(grad)
        batch, width, _ = grad.shape
        out = grad.new_empty(batch, maps.directions, width, maps.length)
        padded = None
        for k in range(maps.directions):
            sequence = out[:, k]
            if maps.raster[k]:
                for run in maps.local_runs:
                    run.sequence_view(sequence).copy_(run.source_view(grad))
                for run in maps.global_runs:
                    run.sequence_view(sequence).zero_()
                continue
            if padded is None:
                padded = torch.cat([grad, grad.new_zeros(batch, width, 1)], dim=-1)
            torch.gather(padded, -1, _expanded(maps.gather_locals[k], padded), out=sequence)
        return out, None


class ScanLayout:
    """Maps between raster-ordered tokens and the K direction sequences, cached per (spatial size, number of
    global tokens) on CPU and per device once moved there."""

    _MAX_DEVICE_ENTRIES = 64

    def __init__(self, directions: int, placement: str) -> None:
        check_choice("directions", directions, DIRECTIONS)
        self.directions = directions
        self.placement = TokenPlacement(placement).mode
        self._on_device: dict[tuple, SequenceMaps] = {}

    def maps(self, spatial_size: Sequence[int], n_global: int, device: torch.device) -> SequenceMaps:
        """The ``SequenceMaps`` of this layout for ``spatial_size`` and ``n_global`` global tokens on ``device``."""
        key = (tuple(int(n) for n in spatial_size), n_global, device)
        if key not in self._on_device:
            if len(self._on_device) >= self._MAX_DEVICE_ENTRIES:
                self._on_device.clear()
            self._on_device[key] = _sequence_indices(key[0], n_global, self.directions, self.placement).to(device)
        return self._on_device[key]

    def indices(self, spatial_size: Sequence[int], n_global: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(gather (K, L + G), to_raster (K, L)) of ``SequenceMaps``."""
        maps = self.maps(spatial_size, n_global, device)
        return maps.gather, maps.to_raster

    def sequences(self, local: Tensor, global_tokens: Tensor | None, spatial_size: Sequence[int]) -> Tensor:
        """local: (B, W, L) in raster order, global_tokens: (B, W, G) or None -> sequences (B, K, W, L + G).

        Tokens laid out channels-last (from a channels-last feature map) are made contiguous first; with K = 1 and no
        global tokens the result is then a view of them."""
        n_global = 0 if global_tokens is None else global_tokens.shape[-1]
        local = _contiguous_tokens(local)
        if self.directions == 1 and n_global == 0:
            return local.unsqueeze(1)
        maps = self.maps(spatial_size, n_global, local.device)
        return _ToSequences.apply(local, global_tokens if n_global else None, maps)

    def merge(self, outputs: Tensor, spatial_size: Sequence[int], n_global: int) -> Tensor:
        """outputs: (B, K, W, L + G) -> the local outputs in raster order summed over the directions, channels-last
        (B, L, W): the layout the Linear layers after the SSM read.

        The global tokens are dropped and the directions summed in one pass (none with K = 1 and no global tokens),
        then the result is transposed with ``transposed_copy``."""
        if self.directions == 1 and n_global == 0:
            return _Transposed.apply(outputs[:, 0])
        return _ToRaster.apply(outputs, self.maps(spatial_size, n_global, outputs.device))

    def to_sequences(self, tokens: Tensor, spatial_size: Sequence[int], n_global: int) -> Tensor:
        """tokens: (B, W, L + G), locals in raster order then globals -> sequences (B, K, W, L + G)."""
        n_local = tokens.shape[-1] - n_global
        return self.sequences(tokens[..., :n_local], tokens[..., n_local:] if n_global else None, spatial_size)

    def to_raster(self, outputs: Tensor, spatial_size: Sequence[int], n_global: int) -> Tensor:
        """outputs: (B, K, W, L + G) -> per-direction local outputs in raster order (B, K, W, L), not summed."""
        _, to_raster = self.indices(spatial_size, n_global, outputs.device)
        return outputs.transpose(1, 2).flatten(2)[:, :, to_raster].transpose(1, 2)

"""Scan orders of the K directions and the index maps that build each direction's token sequence.

Directions (ordered as VMamba's SS2D so its pretrained K=4 weights map one to one):
K=1: raster (row-major); K=2: raster, reversed raster; K=4: raster, transposed (the last two spatial
axes swapped: column-major in 2D), reversed raster, reversed transposed.

Each direction's sequence is its ordering of the L local tokens with the G global tokens inserted by the
token placement *in that direction's own sequence*, so every direction sees the global tokens before
its end.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

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


@functools.lru_cache(maxsize=128)
def _sequence_indices(
    spatial_size: tuple[int, ...], n_global: int, directions: int, placement: str
) -> tuple[Tensor, Tensor]:
    orders = direction_orders(spatial_size, directions)
    n_local = orders.shape[1]
    local_slots, global_slots = TokenPlacement(placement).slots(n_local, n_global)
    length = n_local + n_global
    gather = torch.empty(directions, length, dtype=torch.long)
    gather[:, local_slots] = orders
    gather[:, global_slots] = torch.arange(n_local, n_local + n_global)
    slot_of_raster = torch.empty(directions, n_local, dtype=torch.long)
    slot_of_raster.scatter_(1, orders, local_slots.expand(directions, -1))
    flat_slot_of_raster = slot_of_raster + length * torch.arange(directions)[:, None]
    return gather, flat_slot_of_raster


class ScanLayout:
    """Index maps between raster-ordered tokens and the K direction sequences, cached per
    (spatial size, number of global tokens) on CPU and per device once moved there."""

    _MAX_DEVICE_ENTRIES = 64

    def __init__(self, directions: int, placement: str) -> None:
        check_choice("directions", directions, DIRECTIONS)
        self.directions = directions
        self.placement = TokenPlacement(placement).mode
        self._on_device: dict[tuple, tuple[Tensor, Tensor]] = {}

    def indices(
        self, spatial_size: Sequence[int], n_global: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Returns (gather, to_raster).

        gather (K, L + G): source index into [local tokens in raster order, global tokens] for each slot
        of each direction's sequence. to_raster (K, L): for each direction k and raster position p, the
        index k * (L + G) + slot of p's output in the K sequences flattened to K * (L + G).
        """
        key = (tuple(int(n) for n in spatial_size), n_global, device)
        if key not in self._on_device:
            if len(self._on_device) >= self._MAX_DEVICE_ENTRIES:
                self._on_device.clear()
            cpu = _sequence_indices(key[0], n_global, self.directions, self.placement)
            self._on_device[key] = tuple(index.to(device) for index in cpu)
        return self._on_device[key]

    def to_sequences(self, tokens: Tensor, spatial_size: Sequence[int], n_global: int) -> Tensor:
        """tokens: (B, W, L + G), locals in raster order then globals -> sequences (B, K, W, L + G)."""
        gather, _ = self.indices(spatial_size, n_global, tokens.device)
        return tokens[:, :, gather].transpose(1, 2)

    def to_raster(self, outputs: Tensor, spatial_size: Sequence[int], n_global: int) -> Tensor:
        """outputs: (B, K, W, L + G) -> per-direction local outputs in raster order (B, K, W, L)."""
        _, to_raster = self.indices(spatial_size, n_global, outputs.device)
        return outputs.transpose(1, 2).flatten(2)[:, :, to_raster].transpose(1, 2)

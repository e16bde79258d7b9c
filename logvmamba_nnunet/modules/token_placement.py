"""Where the global tokens go in the sequence of local tokens (paper §3.3), and the exact inverse.

For L local and G global tokens the sequence has T = L + G slots. Local tokens keep their order, and so
do global tokens. The ``split`` and ``interleaved`` layouts are those of the authors' released code
(their ``split`` and ``even`` modes); ``docs/architecture.md`` shows examples. Layouts (``l`` local,
``g`` global):

* ``head``: all G globals first: ``g..g l..l``.
* ``middle``: the globals between the first floor(L/2) locals and the rest.
* ``split``: the first floor(G/2) globals at the front, the other ceil(G/2) between the first floor(L/2)
  locals and the rest (with G = 1 this is ``middle``). Unlike the authors' code, no local token is
  dropped when L is odd.
* ``interleaved`` (default, the paper's choice): with r = ceil(L / G) and P = r + 1, the globals take
  the first h slots and every slot from h on whose index is a multiple of P; the locals take all other
  slots. h is what makes the globals number G: h0 = G - floor(L / r), the grid starts at
  s0 = ceil(h0 / P) * P, the grid slots are s0, s0 + P, ... < T, and h = G - (number of grid slots).
  Globals 0..h-1 sit in slots 0..h-1 and the rest on the grid, in order. The sequence is therefore
  ``g^h``, a run of at most r locals (up to the next multiple of P), blocks of one global and r locals,
  and a last block of one global and 0..r locals.

  The formula is consistent for every L >= 1, G >= 1 (also G > L): write L = n r + s with 0 <= s < r and
  e = s0 - h0 (0 <= e <= r). Then h = h0 if s <= e and h = h0 - 1 >= 0 otherwise, so h <= s0 < h + P:
  no grid slot lies below h, no multiple of P in [h, s0) is left over, and the locals fill exactly L
  slots. Slot 0 always holds a global, so every causal scan direction reads one before any local token.
  Each global is followed by at most r locals before the next one, with the excess globals at the
  beginning, as the paper says. When s = e + 1 the last block holds no local: the last slot is a global,
  as in the authors' code (this happens in none of the paper's settings). G = 0 gives the locals alone.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from logvmamba_nnunet.modules.validation import check_choice

PLACEMENTS = ("head", "middle", "split", "interleaved")


def _global_mask(mode: str, n_local: int, n_global: int) -> Tensor:
    """Bool (L + G,): True at the slots that hold global tokens."""
    length = n_local + n_global
    is_global = torch.zeros(length, dtype=torch.bool)
    if n_global == 0:
        return is_global
    half_local = n_local // 2
    if mode == "head":
        is_global[:n_global] = True
    elif mode == "middle":
        is_global[half_local : half_local + n_global] = True
    elif mode == "split":
        front = n_global // 2
        is_global[:front] = True
        is_global[front + half_local : n_global + half_local] = True
    else:
        interval = -(-n_local // n_global)
        period = interval + 1
        unplaced = n_global - n_local // interval
        grid = torch.arange(-(-unplaced // period) * period, length, period)
        is_global[: n_global - grid.numel()] = True
        is_global[grid] = True
    return is_global


@functools.lru_cache(maxsize=256)
def _slots(mode: str, n_local: int, n_global: int) -> tuple[Tensor, Tensor]:
    """(local slots (L,), global slots (G,)), both increasing."""
    is_global = _global_mask(mode, n_local, n_global)
    return (~is_global).nonzero().flatten(), is_global.nonzero().flatten()


class TokenPlacement:
    """Inserts global tokens among local tokens along the last axis, and removes them again.

    ``mode`` is one of ``PLACEMENTS`` (layouts in the module docstring). Slot maps are computed once per
    (L, G) and cached.
    """

    def __init__(self, mode: str = "interleaved") -> None:
        check_choice("placement", mode, PLACEMENTS)
        self.mode = mode

    def slots(self, n_local: int, n_global: int) -> tuple[Tensor, Tensor]:
        """Sequence positions (int64, CPU, increasing; do not modify) of the L local tokens, shape (L,),
        and of the G global tokens, shape (G,), in a sequence of L + G slots."""
        if n_local < 1 or n_global < 0:
            raise ValueError(
                f"need n_local >= 1 and n_global >= 0, got n_local={n_local}, n_global={n_global}."
            )
        return _slots(self.mode, n_local, n_global)

    def place(self, local: Tensor, global_tokens: Tensor) -> Tensor:
        """local: (..., L), global_tokens: (..., G) -> sequence (..., L + G)."""
        local_slots, global_slots = self.slots(local.shape[-1], global_tokens.shape[-1])
        sequence = local.new_empty(*local.shape[:-1], local.shape[-1] + global_tokens.shape[-1])
        sequence[..., local_slots.to(local.device)] = local
        sequence[..., global_slots.to(local.device)] = global_tokens
        return sequence

    def remove(self, sequence: Tensor, n_global: int) -> Tensor:
        """sequence: (..., L + G) -> the local tokens (..., L) in their original order."""
        local_slots, _ = self.slots(sequence.shape[-1] - n_global, n_global)
        return sequence[..., local_slots.to(sequence.device)]

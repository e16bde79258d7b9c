"""Where the global tokens go in the sequence of local tokens (paper §3.3), and the exact inverse.

For L local and G global tokens the sequence has T = L + G slots. Local tokens keep their order, and so
do global tokens. Layouts (``l`` local, ``g`` global):

* ``head``: all G globals first: ``g..g l..l``.
* ``middle``: the globals between the first floor(L/2) locals and the rest.
* ``split`` (the authors' code): the first ceil(G/2) globals at the front, the other floor(G/2) between
  the first floor(L/2) locals and the rest (with G = 1 this is ``head``).
* ``interleaved`` (default, the paper's choice): with r = ceil(L / G) and m = ceil(L / r) <= G, the
  sequence is h = G - m excess globals at the very front, then m blocks of one global followed by r
  locals (the last block holds the L - (m - 1) r >= 1 remaining locals). Globals therefore sit at every
  (r+1)-th slot from slot h on, and every global precedes at least one local token, so a causal scan
  sees all of them before the end.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from logvmamba_nnunet.modules.validation import check_choice

PLACEMENTS = ("head", "middle", "split", "interleaved")


def _global_mask(mode: str, n_local: int, n_global: int) -> Tensor:
    """Bool (L + G,): True at the slots that hold global tokens."""
    is_global = torch.zeros(n_local + n_global, dtype=torch.bool)
    if n_global == 0:
        return is_global
    half_local = n_local // 2
    if mode == "head":
        is_global[:n_global] = True
    elif mode == "middle":
        is_global[half_local : half_local + n_global] = True
    elif mode == "split":
        front = n_global - n_global // 2
        is_global[:front] = True
        is_global[front + half_local : n_global + half_local] = True
    else:
        interval = -(-n_local // n_global)
        n_blocks = -(-n_local // interval)
        excess = n_global - n_blocks
        is_global[:excess] = True
        is_global[excess : excess + n_blocks * (interval + 1) : interval + 1] = True
    return is_global


@functools.lru_cache(maxsize=256)
def _slots(mode: str, n_local: int, n_global: int) -> tuple[Tensor, Tensor]:
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
        """Sequence positions (int64, CPU; do not modify) of the L local tokens, shape (L,), and of the
        G global tokens, shape (G,), in a sequence of L + G slots."""
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

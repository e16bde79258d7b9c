"""Floating-point operation count of the selective scan, and a context that records it.

Usual FLOP counters (``torch.utils.flop_counter``, fvcore, thop) count matrix products and convolutions only, so
they miss the scan, whose cost is element-wise. This module counts it with an explicit formula. Per element
(b, d, t) of the sequence:

- ``delta_t * u_t``: 1 multiply;
- per state n (N of them): ``delta*A`` 1, ``exp`` 1, ``(delta*u)*B`` 1, ``dA*h + dBu`` 2, ``y += C*h`` 2,
  so 7 per state;
- the skip ``+ D*u``: 2, when D is given;
- the gate ``y * silu(z)`` (sigmoid, multiply by z, multiply by y): 3, when z is given.

Total ``B * D * L * (1 + 7N + 2[D] + 3[z])``. Adding ``delta_bias`` and the softplus are counted as part of
producing delta, not here. mamba-ssm's own estimate (``9 * B*L*D*N``) counts the einsums of its reference
differently. Both agree that the scan costs O(B*D*L*N).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


def selective_scan_flops(batch: int, channels: int, length: int, d_state: int, with_D: bool, with_z: bool) -> int:
    """FLOPs of one selective scan call (formula in the module docstring)."""
    per_element = 1 + 7 * d_state + (2 if with_D else 0) + (3 if with_z else 0)
    return batch * channels * length * per_element


@dataclass
class ScanFlopCounter:
    """Accumulates the FLOPs of every selective scan run inside :func:`count_scan_flops`."""

    flops: int = 0
    calls: list[tuple[int, int, int, int]] = field(default_factory=list)
    on_scan: Callable[[tuple], None] | None = None
    """Called with each scan's sequence inputs (u, delta, B, C, z; z may be None), e.g. to count their memory."""

    def add(self, batch: int, channels: int, length: int, d_state: int, with_D: bool, with_z: bool,
            inputs: tuple = ()) -> None:
        self.flops += selective_scan_flops(batch, channels, length, d_state, with_D, with_z)
        self.calls.append((batch, channels, length, d_state))
        if self.on_scan is not None:
            self.on_scan(inputs)


_ACTIVE: contextvars.ContextVar[ScanFlopCounter | None] = contextvars.ContextVar("scan_flop_counter", default=None)


def active_scan_flop_counter() -> ScanFlopCounter | None:
    """The counter of the innermost :func:`count_scan_flops` block, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def count_scan_flops(on_scan: Callable[[tuple], None] | None = None) -> Iterator[ScanFlopCounter]:
    """Inside this block ``selective_scan`` only records its FLOPs (and calls ``on_scan`` with its sequence inputs
    u, delta, B, C, z) and returns zeros of the right shape.

    It is meant for profiling, for example on the meta device, where values do not matter: the counter measures
    cost, not outputs.
    """
    counter = ScanFlopCounter(on_scan=on_scan)
    token = _ACTIVE.set(counter)
    try:
        yield counter
    finally:
        _ACTIVE.reset(token)

"""Keep the selective scan's results across a recomputed forward, so that recomputation does not run the scan twice.

A LoG-family block that recomputes its activations (``modules/block.py``) runs its forward twice per training step:
once in the forward pass, keeping only its input, and again when backward reaches it. Everything but the scan is
cheap to recompute; the scan's forward is about a third of the scan's cost. Inside :meth:`ScanMemo.session`, the
first session records each scan's outputs (y, the last state, and the states the scan saves for its backward) and
every later session replays them in call order, in place of running the scan's forward again. The scan's backward
is unchanged and takes its inputs from the recomputed forward, so outputs and gradients are the same bit for bit.

Memory: the memo keeps, per scan, y and the saved states (one (b, d, L) tensor and the chunk-start states) for as
long as the block's autograd graph lives, instead of nothing; see docs/architecture.md, "Memory and recomputation".
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch

ScanResults = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""y, the last state, and the states the scan saves for its backward (None when it saves none)."""

_ACTIVE: contextvars.ContextVar[tuple[ScanMemo, bool] | None] = contextvars.ContextVar("scan_memo", default=None)
_OBSERVER: contextvars.ContextVar[Callable[[torch.Tensor], object] | None] = contextvars.ContextVar(
    "scan_memo_observer", default=None)


@contextlib.contextmanager
def observe_records(observer: Callable[[torch.Tensor], object]) -> Iterator[None]:
    """Inside this block every tensor a :class:`ScanMemo` records is also passed to ``observer``: the memo keeps
    them for backward outside autograd's saved tensors, so memory counts that hook into autograd add them here."""
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


class ScanMemo:
    """The scan results of one forward, replayed by its recomputations (see the module docstring)."""

    def __init__(self) -> None:
        self._results: list[ScanResults] = []
        self._sessions = 0
        self._cursor = 0

    @property
    def recorded(self) -> int:
        """Number of scans recorded by the first session."""
        return len(self._results)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Scans inside the first session are run and recorded; inside every later one they are replayed."""
        replay = self._sessions > 0
        self._sessions += 1
        self._cursor = 0
        token = _ACTIVE.set((self, replay))
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    def _record(self, results: ScanResults) -> None:
        kept = tuple(None if x is None else x.detach() for x in results)
        observer = _OBSERVER.get()
        if observer is not None:
            for tensor in kept:
                if tensor is not None:
                    observer(tensor)
        self._results.append(kept)

    def _replay(self, u: torch.Tensor) -> ScanResults:
        if self._cursor >= len(self._results):
            raise RuntimeError(
                f"the recomputed forward ran more selective scans than the {len(self._results)} its first run "
                "recorded; a block's forward must run the same scans each time it is recomputed.")
        y, last_state, saved = self._results[self._cursor]
        self._cursor += 1
        if y.shape[0] != u.shape[0] or y.shape[-1] != u.shape[-1] or y.device != u.device:
            raise RuntimeError(
                f"the recomputed forward's scan input {tuple(u.shape)} on {u.device} does not match the recorded "
                f"output {tuple(y.shape)} on {y.device}; a block's forward must run the same scans each time.")
        return y.clone(), last_state.clone(), saved


def run_or_replay(u: torch.Tensor, compute: Callable[[], ScanResults]) -> ScanResults:
    """``compute()`` (y, last state, saved states), recorded in a recording :class:`ScanMemo` session; inside a
    replaying session the recorded results for this call instead (y and the last state as fresh tensors).
    ``u``: the scan's input, checked against the record."""
    active = _ACTIVE.get()
    if active is None:
        return compute()
    memo, replay = active
    if replay:
        return memo._replay(u)
    results = compute()
    memo._record(results)
    return results

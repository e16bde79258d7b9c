"""Normalising nnU-Net architecture kwargs (dotted class names, per-stage and per-axis values)."""

from __future__ import annotations

import pydoc


def locate_class(value, what: str):
    """``value`` itself, or the object a dotted name from a plans file points to (ValueError if none)."""
    if not isinstance(value, str):
        return value
    located = pydoc.locate(value)
    if located is None:
        raise ValueError(f"cannot import {what} {value!r} named in the plans; check the spelling "
                         "(e.g. 'torch.nn.modules.conv.Conv3d').")
    return located


def per_stage_list(value, n: int, name: str) -> list:
    """An int repeated ``n`` times, or a sequence checked to have ``n`` entries."""
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries, expected one per stage ({n}).")
    return value


def per_axis(value, dims: int) -> list[int]:
    """A stride/kernel given as an int or per axis, as a list of ``dims`` ints."""
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]

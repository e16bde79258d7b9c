"""Argument checks shared by the building blocks: every failure is a ValueError that names the argument,
what it received, what is allowed and how to fix it."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

SPATIAL_DIMS = (2, 3)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {tuple(allowed)}.")


def check_spatial_dims(spatial_dims: int) -> None:
    """Raise ValueError unless ``spatial_dims`` is 2 or 3."""
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(
            f"spatial_dims={spatial_dims!r} is not supported; choose 2 (images) or 3 (volumes)."
        )


def check_positive_int(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1 (Python or NumPy; bools are rejected)."""
    if not _is_positive_int(value):
        raise ValueError(f"{name}={value!r} must be a positive integer.")


def check_divides(name: str, squeeze: int, channels: int, channels_name: str) -> None:
    """Raise ValueError unless the channel squeeze factor ``squeeze`` divides ``channels``."""
    check_positive_int(name, squeeze)
    if channels % squeeze != 0:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        raise ValueError(
            f"{name}={squeeze} does not divide {channels_name}={channels}; "
            f"use one of its divisors {divisors}."
        )


def per_axis(name: str, value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Expand an int to ``spatial_dims`` copies, or check that a sequence has one positive int per axis."""
    values = (value,) * spatial_dims if isinstance(value, numbers.Integral) else tuple(value)
    if len(values) != spatial_dims:
        raise ValueError(
            f"{name}={value!r} has {len(values)} entries but spatial_dims={spatial_dims}; "
            f"give one int or one int per spatial axis."
        )
    if not all(_is_positive_int(entry) for entry in values):
        raise ValueError(f"{name}={value!r}: every entry must be a positive integer.")
    return tuple(int(entry) for entry in values)

"""Integer helpers shared by the scan kernels' block sizes and the networks' channel-squeeze rules."""

from __future__ import annotations


def largest_power_of_two_divisor(value: int, cap: int) -> int:
    """Largest power of two that divides ``value`` and is at most ``cap``, e.g. (12, 8) -> 4, (48, 16) -> 16.

    Raises:
        ValueError: ``value`` or ``cap`` is smaller than 1.
    """
    if value < 1 or cap < 1:
        raise ValueError(f"value and cap must be positive ints, got value={value!r}, cap={cap!r}.")
    return min(value & -value, 1 << (cap.bit_length() - 1))

"""Paired tests between models: the Wilcoxon signed-rank test per case, and Holm's correction over many tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_wilcoxon(values: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """(statistic, two-sided p) of the Wilcoxon signed-rank test of ``values - reference`` (paired per case).

    Zero differences are dropped (scipy's ``zero_method="wilcox"``); when every difference is zero the two are
    identical and p is 1 (scipy would warn and return nan).
    """
    from scipy.stats import wilcoxon

    differences = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if differences.size == 0:
        raise ValueError("the Wilcoxon test needs at least one pair of values")
    if not np.any(differences):
        return 0.0, 1.0
    result = wilcoxon(differences, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m - i + 1), made
    non-decreasing in that order and capped at 1 (Holm 1979)."""
    order = np.argsort(np.asarray(p_values, dtype=np.float64), kind="stable")
    m = len(order)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted

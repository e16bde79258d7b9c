"""Per-stage choice of mixer kind and GTX settings for the encoder of the LoG-VMamba U-Net (paper §3.4).

The authors' 5-stage BraTS model (patch 128^3, stage sizes 128, 64, 32, 16, 8) uses:

======  ==============  =========  ==========
stage   block           GTX Ks     GTX q
======  ==============  =========  ==========
0       L-VMamba        -          -
1       LoG-VMamba      4          1
2       LoG-VMamba      2          1
3       G-VMamba        1          2
4       G-VMamba        1          8
======  ==============  =========  ==========

The rule below reproduces that table and generalises it to any nnU-Net plan:

- kind: the first stage is ``local`` (the grid is too large for useful global tokens), the last two stages are
  ``global``, every stage in between is ``local_global``. With fewer stages the first stage stays ``local`` and the
  rest are ``global``.
- GTX stride Ks: the smallest of 1, 2, 4 for which the compressed grid ``prod(ceil(size / Ks))`` has at most
  ``max_global_grid`` positions (4096 = 16^3 = 64^2 by default, which is what the authors' strides give at 128^3);
  4 when even that is larger.
- GTX channel squeeze q: 1 for ``local_global`` stages; for the ``global`` stages 2 at the second-to-last and 8 at
  the last stage (the authors' values), reduced to the largest power of two that divides the stage's
  ``d_inner`` so the grouped compression is valid.

Every choice can be overridden per stage by the network's ``stage_kinds``, ``gtx_strides`` and ``gtx_squeezes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from logvmamba_nnunet.ops.integers import largest_power_of_two_divisor

STAGE_KINDS = ("none", "vss", "local", "global", "local_global")
GTX_KINDS = ("global", "local_global")
GTX_STRIDE_CANDIDATES = (1, 2, 4)
DEFAULT_MAX_GLOBAL_GRID = 4096


@dataclass(frozen=True)
class StageMixerConfig:
    """What follows one encoder stage: the mixer kind, the GTX settings and the planned spatial size."""

    kind: str
    gtx_stride: int
    gtx_squeeze: int
    planned_size: tuple[int, ...]


def stage_spatial_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial size of the feature map after each encoder stage (stride-s convolutions with 'same' padding).

    Raises ValueError when the patch is too small for the stages (an axis would shrink below one voxel).
    """
    sizes = []
    current = [int(p) for p in patch_size]
    total = [1] * len(current)
    for stride in strides:
        stride = [int(s) for s in stride]
        total = [t * s for t, s in zip(total, stride)]
        current = [math.ceil(c / s) for c, s in zip(current, stride)]
        sizes.append(tuple(current))
    too_small = [i for i, (p, t) in enumerate(zip(patch_size, total)) if p < t]
    if too_small:
        raise ValueError(
            f"patch size {list(patch_size)} is too small for the encoder: axis {too_small[0]} is downsampled by "
            f"{total[too_small[0]]} in total but is only {patch_size[too_small[0]]} voxels long. Use a larger "
            "patch size or fewer stages (re-run nnUNetv2_plan_and_preprocess, or edit the plans' patch_size).")
    return sizes


def default_stage_kinds(n_stages: int) -> list[str]:
    """``local`` first, ``global`` for the last two stages, ``local_global`` in between."""
    if n_stages == 1:
        return ["local"]
    if n_stages <= 3:
        return ["local"] + ["global"] * (n_stages - 1)
    return ["local"] + ["local_global"] * (n_stages - 3) + ["global", "global"]


def default_gtx_stride(size: Sequence[int], max_global_grid: int = DEFAULT_MAX_GLOBAL_GRID) -> int:
    """Smallest stride in (1, 2, 4) whose compressed grid has at most ``max_global_grid`` positions."""
    for ks in GTX_STRIDE_CANDIDATES:
        if math.prod(math.ceil(s / ks) for s in size) <= max_global_grid:
            return ks
    return GTX_STRIDE_CANDIDATES[-1]


def default_gtx_squeezes(kinds: Sequence[str], d_inner: Sequence[int]) -> list[int]:
    """1 for ``local_global``; 2 and 8 at the last two ``global`` stages (authors' values), divisibility-safe."""
    squeezes = [1] * len(kinds)
    global_stages = [i for i, k in enumerate(kinds) if k == "global"]
    targets = [2, 8][-len(global_stages):] if global_stages else []
    for stage, target in zip(global_stages[-2:], targets):
        squeezes[stage] = largest_power_of_two_divisor(d_inner[stage], target)
    return squeezes


def _per_stage(name: str, values: Sequence | None, n_stages: int) -> list | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n_stages:
        raise ValueError(f"{name} has {len(values)} entries but the plan has {n_stages} encoder stages: give one "
                         f"value per stage, e.g. {name}={values[:1] * n_stages}.")
    return values


def resolve_stage_configs(patch_size: Sequence[int], strides: Sequence[Sequence[int]], d_inner: Sequence[int],
                          stage_kinds: Sequence[str] | None = None, gtx_strides: Sequence[int] | None = None,
                          gtx_squeezes: Sequence[int] | None = None,
                          max_global_grid: int = DEFAULT_MAX_GLOBAL_GRID) -> list[StageMixerConfig]:
    """Per-stage mixer configuration: the documented default rule, with any per-stage override applied.

    Args:
        patch_size: the planned patch size (2 or 3 axes).
        strides: per-stage strides, one sequence of length ``len(patch_size)`` per stage.
        d_inner: per-stage inner width of the mixer (expansion * stage features).
        stage_kinds, gtx_strides, gtx_squeezes: optional per-stage overrides (one entry per stage).
    """
    n_stages = len(strides)
    sizes = stage_spatial_sizes(patch_size, strides)
    kinds = _per_stage("stage_kinds", stage_kinds, n_stages) or default_stage_kinds(n_stages)
    unknown = [k for k in kinds if k not in STAGE_KINDS]
    if unknown:
        raise ValueError(f"unknown stage kind {unknown[0]!r}; choose from {', '.join(STAGE_KINDS)} "
                         "('none' puts no mixer after that stage).")
    ks = _per_stage("gtx_strides", gtx_strides, n_stages) or [
        default_gtx_stride(s, max_global_grid) if k in GTX_KINDS else 1 for k, s in zip(kinds, sizes)]
    qs = _per_stage("gtx_squeezes", gtx_squeezes, n_stages) or default_gtx_squeezes(kinds, d_inner)
    return [StageMixerConfig(kind=k, gtx_stride=int(s), gtx_squeeze=int(q), planned_size=size)
            for k, s, q, size in zip(kinds, ks, qs, sizes)]

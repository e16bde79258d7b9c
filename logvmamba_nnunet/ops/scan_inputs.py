"""Input preparation shared by the selective-scan dispatcher, its backends and the float64 reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from logvmamba_nnunet.ops.constants import SOFTPLUS_THRESHOLD


def as_grouped(x: torch.Tensor) -> torch.Tensor:
    """B or C as grouped (b, g, n, L): a (b, n, L) tensor becomes (b, 1, n, L); a 4-D one is returned as is."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def check_chunk_size(chunk_size: object) -> None:
    """Raise ValueError unless ``chunk_size`` (steps per chunk of the chunked backends) is None or an int >= 1."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")


def step_sizes(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The softplus argument x = delta + delta_bias and the step dt = softplus(x) (or x).

    Args:
        delta: (b, d, L). delta_bias: (d,) or None, in delta's dtype.
        softplus: apply softplus, the identity above ``SOFTPLUS_THRESHOLD``.

    Returns:
        x and dt, both (b, d, L) in delta's dtype.
    """
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return delta, (F.softplus(delta, threshold=SOFTPLUS_THRESHOLD) if softplus else delta)

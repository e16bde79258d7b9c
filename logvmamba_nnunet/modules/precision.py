"""Running a region in float32 whatever the surrounding autocast state."""

from __future__ import annotations

import contextlib

import torch


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, enabled=False)``, or a no-op on devices without autocast (e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()

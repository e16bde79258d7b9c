"""Whether a training step of the plan in use fits the device, checked before the first iteration."""

from __future__ import annotations

import math
import os

import torch

from logvmamba_nnunet.nnunet.planner import GB, plans_identifier
from logvmamba_nnunet.profiling.memory_estimate import MemoryEstimate

SKIP_ENV = "LOGVMAMBA_SKIP_MEMORY_CHECK"
"""Set to 1 to train without the check (the estimate's GPU calibration is provisional, docs/benchmarks.md)."""


def check_skipped() -> bool:
    """Whether ``LOGVMAMBA_SKIP_MEMORY_CHECK`` asks to train without the memory check."""
    return os.environ.get(SKIP_ENV, "").lower() in ("1", "true", "yes")


class InsufficientMemoryError(RuntimeError):
    """The plan's training step needs more memory than the device has; the message says which plan fixes it."""


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes (``torch.cuda.get_device_properties``); None for other devices."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def round_down(value: float) -> float:
    """``value`` > 0 rounded down to two significant digits (23.65 -> 23, 0.0234 -> 0.023)."""
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return round(math.floor(value / step) * step, 12)


def shortfall_message(estimate: MemoryEstimate, capacity_bytes: int, trainer_name: str, dataset_name: str,
                      configuration: str, patch_size: list[int]) -> str | None:
    """None when ``estimate`` fits in ``capacity_bytes``; else one line: needed vs available and the ``plan``
    command (and the train command) that fix it."""
    if estimate.total <= capacity_bytes:
        return None
    gigabytes = round_down(capacity_bytes / GB)
    dataset_id = int(dataset_name.removeprefix("Dataset").split("_")[0])
    plans = plans_identifier(gigabytes, trainer_name)
    return (f"{trainer_name} needs about {estimate.total / GB:.3g} GB for a training step of {configuration} "
            f"(patch {list(patch_size)}, batch {estimate.batch_size}), but the device has {capacity_bytes / GB:.3g} "
            f"GB: it would run out of memory. Plan for this device with `logvmamba-nnunet plan -d {dataset_id} -c "
            f"{configuration} --gpu-memory {gigabytes:g} -tr {trainer_name}`, then `nnUNetv2_preprocess -d "
            f"{dataset_id} -plans_name {plans} -c {configuration}` and train with `-p {plans}` (or set "
            f"{SKIP_ENV}=1 to train with this plan anyway).")

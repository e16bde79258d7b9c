"""nnU-Net's experiment planning with the memory of a LoG-family trainer's network instead of PlainConvUNet's.

``LoGVMambaPlanner`` is nnU-Net's ``ExperimentPlanner`` (nnunetv2/experiment_planning/experiment_planners/
default_experiment_planner.py) with one change: the memory a patch needs is the estimate of
``logvmamba_nnunet.profiling.memory_estimate`` for the network the trainer builds from that configuration, in bytes,
against a target in GB (10^9 bytes). nnU-Net's rules stay as they are: the initial patch from the spacing, clipped
to the median shape; the topology from ``get_pool_and_conv_props``; while batch 2 does not fit, the axis largest
relative to the median shape shrinks by one step. The batch size is then the largest whose estimate fits,
capped at 5% of the dataset's voxels and at least 2, as in nnU-Net. nnU-Net's ResEnc presets name the targets:
M 8 GB, L 24 GB, XL 40 GB (residual_unets/residual_encoder_unet_planners.py).

The plans are kept in ``self.plans`` (``save_plans`` writes nothing; the ``plan`` command writes them), with the
trainer, target and estimate per configuration under ``"logvmamba_memory"``, and with only the configurations
asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from logvmamba_nnunet.profiling.memory_estimate import (
    StepCounts,
    count_configuration,
    estimate_from_counts,
    largest_batch_size,
    optimizer_state_tensors,
)
from logvmamba_nnunet.profiling.profile import find_trainer_class

PRESETS = {"M": 8.0, "L": 24.0, "XL": 40.0}
"""GPU memory targets in GB named after nnU-Net's ResEnc presets."""
GB = 10**9
DEFAULT_TRAINER = "nnUNetTrainerLoGVMamba"
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
MEMORY_KEY = "logvmamba_memory"


def parse_gpu_memory(value: str) -> float:
    """GB for a preset name (M, L, XL, any case) or a positive number of GB; ValueError otherwise."""
    preset = PRESETS.get(value.strip().upper())
    if preset is not None:
        return preset
    try:
        gigabytes = float(value)
    except ValueError:
        gigabytes = math.nan
    if not math.isfinite(gigabytes) or gigabytes <= 0:
        raise ValueError(f"--gpu-memory {value}: give a number of GB (e.g. 24) or a preset: "
                         + ", ".join(f"{name} ({gb:g} GB)" for name, gb in PRESETS.items()))
    return gigabytes


def plans_identifier(gpu_memory_gb: float, trainer_name: str = DEFAULT_TRAINER) -> str:
    """``nnUNetLoGVMambaPlans_24G`` for the default trainer; other trainers' names are added, since another network
    gives other plans: ``nnUNetLoGVMambaPlans_24G_StageTopology`` for ``nnUNetTrainerLoGVMamba_StageTopology``."""
    suffix = trainer_name.removeprefix(DEFAULT_TRAINER).removeprefix("nnUNetTrainer").lstrip("_")
    return f"nnUNetLoGVMambaPlans_{gpu_memory_gb:g}G" + (f"_{suffix}" if suffix else "")


class LoGVMambaPlanner(ExperimentPlanner):
    """nnU-Net's planner sized for ``trainer_name``'s network at ``gpu_memory_target_in_gb`` GB on
    ``device_type`` ("cuda": fp16 autocast as nnU-Net trains, float32 for trainers with ``force_fp32``; "cpu":
    float32), planning ``configurations`` (3d_lowres brings 3d_fullres, the cascade's second stage)."""

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing: Sequence[float] | None = None, suppress_transpose: bool = False,
                 trainer_name: str = DEFAULT_TRAINER, configurations: Sequence[str] = ("2d", "3d_fullres"),
                 device_type: str = "cuda"):
        unknown = sorted(set(configurations) - set(CONFIGURATIONS))
        if unknown or not configurations:
            raise ValueError(f"configurations {unknown or 'none'}: choose from {', '.join(CONFIGURATIONS)}")
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or plans_identifier(gpu_memory_target_in_gb, trainer_name),
                         overwrite_target_spacing, suppress_transpose)
        self.trainer_name = trainer_name
        self.trainer_class = find_trainer_class(trainer_name)
        self.device_type = device_type
        self.autocast = device_type == "cuda" and not getattr(self.trainer_class, "force_fp32", False)
        # the cascade's second stage is 3d_fullres, so 3d_lowres comes with it
        self.configurations = tuple(configurations) + (
            ("3d_fullres",) if "3d_lowres" in configurations and "3d_fullres" not in configurations else ())
        self.budget_bytes = gpu_memory_target_in_gb * GB
        # nnU-Net shrinks the patch while estimate / reference_bs * 2 > reference * target / corresponding_GB:
        # with these values, while the estimate at batch 2 (in bytes) exceeds the target in bytes
        self.UNet_reference_val_3d = self.UNet_reference_val_2d = self.budget_bytes
        self.UNet_reference_val_corresp_GB = gpu_memory_target_in_gb
        self.UNet_reference_val_corresp_bs_2d = self.UNet_reference_val_corresp_bs_3d = self.UNet_min_batch_size
        if "3d_lowres" not in self.configurations:
            self.lowres_creation_threshold = 0
        self.counts: dict[str, StepCounts] = {}

    @staticmethod
    def _key(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> str:
        return str([int(p) for p in patch_size]) + "_" + str([[int(s) for s in stride] for stride in strides])

    def estimate_bytes(self, counts: StepCounts, batch_size: int) -> int:
        """The estimate (bytes) of a training step at ``batch_size`` for counted network ``counts``."""
        return estimate_from_counts(counts, batch_size, self.device_type, optimizer_state_tensors(self.trainer_class),
                                    self.autocast).total

    def static_estimate_VRAM_usage(self, patch_size: Sequence[int], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Sequence[str]) -> int:
        """Bytes of a training step at nnU-Net's minimum batch size for the trainer's network built from this
        configuration (nnU-Net's caller compares it with the target in bytes)."""
        configuration = {"patch_size": [int(p) for p in patch_size], "batch_size": self.UNet_min_batch_size,
                         "architecture": {"network_class_name": arch_class_name, "arch_kwargs": arch_kwargs,
                                          "_kw_requires_import": list(arch_kwargs_req_import)}}
        counts = count_configuration(self.trainer_class, {"configurations": {"planned": configuration}}, "planned",
                                     input_channels, output_channels, self.device_type)
        self.counts[self._key(patch_size, arch_kwargs["strides"])] = counts
        estimate = self.estimate_bytes(counts, self.UNet_min_batch_size)
        if estimate > self.budget_bytes and min(patch_size) <= self.UNet_featuremap_min_edge_length:
            raise ValueError(f"{self.trainer_name} does not fit in {self.budget_bytes / GB:g} GB even at patch "
                             f"{[int(p) for p in patch_size]} with batch {self.UNet_min_batch_size} (estimate "
                             f"{estimate / GB:.1f} GB); give a larger --gpu-memory")
        return estimate

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's configuration with the batch size from the estimate; a placeholder for configurations not
        asked for (nnU-Net plans 2D and 3D together)."""
        name = data_identifier.removeprefix(self.plans_identifier + "_")
        if name not in self.configurations:
            return {"patch_size": [int(s) for s in median_shape], "spacing": np.array(spacing, dtype=float)}
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        counts = self.counts[self._key(plan["patch_size"], plan["architecture"]["arch_kwargs"]["strides"])]
        batch = largest_batch_size(counts, self.budget_bytes, self.device_type,
                                   optimizer_state_tensors(self.trainer_class), self.autocast)
        five_percent = round(approximate_n_voxels_dataset * self.max_dataset_covered
                             / np.prod(plan["patch_size"], dtype=np.float64))
        plan["batch_size"] = max(min(batch, five_percent), self.UNet_min_batch_size)
        plan["estimated_memory_bytes"] = self.estimate_bytes(counts, plan["batch_size"])
        return plan

    def save_plans(self, plans: dict) -> None:
        """Keep the plans (only the configurations asked for) in ``self.plans``; nothing is written."""
        recursive_fix_for_json_export(plans)
        kept = set(self.configurations) | ({"3d_cascade_fullres"} if "3d_lowres" in self.configurations else set())
        plans["configurations"] = {name: c for name, c in plans["configurations"].items() if name in kept}
        estimates = {name: c.pop("estimated_memory_bytes") for name, c in plans["configurations"].items()
                     if "estimated_memory_bytes" in c}
        plans[MEMORY_KEY] = {"trainer": self.trainer_name, "gpu_memory_gb": self.budget_bytes / GB,
                             "device": self.device_type, "estimated_bytes": estimates}
        self.plans = plans

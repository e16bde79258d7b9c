"""LoGVMambaPlanner: nnU-Net's planning with the LoG network's memory estimate, on a fingerprint written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.planner import (
    GB,
    MEMORY_KEY,
    PRESETS,
    LoGVMambaPlanner,
    parse_gpu_memory,
    plans_identifier,
)

DATASET = "Dataset871_LoGVMambaSynthetic"


def write_fingerprint(preprocessed: Path, shapes: list[list[int]], spacings: list[list[float]]) -> None:
    folder = preprocessed / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = {"spacings": spacings, "shapes_after_crop": shapes, "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {"0": {
                       "max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                       "percentile_99_5": 1.0, "std": 1.0}}}
    (folder / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))


@pytest.fixture
def planner_folders(tmp_path: Path, monkeypatch) -> Path:
    """nnU-Net folders with a tiny raw dataset (its images are only listed) claiming 300 training cases."""
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    make_synthetic_dataset(raw, 871, num_train=2, num_test=0, size=(8, 8, 8))
    dataset_json = raw / DATASET / "dataset.json"
    dataset_json.write_text(json.dumps({**json.loads(dataset_json.read_text()), "numTraining": 300}))
    monkeypatch.setattr(default_experiment_planner, "nnUNet_raw", str(raw))
    monkeypatch.setattr(default_experiment_planner, "nnUNet_preprocessed", str(preprocessed))
    return preprocessed


def plan(gigabytes: float, configurations=("3d_fullres",), trainer="nnUNetTrainerLoGVMamba") -> LoGVMambaPlanner:
    planner = LoGVMambaPlanner(DATASET, gigabytes, trainer_name=trainer, configurations=configurations)
    estimated: list[tuple[list[int], int]] = []
    estimate = planner.static_estimate_VRAM_usage

    def recording(patch_size, *args):
        estimated.append(([int(p) for p in patch_size], estimate(patch_size, *args)))
        return estimated[-1][1]

    planner.static_estimate_VRAM_usage = recording
    planner.plan_experiment()
    planner.estimated = estimated
    return planner


@pytest.mark.parametrize("gigabytes", [PRESETS["M"], PRESETS["L"], PRESETS["XL"]])
def test_presets_fit_and_patch_is_the_largest_that_fits(planner_folders, gigabytes):
    """At 128^3-class images: the plan's estimate is at most the target; every larger patch nnU-Net's shrinking
    tried before it did not fit at batch 2; a larger batch would not fit (unless the 5% cap holds it)."""
    write_fingerprint(planner_folders, [[128, 128, 128], [120, 132, 128], [136, 124, 128]], [[1.0, 1.0, 1.0]] * 3)
    planner = plan(gigabytes)
    configuration = planner.plans["configurations"]["3d_fullres"]
    patch, batch = [int(p) for p in configuration["patch_size"]], configuration["batch_size"]
    estimated = planner.plans[MEMORY_KEY]["estimated_bytes"]["3d_fullres"]
    assert estimated <= gigabytes * GB
    assert [p for p, _ in planner.estimated][-1] == patch
    assert all(e > gigabytes * GB for _, e in planner.estimated[:-1])
    assert planner.estimated[-1][1] <= gigabytes * GB
    counts = planner.counts[planner._key(patch, configuration["architecture"]["arch_kwargs"]["strides"])]
    five_percent = round(300 * 128**3 * 0.05 / np.prod(patch))
    assert batch >= 2 and (batch == max(five_percent, 2) or planner.estimate_bytes(counts, batch + 1) > gigabytes * GB)
    # the topology is nnU-Net's for that patch
    _, strides, kernels, same_patch, _ = get_pool_and_conv_props([1.0] * 3, patch, 4, 999999)
    planned_strides = [list(s) for s in configuration["architecture"]["arch_kwargs"]["strides"]]
    assert list(same_patch) == patch and planned_strides == [list(s) for s in strides]


def test_larger_targets_give_larger_plans(planner_folders):
    write_fingerprint(planner_folders, [[128, 128, 128]] * 3, [[1.0, 1.0, 1.0]] * 3)
    sizes = []
    for gigabytes in (4, PRESETS["XL"]):
        configuration = plan(gigabytes).plans["configurations"]["3d_fullres"]
        sizes.append(np.prod(configuration["patch_size"]) * configuration["batch_size"])
    assert sizes[0] < sizes[1]


def test_anisotropic_2d_and_stage_topology(planner_folders):
    """Thick slices: nnU-Net's transposition and anisotropic pooling; both configurations asked for are planned,
    the others dropped; the stage topology's plans differ from the pooled one's."""
    write_fingerprint(planner_folders, [[20, 160, 160]] * 3, [[5.0, 1.0, 1.0]] * 3)
    pooled = plan(2, ("2d", "3d_fullres"))
    stage = plan(2, ("3d_fullres",), "nnUNetTrainerLoGVMamba_StageTopology")
    assert set(pooled.plans["configurations"]) == {"2d", "3d_fullres"}
    assert set(stage.plans["configurations"]) == {"3d_fullres"}
    strides = pooled.plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]
    assert strides[1][0] == 1 and strides[1][1] == 2
    for planner in (pooled, stage):
        for name, estimate in planner.plans[MEMORY_KEY]["estimated_bytes"].items():
            assert estimate <= 2 * GB, name
    assert pooled.plans["plans_name"] == "nnUNetLoGVMambaPlans_2G"
    assert stage.plans["plans_name"] == "nnUNetLoGVMambaPlans_2G_StageTopology"


def test_too_small_a_target_is_refused(planner_folders):
    write_fingerprint(planner_folders, [[64, 64, 64]] * 3, [[1.0, 1.0, 1.0]] * 3)
    with pytest.raises(ValueError, match="larger --gpu-memory"):
        plan(0.05)


def test_parse_gpu_memory_and_identifier():
    assert [parse_gpu_memory(v) for v in ("M", "l", "XL", "10.5")] == [8.0, 24.0, 40.0, 10.5]
    for bad in ("0", "-3", "XXL", "nan", ""):
        with pytest.raises(ValueError, match="preset"):
            parse_gpu_memory(bad)
    assert plans_identifier(24) == "nnUNetLoGVMambaPlans_24G"
    assert plans_identifier(10.5, "nnUNetTrainerLVMamba") == "nnUNetLoGVMambaPlans_10.5G_LVMamba"


def test_configurations_asked_for(planner_folders):
    """Unknown names are refused; 3d_lowres brings 3d_fullres (its cascade's second stage); a trainer without
    autocast is sized in float32."""
    write_fingerprint(planner_folders, [[64, 64, 64]] * 3, [[1.0, 1.0, 1.0]] * 3)
    with pytest.raises(ValueError, match="choose from"):
        LoGVMambaPlanner(DATASET, 8, configurations=("3d_highres",))
    assert LoGVMambaPlanner(DATASET, 8, configurations=("3d_lowres",)).configurations == ("3d_lowres", "3d_fullres")
    assert LoGVMambaPlanner(DATASET, 8).autocast
    assert not LoGVMambaPlanner(DATASET, 8, trainer_name="nnUNetTrainerLoGVMamba_NoAMP").autocast

"""Minimal nnU-Net 2.8 plans dictionaries (the shape nnUNetv2_plan_and_preprocess writes) for unit tests."""

from __future__ import annotations

import copy

from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_configuration


def configuration(dims: int, patch: list[int], n_stages: int, features: list[int], resenc: bool = False) -> dict:
    """The package's synthetic configuration for ``patch`` with a small, fixed topology (ResEnc kwargs if asked)."""
    config = synthetic_configuration(patch)
    config["data_identifier"] = f"nnUNetPlans_{dims}d"
    blocks = {"n_blocks_per_stage": [1] * n_stages} if resenc else {"n_conv_per_stage": [2] * n_stages}
    arch = config["architecture"]
    if resenc:
        arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        arch["arch_kwargs"].pop(key, None)
    arch["arch_kwargs"].update(
        n_stages=n_stages, features_per_stage=features, kernel_sizes=[[3] * dims] * n_stages,
        strides=[[1] * dims] + [[2] * dims] * (n_stages - 1), n_conv_per_stage_decoder=[1] * (n_stages - 1),
        **blocks)
    return config


def plans(resenc: bool = False) -> dict:
    """Plans with a small '3d_fullres' and '2d' configuration, as passed to a trainer's constructor."""
    return copy.deepcopy({
        "dataset_name": "Dataset999_Unit", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [16, 32, 32],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0, "percentile_99_5": 1.0,
            "std": 0.2}},
        "configurations": {"3d_fullres": configuration(3, [16, 32, 32], 3, [8, 16, 32], resenc),
                           "2d": configuration(2, [32, 32], 3, [8, 16, 32], resenc)},
        "continue_training": False,
    })


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                "numTraining": 4, "file_ending": ".nii.gz"}

"""Minimal nnU-Net 2.8 plans dictionaries (the shape nnUNetv2_plan_and_preprocess writes) for unit tests."""

from __future__ import annotations

import copy


def configuration(dims: int, patch: list[int], n_stages: int, features: list[int], resenc: bool = False) -> dict:
    conv = "torch.nn.modules.conv.Conv3d" if dims == 3 else "torch.nn.modules.conv.Conv2d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    blocks = {"n_blocks_per_stage": [1] * n_stages} if resenc else {"n_conv_per_stage": [2] * n_stages}
    return {
        "data_identifier": f"nnUNetPlans_{dims}d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0] * dims,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet."
                                  + ("ResidualEncoderUNet" if resenc else "PlainConvUNet"),
            "arch_kwargs": {
                "n_stages": n_stages, "features_per_stage": features, "conv_op": conv,
                "kernel_sizes": [[3] * dims] * n_stages, "strides": [[1] * dims] + [[2] * dims] * (n_stages - 1),
                **blocks, "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True, "norm_op": norm,
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }


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

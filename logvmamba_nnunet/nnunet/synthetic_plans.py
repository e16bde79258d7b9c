"""nnU-Net-style plans for a given patch size without a dataset (for profiling and benchmarks).

The topology follows nnU-Net's default planner closely enough for cost comparisons: stride-2 stages (stride 1
along an axis once it would drop below 4 voxels) until every axis is at most 8 voxels long or 6 (3D) / 7 (2D)
stages exist, features 32 * 2^s capped at 320 (3D) / 512 (2D), two convolutions per stage, InstanceNorm and
LeakyReLU. It is not a replacement for ``nnUNetv2_plan_and_preprocess`` on real data.
"""

from __future__ import annotations

from collections.abc import Sequence


def synthetic_configuration(patch_size: Sequence[int], batch_size: int = 2) -> dict:
    """A plans 'configuration' entry for ``patch_size`` (2 or 3 axes)."""
    dims = len(patch_size)
    if dims not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 axes, got {list(patch_size)}.")
    max_stages, max_features = (6, 320) if dims == 3 else (7, 512)
    strides, size = [[1] * dims], list(patch_size)
    while len(strides) < max_stages and max(size) >= 8:
        stride = [2 if s >= 8 else 1 for s in size]
        if stride == [1] * dims:
            break
        strides.append(stride)
        size = [s // st for s, st in zip(size, stride)]
    n_stages = len(strides)
    conv = f"torch.nn.modules.conv.Conv{dims}d"
    return {
        "data_identifier": f"synthetic_{dims}d", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size, "patch_size": list(patch_size), "median_image_size_in_voxels": list(patch_size),
        "spacing": [1.0] * dims, "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages, "features_per_stage": [min(32 * 2 ** s, max_features) for s in range(n_stages)],
                "conv_op": conv, "kernel_sizes": [[3] * dims] * n_stages, "strides": strides,
                "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }


def synthetic_plans(patch_size: Sequence[int], configuration: str = "synthetic") -> dict:
    """Complete plans with one configuration named ``configuration``."""
    dims = len(patch_size)
    return {
        "dataset_name": "Dataset000_Synthetic", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0] * dims, "original_median_shape_after_transp": list(patch_size),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": list(range(dims)),
        "transpose_backward": list(range(dims)), "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
        "configurations": {configuration: synthetic_configuration(patch_size)},
    }

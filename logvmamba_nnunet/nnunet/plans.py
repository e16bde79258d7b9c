"""Translate an nnU-Net configuration (plans) into keyword arguments for this package's networks."""

from __future__ import annotations

import pydoc

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager


def network_kwargs_from_configuration(configuration_manager: ConfigurationManager) -> dict:
    """``architecture.arch_kwargs`` with the dotted imports resolved and the plan's ``patch_size`` added.

    Works for the default plans (``PlainConvUNet`` kwargs, ``n_conv_per_stage``) and the ResEnc presets
    (``n_blocks_per_stage``). Raises ValueError for configurations that are neither 2D nor 3D.
    """
    patch_size = list(configuration_manager.patch_size)
    if len(patch_size) not in (2, 3):
        raise ValueError(f"configuration has a {len(patch_size)}D patch size {patch_size}; LoG-VMamba networks "
                         "support only 2D and 3D configurations (2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres).")
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    for key in configuration_manager.network_arch_init_kwargs_req_import:
        if isinstance(kwargs.get(key), str):
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise ValueError(f"the plans name {key}={kwargs[key]!r}, which cannot be imported; check the plans "
                                 "file or the installed versions of torch and dynamic-network-architectures.")
            kwargs[key] = located
    kwargs["patch_size"] = patch_size
    return kwargs

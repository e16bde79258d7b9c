"""Which parameters get no weight decay (the SSM's A_log and D), and optimizer groups that respect it.

A parameter is excluded when it carries the attribute ``_no_weight_decay = True`` or when its owning
module lists its name in a class attribute ``no_weight_decay_parameter_names``. The second rule survives
``copy.deepcopy`` (which drops attributes set on a Parameter); the attribute lets any other module opt in.
"""

from __future__ import annotations

from torch import nn

NO_WEIGHT_DECAY_ATTRIBUTE = "_no_weight_decay"


def tag_no_weight_decay(parameter: nn.Parameter) -> nn.Parameter:
    """Mark ``parameter`` as excluded from weight decay; returns it."""
    setattr(parameter, NO_WEIGHT_DECAY_ATTRIBUTE, True)
    return parameter


def no_weight_decay_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters of ``model`` that are excluded from weight decay."""
    excluded = {id(p) for p in model.parameters() if getattr(p, NO_WEIGHT_DECAY_ATTRIBUTE, False)}
    for module in model.modules():
        for name in getattr(module, "no_weight_decay_parameter_names", ()):
            parameter = module._parameters.get(name)
            if parameter is not None:
                excluded.add(id(parameter))
    return excluded


def parameter_groups_for_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: ``{"params": [...], "weight_decay": weight_decay}`` for every parameter
    not excluded, ``{"params": [...], "weight_decay": 0.0}`` for the excluded ones. Frozen parameters
    are included (they may be unfrozen later); empty groups are left out."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
    excluded = no_weight_decay_parameter_ids(model)
    decayed = [p for p in model.parameters() if id(p) not in excluded]
    not_decayed = [p for p in model.parameters() if id(p) in excluded]
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]

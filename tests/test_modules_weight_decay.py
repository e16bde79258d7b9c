"""No weight decay for A_log and D: tagging and optimizer parameter groups."""

import copy

import pytest
import torch
from torch import nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay, tag_no_weight_decay


def names_in(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(name for name, p in model.named_parameters() if id(p) in ids)


def two_blocks():
    return nn.Sequential(
        LoGVMambaBlock(8, 2, "local_global", planned_size=(4, 4), d_state=4, directions=2),
        LoGVMambaBlock(8, 2, "vss", d_state=4),
    )


def test_a_log_and_d_get_no_weight_decay():
    model = two_blocks()
    decayed, not_decayed = parameter_groups_for_weight_decay(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and not_decayed["weight_decay"] == 0.0
    assert names_in(model, not_decayed) == ["0.mixer.ssm.A_log", "0.mixer.ssm.D", "1.mixer.ssm.A_log",
                                            "1.mixer.ssm.D"]
    assert len(decayed["params"]) + len(not_decayed["params"]) == len(list(model.parameters()))
    assert "0.mixer.ssm.dt_proj_bias" in names_in(model, decayed)
    assert model[0].mixer.ssm.A_log._no_weight_decay is True


def test_exclusion_survives_deepcopy():
    model = copy.deepcopy(two_blocks())
    _, not_decayed = parameter_groups_for_weight_decay(model, 1e-4)
    assert len(not_decayed["params"]) == 4


def test_tagged_parameter_of_any_module_is_excluded_and_empty_groups_are_dropped():
    layer = nn.Linear(3, 2)
    tag_no_weight_decay(layer.bias)
    groups = parameter_groups_for_weight_decay(layer, 0.1)
    assert [g["params"] for g in groups] == [[layer.weight], [layer.bias]]
    assert len(parameter_groups_for_weight_decay(nn.Linear(3, 2), 0.1)) == 1


def test_groups_drive_adamw_as_intended():
    torch.manual_seed(0)
    model = LoGVMambaBlock(8, 2, "vss", d_state=4)
    optimizer = torch.optim.AdamW(parameter_groups_for_weight_decay(model, 0.5), lr=0.1)
    a_log, weight = model.mixer.ssm.A_log.detach().clone(), model.mixer.in_proj.weight.detach().clone()
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # zero gradients: only AdamW's decoupled weight decay moves the parameters
    assert torch.equal(model.mixer.ssm.A_log, a_log)
    assert not torch.equal(model.mixer.in_proj.weight, weight)


def test_negative_weight_decay_raises():
    with pytest.raises(ValueError, match="weight_decay=-1"):
        parameter_groups_for_weight_decay(nn.Linear(2, 2), -1)

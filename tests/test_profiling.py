"""Scan FLOP formula against a direct count, FLOP-counting mode, synthetic plans, and the profile command."""

import pytest
import torch

from logvmamba_nnunet.cli.main import main
from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_configuration
from logvmamba_nnunet.ops import selective_scan
from logvmamba_nnunet.ops.flops import count_scan_flops, selective_scan_flops
from logvmamba_nnunet.profiling.profile import profile_trainers


def direct_count(batch: int, channels: int, length: int, d_state: int, with_D: bool, with_z: bool) -> int:
    """Walk the selective-scan recurrence (paper §3.1) literally and count every arithmetic operation."""
    ops = 0
    for _b in range(batch):
        for _d in range(channels):
            for _t in range(length):
                ops += 1  # delta_t * u_t
                for _n in range(d_state):
                    ops += 1  # delta_t * A_n
                    ops += 1  # exp(.)
                    ops += 1  # (delta_t u_t) * B_tn
                    ops += 2  # h = dA * h + dBu
                    ops += 2  # y += C_tn * h
                if with_D:
                    ops += 2  # y + D * u
                if with_z:
                    ops += 3  # sigmoid(z), z * sigmoid(z), y * silu(z)
    return ops


@pytest.mark.parametrize("shape, with_D, with_z", [((1, 1, 1, 1), False, False), ((2, 3, 5, 4), True, False),
                                                   ((1, 2, 7, 16), True, True), ((3, 1, 2, 2), False, True)])
def test_formula_matches_direct_count(shape, with_D, with_z):
    assert selective_scan_flops(*shape, with_D, with_z) == direct_count(*shape, with_D, with_z)


def test_counting_mode_records_calls_and_returns_shapes():
    u, delta, z = (torch.randn(2, 4, 9) for _ in range(3))
    A, B, C = -torch.rand(4, 3), torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    with count_scan_flops() as counter:
        y, state = selective_scan(u, delta, A, B, C, D=torch.ones(4), z=z, return_last_state=True)
    assert y.shape == (2, 4, 9) and state.shape == (2, 4, 3)
    assert counter.flops == selective_scan_flops(2, 4, 9, 3, True, True) and counter.calls == [(2, 4, 9, 3)]
    assert not torch.equal(selective_scan(u, delta, A, B, C), torch.zeros_like(u))  # normal again outside


def test_synthetic_plan_topology():
    arch = synthetic_configuration([128, 128, 128])["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 6 and arch["features_per_stage"][-1] == 320
    arch = synthetic_configuration([40, 224, 192])["architecture"]["arch_kwargs"]
    assert arch["strides"][-1] == [1, 2, 2]
    with pytest.raises(ValueError, match="2 or 3 axes"):
        synthetic_configuration([8])


def test_profile_counts_scan_only_for_mamba_networks():
    from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans

    rows = profile_trainers(["nnUNetTrainer", "nnUNetTrainerLoGVMamba"], synthetic_plans([32, 32, 32]),
                            "synthetic", 1, 2, timing_device="cpu", repeats=1)
    default, log = rows
    assert default.scan_flops == 0 and log.scan_flops > 0
    assert log.parameters > 0 and default.conv_matmul_flops > 0 and log.activation_bytes > 0
    assert log.forward_s > 0 and log.forward_backward_s >= 0


def test_profile_command_table(capsys):
    assert main(["profile", "--patch", "16", "16", "-tr", "nnUNetTrainer", "nnUNetTrainerLoGVMamba"]) == 0
    out = capsys.readouterr().out
    assert "| nnUNetTrainer |" in out and "| nnUNetTrainerLoGVMamba |" in out
    assert main(["profile", "--patch", "16", "16", "-tr", "nnUNetTrainerDoesNotExist"]) == 2
    assert "cannot find trainer" in capsys.readouterr().err


class ScaledSquare(torch.nn.Module):
    """h = x * w (autograd keeps x for w's gradient), y = h * h.t()-view product (keeps h and a view of it: one
    storage), z = linear(y, W) (keeps y and the parameter W, which is not an activation)."""

    def __init__(self, width: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.5))
        self.linear = torch.nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.w
        return self.linear(h * h.transpose(-1, -2).transpose(-1, -2))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saved_activations_count_each_storage_once_and_no_parameter(device):
    from logvmamba_nnunet.profiling.profile import saved_activation_bytes

    shape = (2, 3, 4, 5)
    network = ScaledSquare(shape[-1]).to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    # x (for w), h (for the product, saved twice through a view), h * h (for W's gradient): 3 storages
    assert saved_activation_bytes(network, x) == 3 * 2 * 3 * 4 * 5 * 4

"""Memory estimate of a training step: counts on the meta device against real CPU runs, and the estimate's sums."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.networks.log_vmamba_pooled_unet import PooledResidualDecoder
from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans
from logvmamba_nnunet.ops.scan_memo import observe_records
from logvmamba_nnunet.profiling.memory_estimate import (
    CUDA_CALIBRATION,
    CUDA_RESERVE_BYTES,
    StepCounts,
    count_configuration,
    count_training_step,
    estimate_configuration,
    estimate_from_counts,
    largest_batch_size,
    nnunet_loss,
    optimizer_state_tensors,
    scan_buffer_bytes,
)
from logvmamba_nnunet.profiling.profile import build_network, find_trainer_class, saved_activation_bytes

PATCH = [16, 24, 16]


def log_network(recompute: bool) -> nn.Module:
    torch.manual_seed(0)
    trainer = find_trainer_class("nnUNetTrainerLoGVMamba")
    network = build_network(trainer, synthetic_plans(PATCH), "synthetic", 1, 3)
    for module in network.modules():
        if isinstance(module, LoGVMambaBlock):
            module.recompute = recompute
        if isinstance(module, PooledResidualDecoder):
            module.recompute_full_resolution = recompute
    return network


@pytest.mark.parametrize("recompute", [True, False])
def test_forward_count_matches_a_real_cpu_forward(recompute):
    """The meta count of the forward's saved storages (the scan's included, which the meta run only models) equals
    what autograd saves in a real float32 forward on the CPU with the torch scan: exactly with recomputation (the
    default), within 3% without (the modelled scan's storages inside the blocks)."""
    network = log_network(recompute)
    x = torch.randn(1, 1, *PATCH, requires_grad=True)
    real = saved_activation_bytes(network, x)
    memos: list[torch.Tensor] = []
    with observe_records(memos.append):
        network(x)
    counts = count_training_step(log_network(recompute), (1, *PATCH), "cpu")
    counted = counts.saved_in_autocast_dtype + counts.saved_in_float32
    assert counted == real if recompute else counted == pytest.approx(real, rel=0.03)
    # the float32 blocks and the full-resolution tail (autocast dtype) both recompute
    assert (counts.largest_recomputation_in_float32 > 0) == recompute
    assert (counts.largest_recomputation_in_autocast_dtype > 0) == recompute
    # with recomputation the blocks keep only their inputs and, in float32, their scans' memos
    blocks = sum(isinstance(m, LoGVMambaBlock) for m in network.modules())
    assert blocks > 0 and len(memos) == (3 * blocks if recompute else 0)
    memo_bytes = sum(t.untyped_storage().nbytes() for t in memos)
    assert counts.saved_in_float32 == memo_bytes if recompute else counts.saved_in_float32 > 0
    assert counts.parameters == sum(p.numel() for p in network.parameters())


def test_blocks_keep_their_recompute_setting_and_plain_networks_have_no_recomputation():
    network = log_network(True)
    count_training_step(network, (1, *PATCH), "cpu")
    assert all(m.recompute for m in network.modules() if isinstance(m, LoGVMambaBlock))
    plain = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(4, 3, 1))
    counts = count_training_step(plain, (1, 8, 8, 8), "cpu")
    real = saved_activation_bytes(nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(4, 3, 1)),
                                  torch.randn(1, 1, 8, 8, 8, requires_grad=True))
    assert counts.saved_in_autocast_dtype == real and counts.largest_recomputation_in_float32 == 0
    assert counts.largest_recomputation_in_autocast_dtype == 0
    assert counts.saved_by_loss > 0 and counts.batch_data == 4 * (8**3 + 8**3)


def test_estimate_sums_its_parts():
    counts = StepCounts(parameters=1000, parameters_outside_fp32_blocks=600, saved_in_autocast_dtype=4000,
                        saved_in_float32=1000, saved_by_loss=500, largest_recomputation_in_float32=300,
                        largest_recomputation_in_autocast_dtype=400, largest_saved=100,
                        batch_data=50)
    cpu = estimate_from_counts(counts, 3, "cpu", optimizer_states=2)
    assert (cpu.weights, cpu.gradients, cpu.optimizer_state, cpu.half_precision_weights) == (4000, 4000, 8000, 0)
    # transients: the larger recomputation (the autocast-dtype region's 400, in float32 on the CPU) + 2 x 100
    assert (cpu.activations, cpu.transients, cpu.batch_data, cpu.reserve) == (3 * 5500, 3 * 600, 150, 0)
    assert cpu.total == 4000 + 4000 + 8000 + 16500 + 1800 + 150 + scan_buffer_bytes("cpu")
    cuda = estimate_from_counts(counts, 3, "cuda", optimizer_states=1)
    assert (cuda.optimizer_state, cuda.half_precision_weights) == (4000, 1200)
    assert cuda.activations == round(CUDA_CALIBRATION * 3 * 3500)
    assert cuda.transients == round(CUDA_CALIBRATION * 3 * (300 + 200))  # the float32 region's 300 > 400 / 2
    assert cuda.reserve == CUDA_RESERVE_BYTES and cuda.scan_buffers > cpu.scan_buffers
    fp32 = estimate_from_counts(counts, 3, "cuda", optimizer_states=1, autocast=False)  # force_fp32 on a GPU
    assert (fp32.half_precision_weights, fp32.activations) == (0, round(CUDA_CALIBRATION * 3 * 5500))
    assert fp32.transients == round(CUDA_CALIBRATION * 3 * 600)
    assert fp32.reserve == CUDA_RESERVE_BYTES and fp32.total > cuda.total
    with pytest.raises(ValueError, match="batch_size"):
        estimate_from_counts(counts, 0, "cpu")


def test_largest_batch_size():
    counts = StepCounts(1000, 1000, 10**6, 0, 0, 0, 0, 0, 0)
    for budget in (scan_buffer_bytes("cpu") + 5 * 10**6, scan_buffer_bytes("cpu") + 3.5 * 10**7):
        batch = largest_batch_size(counts, budget, "cpu")
        assert estimate_from_counts(counts, batch, "cpu").total <= budget
        assert batch >= 4 and estimate_from_counts(counts, batch + 1, "cpu").total > budget
    assert largest_batch_size(counts, 1000, "cpu") == 0


def test_nnunet_loss_is_the_weighted_sum_of_dice_and_cross_entropy():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(0)
    outputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])).float() for o in outputs]
    single = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                            dice_class=MemoryEfficientSoftDiceLoss)
    expected = (single(outputs[0], targets[0]) * (1 / 1.5) + single(outputs[1], targets[1]) * (0.5 / 1.5))
    torch.testing.assert_close(nnunet_loss(outputs, targets), expected)


def test_configuration_helpers_build_the_trainers_network():
    trainer = find_trainer_class("nnUNetTrainerLoGVMamba_nnUNetRecipe")
    plans = synthetic_plans(PATCH)
    counts = count_configuration(trainer, plans, "synthetic", 1, 3, "cuda")
    assert counts == count_training_step(log_network(True), (1, *PATCH), "cuda")
    assert optimizer_state_tensors(trainer) == 1 and optimizer_state_tensors(object) == 2
    estimate = estimate_configuration(trainer, plans, "synthetic", 1, 3, "cuda", batch_size=5)
    assert estimate == estimate_from_counts(counts, 5, "cuda", 1)

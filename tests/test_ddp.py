"""DistributedDataParallel on CPU: two processes (``gloo``) train the 3D and the 2D LoG-VMamba networks the way
nnU-Net's DDP path does (``SyncBatchNorm.convert_sync_batchnorm``, then DDP with ``find_unused_parameters`` off;
nnU-Net's Dice + CE loss with its DDP deep-supervision weights) and must keep identical parameters on both ranks;
plus single-process checks of :mod:`logvmamba_nnunet.nnunet.ddp`."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from logvmamba_nnunet.nnunet.ddp import deep_supervision_head_names, freeze_deep_supervision_heads, set_trainable
from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV, with_ext_trainer_folder
from logvmamba_nnunet_trainers import nnUNetTrainerLoGVMamba
from tests.plans_factory import plans

WORLD_SIZE = 2
NUM_CLASSES = 3
CONFIGURATIONS = {3: "3d_fullres", 2: "2d"}
STEPS = 2
INPUT_SIZES = {3: (8, 16, 16), 2: (64, 64)}
"""Spatial input sizes (the networks take other sizes than the planned patch): half the 3D patch; twice the 2D
patch, so that the deepest 2D stage has 2x2 positions (on one position the SSM's A gets no gradient)."""


class TinyLoGVMambaTrainer(nnUNetTrainerLoGVMamba):
    """``nnUNetTrainerLoGVMamba`` whose 2D network (``LoGVMambaSwinUMamba2D``) is narrow: same modules, fewer
    channels and blocks, and no drop path (a dropped block gets a zero gradient, so a parameter would not change
    in some steps). The 3D network is the trainer's own for the small plans of ``tests/plans_factory.py``."""

    @classmethod
    def network_2d_overrides(cls) -> dict:
        return {**super().network_2d_overrides(), "widths": (8, 16, 32, 64), "depths": (1, 1, 1, 1),
                "decoder_blocks_per_level": 1, "encoder_drop_path_rate": 0.0, "decoder_drop_path_rate": 0.0}


def build_network(dims: int, deep_supervision: bool) -> nn.Module:
    """What the trainer builds for the 3d_fullres (patch 16x32x32) or 2d (32x32) configuration, seeded."""
    manager = PlansManager(plans())
    torch.manual_seed(0)
    return TinyLoGVMambaTrainer.build_network_architecture(
        manager, manager.get_configuration(CONFIGURATIONS[dims]), 1, NUM_CLASSES, deep_supervision)


def nnunet_loss(n_outputs: int | None, ddp: bool) -> nn.Module:
    """The loss of ``nnUNetTrainer._build_loss`` for labels: Dice (batch dice) + CE; with ``n_outputs`` deep
    supervision outputs, weights 1/2^i normalised to sum 1, the lowest one 1e-6 under DDP (0 otherwise)."""
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    if n_outputs is None:
        return loss
    weights = [1 / 2**i for i in range(n_outputs)]
    weights[-1] = 1e-6 if ddp else 0.0
    return DeepSupervisionWrapper(loss, [w / sum(weights) for w in weights])


def random_batch(dims: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, 1, *size) with values related to random labels (1, 1, *size) in {0, 1, 2}."""
    labels = torch.randint(0, NUM_CLASSES, (1, 1, *INPUT_SIZES[dims]), generator=generator)
    image = labels.float() + 0.5 * torch.randn(labels.shape, generator=generator)
    return image, labels


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, dims: int, generator: torch.Generator,
                ddp: bool, steps: int = STEPS) -> None:
    """``steps`` iterations of nnU-Net's train step (forward, loss on every output, backward, step) on CPU."""
    for _ in range(steps):
        image, labels = random_batch(dims, generator)
        output = model(image)
        outputs = output if isinstance(output, list) else [output]
        targets = [F.interpolate(labels.float(), size=o.shape[2:], mode="nearest") for o in outputs]
        loss_function = nnunet_loss(len(outputs) if isinstance(output, list) else None, ddp)
        loss = loss_function(output, targets if isinstance(output, list) else targets[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def snapshot(network: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in network.named_parameters()}


def assert_changed_exactly(network: nn.Module, before: dict[str, torch.Tensor], expected: set[str], case: str) -> None:
    changed = {name for name, p in network.named_parameters() if not torch.equal(p, before[name])}
    assert changed == expected, (f"{case}: unchanged {sorted(expected - changed)[:4]}, changed although they "
                                 f"should not {sorted(changed - expected)[:4]}")


def assert_identical_across_ranks(network: nn.Module, case: str) -> None:
    flat = torch.cat([p.detach().reshape(-1) for p in network.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, flat)
    for rank, other in enumerate(gathered[1:], start=1):
        assert torch.equal(gathered[0], other), f"{case}: parameters of rank 0 and rank {rank} differ"


def ddp_case(rank: int, dims: int, deep_supervision: bool) -> None:
    """Train under DDP as nnU-Net wraps the network; every trainable parameter changes, ranks stay identical."""
    case = f"{dims}D, deep supervision {'on' if deep_supervision else 'off'}"
    network = build_network(dims, deep_supervision)
    frozen = set() if deep_supervision else set(freeze_deep_supervision_heads(network))
    network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    model = DistributedDataParallel(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    before = snapshot(network)
    train_steps(model, optimizer, dims, torch.Generator().manual_seed(100 + rank), ddp=True)
    assert_changed_exactly(network, before, set(before) - frozen, case)
    assert_identical_across_ranks(network, case)


def frozen_encoder_case(rank: int) -> None:
    """2D, deep supervision on: freeze the encoder and later unfreeze it with ``set_trainable`` (what
    ``nnUNetTrainerSwinUMambaLoG`` does with pretrained weights), training under DDP in both phases."""
    network = build_network(2, True)
    encoder = [name for name, _ in network.named_parameters() if name.startswith("encoder.")]
    model = set_trainable(DistributedDataParallel(network), encoder, False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(200 + rank)
    before = snapshot(network)
    train_steps(model, optimizer, 2, generator, ddp=True)
    assert_changed_exactly(network, before, set(before) - set(encoder), "2D, encoder frozen")
    assert_identical_across_ranks(network, "2D, encoder frozen")
    model = set_trainable(model, encoder, True)
    before = snapshot(network)
    train_steps(model, optimizer, 2, generator, ddp=True)
    assert_changed_exactly(network, before, set(before), "2D, encoder unfrozen")
    assert_identical_across_ranks(network, "2D, encoder unfrozen")


def unused_heads_fail_case(rank: int) -> None:
    """Without ``freeze_deep_supervision_heads``, deep supervision off fails under DDP at the second iteration."""
    network = build_network(3, False)
    model = DistributedDataParallel(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    with pytest.raises(RuntimeError, match="finished reduction"):
        train_steps(model, optimizer, 3, torch.Generator().manual_seed(300 + rank), ddp=True)


def ddp_worker(rank: int, port: int) -> None:
    """One of the two ranks: trainer lookup in the spawned child, then every DDP case in turn."""
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        assert recursive_find_trainer_class_by_name("nnUNetTrainerLoGVMamba") is nnUNetTrainerLoGVMamba
        for dims in (3, 2):
            for deep_supervision in (True, False):
                ddp_case(rank, dims, deep_supervision)
        frozen_encoder_case(rank)
        unused_heads_fail_case(rank)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_keep_identical_parameters(monkeypatch):
    monkeypatch.setenv(EXT_TRAINER_ENV, with_ext_trainer_folder(os.environ.get(EXT_TRAINER_ENV)))
    mp.spawn(ddp_worker, args=(free_port(),), nprocs=WORLD_SIZE, join=True)


def parameters_without_gradient(network: nn.Module, dims: int) -> set[str]:
    """Parameters that require a gradient but get none from one single-process forward and backward."""
    image, _ = random_batch(dims, torch.Generator().manual_seed(1))
    output = network(image)
    sum(o.square().mean() for o in (output if isinstance(output, list) else [output])).backward()
    return {name for name, p in network.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("dims", [3, 2])
def test_deep_supervision_off_leaves_exactly_the_named_heads_without_gradient(dims):
    network = build_network(dims, False)
    names = deep_supervision_head_names(network)
    assert names and all(".seg_layers." in n or ".heads." in n for n in names)
    assert parameters_without_gradient(network, dims) == set(names)


@pytest.mark.parametrize("dims", [3, 2])
def test_deep_supervision_on_gives_every_parameter_a_gradient(dims):
    assert parameters_without_gradient(build_network(dims, True), dims) == set()


@pytest.mark.parametrize("dims", [3, 2])
def test_freezing_the_heads_leaves_no_parameter_without_gradient(dims):
    network = build_network(dims, False)
    frozen = freeze_deep_supervision_heads(network)
    assert frozen == deep_supervision_head_names(network)
    assert {name for name, p in network.named_parameters() if not p.requires_grad} == set(frozen)
    assert parameters_without_gradient(network, dims) == set()


def test_nnunet_plain_unet_has_the_same_unused_heads():
    network = PlainConvUNet(1, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 1, NUM_CLASSES, 1, conv_bias=True,
                            norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                            deep_supervision=False)
    names = deep_supervision_head_names(network)
    assert names == ["decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"]
    assert parameters_without_gradient(network, 3) == set(names)


def test_freeze_rejects_deep_supervision_on_and_unknown_networks():
    with pytest.raises(ValueError, match="deep supervision is on"):
        freeze_deep_supervision_heads(build_network(3, True))
    with pytest.raises(ValueError, match="no decoder"):
        deep_supervision_head_names(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unwrapped network"):
        freeze_deep_supervision_heads(nn.Sequential(nn.Linear(2, 2)))

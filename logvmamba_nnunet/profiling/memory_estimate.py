"""Memory of one nnU-Net training step of a network, estimated from the network itself.

One training-mode forward pass plus nnU-Net's loss (Dice + cross-entropy with deep supervision) runs at batch 1 on
the meta device (no memory, no arithmetic) while ``saved_tensors_hooks`` record every distinct storage autograd
keeps for backward, as :func:`logvmamba_nnunet.profiling.profile.saved_activation_bytes` counts them. Each storage
is attributed to where it was saved: inside a region that can recompute its activations in backward (a LoG-family
block, ``LoGVMambaBlock``, or the pooled decoder's full-resolution tail, ``PooledResidualDecoder``) or elsewhere. The
regions run with their recomputation switched off for the count, so the count also gives what each region holds
while backward recomputes it. From these counts, for a batch size and a device:

- weights, gradients and optimizer state: 4 bytes per parameter each, times the optimizer's state tensors per
  parameter (Adam 2, SGD with momentum 1);
- under autocast on CUDA, the float16 copies of the weights used outside float32 blocks (2 bytes per parameter);
- activations: the saved storages of the batch. Under fp16 autocast (CUDA) the storages saved outside float32
  blocks are float16 (convolutions, norms and nonlinearities outside the blocks), those inside blocks with
  ``fp32`` and the loss's stay float32 (docs/architecture.md, "Memory and recomputation"); on the CPU (no
  autocast) everything is float32;
- the scan memo of every recomputing block: its scan's output and chunk-start states (``ops/scan_memo.py``);
- backward's transients: the largest region's activations while backward recomputes it (0 without
  recomputation; float16 under autocast unless the region runs in float32) plus two gradient buffers of the
  largest saved storage;
- the selective scan's block buffers (``ops/scan_torch.py``: its kept CPU workspace, or three block buffers of
  its element budget on GPUs);
- the batch itself (image and the targets of every deep-supervision output, float32);
- on CUDA a fixed reserve for the CUDA context and cuDNN's workspace.

Activations and transients are multiplied by a calibration factor per device (docs/benchmarks.md, "Memory
estimate against measured peaks"): :data:`CPU_CALIBRATION` from CPU peaks (``benchmarks/memory_estimate.py``),
:data:`CUDA_CALIBRATION` from the one GPU measurement available. Bytes throughout; GiB = 2**30 bytes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.networks.log_vmamba_pooled_unet import PooledResidualDecoder
from logvmamba_nnunet.ops import scan_torch
from logvmamba_nnunet.ops.flops import count_scan_flops

FP32_BYTES = 4
FP16_BYTES = 2
CPU_CALIBRATION = 1.0
"""Factor on activations and transients on the CPU: without correction the estimate is 0.86-1.06 times the measured
peaks of ``benchmarks/memory_estimate.py`` (six plans), so none is applied."""
CUDA_CALIBRATION = 1.35
"""Factor on activations and transients on CUDA: the measured H100 peak of ``benchmarks/train_step.py --device cuda
--patch 128 128 128`` (stage topology, 25.61 GiB, docs/benchmarks.md) over this estimate without the factor and
without recomputation (as that code ran: 18.94 GiB, weights excluded as there). Provisional: one measurement,
before the blocks' recomputation and copy reductions; cuDNN's workspaces are the likely gap."""
CUDA_RESERVE_BYTES = 768 * 2**20
"""CUDA context and cuDNN workspace, which ``torch.cuda.get_device_properties(...).total_memory`` includes."""
SCAN_BUFFERS = 3


@dataclass(frozen=True)
class StepCounts:
    """What one training step of a network keeps, counted at batch 1 in float32 on the meta device (bytes, except
    ``parameters``: elements). Under autocast, ``saved_in_autocast_dtype`` is half precision and
    ``saved_in_float32`` (inside blocks with ``fp32``, and the scan memos) stays float32; the largest recomputation
    (what a recomputing region holds while backward recomputes it) is counted for the float32 regions and the
    others apart, for the same reason."""

    parameters: int
    parameters_outside_fp32_blocks: int
    saved_in_autocast_dtype: int
    saved_in_float32: int
    saved_by_loss: int
    largest_recomputation_in_float32: int
    largest_recomputation_in_autocast_dtype: int
    largest_saved: int
    batch_data: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training step, in bytes, by component (see the module docstring)."""

    batch_size: int
    device_type: str
    weights: int
    gradients: int
    optimizer_state: int
    half_precision_weights: int
    activations: int
    transients: int
    scan_buffers: int
    batch_data: int
    reserve: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name not in ("batch_size", "device_type"))

    def describe(self) -> str:
        """One line: the total and its main parts, in GiB."""
        gib = 2.0**30
        fixed = self.weights + self.gradients + self.optimizer_state + self.half_precision_weights
        other = self.scan_buffers + self.batch_data + self.reserve
        return (f"{self.total / gib:.2f} GiB at batch {self.batch_size} on {self.device_type} (weights, gradients "
                f"and optimizer state {fixed / gib:.2f}, activations {self.activations / gib:.2f}, backward "
                f"transients {self.transients / gib:.2f}, other {other / gib:.2f})")


@dataclass(eq=False)
class _Region:
    """A part of the network that can recompute its activations in backward, from the forward pre-hook of ``first``
    to the forward hook of ``last``: a LoG-family block, or the pooled decoder's full-resolution tail. ``switch``
    names the attribute of ``owner`` that turns its recomputation on; ``recompute`` is its setting, ``fp32``
    whether the region runs in float32 under autocast."""

    owner: nn.Module
    switch: str
    first: nn.Module
    last: nn.Module
    recompute: bool
    fp32: bool


def _regions(network: nn.Module) -> list[_Region]:
    """The network's LoG-family blocks and the full-resolution tails of its pooled decoders."""
    regions = []
    for module in network.modules():
        if isinstance(module, LoGVMambaBlock):
            regions.append(_Region(module, "recompute", module, module, module.recompute, module.fp32))
        elif isinstance(module, PooledResidualDecoder):
            regions.append(_Region(module, "recompute_full_resolution", module.stem_upsample_conv, module.heads[0],
                                   module.recompute_full_resolution, False))
    return regions


class _SavedStorages:
    """Distinct storages saved for backward (bytes), each with the places it was saved in: a region, or None for
    outside every region; and what the regions in ``recomputing`` keep beside autograd: their inputs, which their
    checkpoints keep, and their blocks' scan memos."""

    def __init__(self, network: nn.Module, recomputing: set[_Region]) -> None:
        self.parameters = {p.untyped_storage()._cdata for p in network.parameters()}
        self.recomputing = recomputing
        self.bytes: dict[int, int] = {}
        self.places: dict[int, set[_Region | None]] = {}
        self.kept_by_recomputation: set[int] = set()
        self.memos: set[int] = set()
        self.current: _Region | None = None
        self.kept: list[torch.Tensor] = []

    def _remember(self, tensor: torch.Tensor) -> int | None:
        key = tensor.untyped_storage()._cdata
        if key in self.parameters:
            return None
        self.bytes[key] = tensor.untyped_storage().nbytes()
        self.kept.append(tensor)
        return key

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = self._remember(tensor)
        if key is not None:
            self.places.setdefault(key, set()).add(self.current)
        return tensor

    def enter(self, region: _Region, args: tuple) -> None:
        self.current = region
        if region in self.recomputing and isinstance(args[0], torch.Tensor):
            key = self._remember(args[0])
            if key is not None:
                self.kept_by_recomputation.add(key)

    def hook(self, region: _Region, stack: contextlib.ExitStack) -> None:
        """Attribute what is saved from ``region.first``'s start to ``region.last``'s end to ``region``."""
        stack.callback(region.first.register_forward_pre_hook(lambda _, args: self.enter(region, args)).remove)
        stack.callback(region.last.register_forward_hook(lambda *_: setattr(self, "current", None)).remove)

    def scan(self, inputs: tuple, device_type: str) -> None:
        """What ``ChunkedSelectiveScan`` saves: its sequence inputs and the float32 states at its chunk starts
        (a storage of its own, of n_chunks * b * d * n elements). In a recomputing block, the scan memo keeps the
        chunk-start states, the float32 output y (b, d, L) and the last state (b, d, n) beside the block's input
        (``ops/scan_memo.py``)."""
        for tensor in inputs:
            if tensor is not None:
                self.pack(tensor)
        u, state = inputs[0], inputs[2].shape[-2]
        batch, channels, length = u.shape
        shape = scan_torch.saved_state_shape(batch, channels, state, length, None, torch.device(device_type))
        states = self._model(FP32_BYTES * math.prod(shape))
        if self.current in self.recomputing:
            memo = (states, self._model(FP32_BYTES * u.numel()), self._model(FP32_BYTES * batch * channels * state))
            self.kept_by_recomputation.update(memo)
            self.memos.update(memo)

    def _model(self, nbytes: int) -> int:
        """A modelled storage of ``nbytes`` saved in the current place; its key."""
        key = -len(self.bytes) - 1
        self.bytes[key] = nbytes
        self.places[key] = {self.current}
        return key


def nnunet_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """nnU-Net's default training loss (``nnUNetTrainer._build_loss`` without regions or ignore label: Dice +
    cross-entropy with ``MemoryEfficientSoftDiceLoss``, deep-supervision weights 1/2^i, the last one 0) of the
    network outputs (B, classes, *spatial) against label maps (B, 1, *spatial) of the same spatial sizes."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / 2**i for i in range(len(outputs))])
    if len(outputs) > 1:
        weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())(outputs, targets)


def count_training_step(network: nn.Module, input_shape: tuple[int, ...], device_type: str = "cuda") -> StepCounts:
    """Count one training step of ``network`` (moved to the meta device, its blocks' recomputation restored
    afterwards) for one sample of ``input_shape`` = (channels, *patch). ``device_type`` sets how the selective
    scan cuts its sequences into chunks (its saved chunk-start states), which differs between the CPU and GPUs."""
    network = network.to("meta").train()
    regions = _regions(network)
    recomputing = {region for region in regions if region.recompute}
    fp32_regions = {region for region in regions if region.fp32}
    storages = _SavedStorages(network, recomputing)
    x = torch.zeros((1, *input_shape), device="meta", requires_grad=True)
    with contextlib.ExitStack() as stack:
        for region in regions:
            stack.callback(setattr, region.owner, region.switch, region.recompute)
            setattr(region.owner, region.switch, False)
            storages.hook(region, stack)
        stack.enter_context(FlopCounterMode(display=False))
        stack.enter_context(count_scan_flops(lambda inputs: storages.scan(inputs, device_type)))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(storages.pack, lambda t: t))
        output = network(x)
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        target_shapes = [(1, 1, *o.shape[2:]) for o in outputs]
        forward_keys = set(storages.bytes)
        nnunet_loss(outputs, [torch.zeros(shape, device="meta") for shape in target_shapes])

    internal = dict.fromkeys(recomputing, 0)
    kept = set(storages.kept_by_recomputation)
    for key in forward_keys - storages.kept_by_recomputation:
        places = storages.places[key]
        if places <= recomputing:
            for region in places:
                internal[region] += storages.bytes[key]
        else:
            kept.add(key)
    in_fp32 = {key for key in kept if storages.places.get(key) and storages.places[key] <= fp32_regions}
    in_fp32 |= storages.memos
    fp32_parameters = {id(p) for region in fp32_regions for p in region.owner.parameters()}
    return StepCounts(
        parameters=sum(p.numel() for p in network.parameters()),
        parameters_outside_fp32_blocks=sum(p.numel() for p in network.parameters() if id(p) not in fp32_parameters),
        saved_in_autocast_dtype=sum(storages.bytes[k] for k in kept - in_fp32),
        saved_in_float32=sum(storages.bytes[k] for k in in_fp32),
        saved_by_loss=sum(storages.bytes[k] for k in set(storages.bytes) - forward_keys),
        largest_recomputation_in_float32=max((internal[r] for r in internal if r.fp32), default=0),
        largest_recomputation_in_autocast_dtype=max((internal[r] for r in internal if not r.fp32), default=0),
        largest_saved=max((storages.bytes[k] for k in kept), default=0),
        batch_data=FP32_BYTES * (math.prod(input_shape) + sum(math.prod(s) for s in target_shapes)))


def scan_buffer_bytes(device_type: str) -> int:
    """Bytes of the selective scan's block buffers at their largest (``ops/scan_torch.py``'s budgets: on the CPU
    its workspace, which it keeps between calls, at most ``_KEPT_WORKSPACE_ELEMENTS``; on GPUs three block buffers
    of ``_ACCELERATOR_BLOCK_ELEMENTS``)."""
    if device_type == "cpu":
        return scan_torch._KEPT_WORKSPACE_ELEMENTS * FP32_BYTES
    return SCAN_BUFFERS * scan_torch._ACCELERATOR_BLOCK_ELEMENTS * FP32_BYTES


def estimate_from_counts(counts: StepCounts, batch_size: int, device_type: str, optimizer_states: int = 2,
                         autocast: bool | None = None) -> MemoryEstimate:
    """Peak bytes of a training step at ``batch_size`` on ``device_type`` ("cuda" or "cpu") with
    ``optimizer_states`` state tensors per parameter, under fp16 autocast (default: on CUDA, as nnU-Net trains) or
    in float32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    cuda = device_type == "cuda"
    autocast = cuda if autocast is None else autocast
    calibration = CUDA_CALIBRATION if cuda else CPU_CALIBRATION
    half = FP16_BYTES / FP32_BYTES if autocast else 1
    activations = counts.saved_in_autocast_dtype * half + counts.saved_in_float32 + counts.saved_by_loss
    recomputation = max(counts.largest_recomputation_in_float32, counts.largest_recomputation_in_autocast_dtype * half)
    transients = recomputation + 2 * counts.largest_saved
    return MemoryEstimate(
        batch_size=batch_size, device_type=device_type,
        weights=FP32_BYTES * counts.parameters, gradients=FP32_BYTES * counts.parameters,
        optimizer_state=FP32_BYTES * counts.parameters * optimizer_states,
        half_precision_weights=FP16_BYTES * counts.parameters_outside_fp32_blocks if autocast else 0,
        activations=round(calibration * batch_size * activations),
        transients=round(calibration * batch_size * transients),
        scan_buffers=scan_buffer_bytes(device_type), batch_data=batch_size * counts.batch_data,
        reserve=CUDA_RESERVE_BYTES if cuda else 0)


def largest_batch_size(counts: StepCounts, budget_bytes: float, device_type: str, optimizer_states: int = 2,
                       autocast: bool | None = None) -> int:
    """The largest batch size whose estimate is at most ``budget_bytes`` (0 when batch 1 does not fit)."""
    def total(batch: int) -> int:
        return estimate_from_counts(counts, batch, device_type, optimizer_states, autocast).total

    one, two = total(1), total(2)
    per_sample, fixed = two - one, 2 * one - two
    batch = int((budget_bytes - fixed) // per_sample) if budget_bytes >= one else 0
    while batch > 0 and total(batch) > budget_bytes:
        batch -= 1
    return batch


def optimizer_state_tensors(trainer_class: type) -> int:
    """State tensors per parameter of the trainer's optimizer (its ``optimizer_states`` attribute; Adam's 2 when
    it has none)."""
    return int(getattr(trainer_class, "optimizer_states", 2))


def count_configuration(trainer_class: type, plans: dict, configuration: str, in_channels: int, classes: int,
                        device_type: str) -> StepCounts:
    """:func:`count_training_step` for the network ``trainer_class`` builds for the plans' configuration (built
    on the meta device, with deep supervision, as in training)."""
    from logvmamba_nnunet.profiling.profile import build_network

    with torch.device("meta"):
        network = build_network(trainer_class, plans, configuration, in_channels, classes)
    patch = tuple(plans["configurations"][configuration]["patch_size"])
    return count_training_step(network, (in_channels, *patch), device_type)


def estimate_configuration(trainer_class: type, plans: dict, configuration: str, in_channels: int, classes: int,
                           device_type: str, batch_size: int | None = None,
                           autocast: bool | None = None) -> MemoryEstimate:
    """Peak memory of one training step of ``trainer_class`` at the plans' configuration and its batch size (or
    ``batch_size``) on ``device_type``, with or without autocast (default: on CUDA)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    counts = count_configuration(trainer_class, plans, configuration, in_channels, classes, device_type)
    batch = batch_size or PlansManager(plans).get_configuration(configuration).batch_size
    return estimate_from_counts(counts, batch, device_type, optimizer_state_tensors(trainer_class), autocast)

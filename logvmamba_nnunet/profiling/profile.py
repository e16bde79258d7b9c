"""Profile the networks that nnU-Net trainers build for one plan.

For each trainer the network is built exactly as nnU-Net builds it (the trainer's ``build_network_architecture``
with the plan's configuration), then:

- parameters: all parameters;
- FLOPs of one forward pass at the patch size (batch 1): matrix products and convolutions counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, plus the selective scans counted by
  :mod:`logvmamba_nnunet.ops.flops` (which FLOP counters miss); one multiply-add counts as 2 FLOPs;
- activation memory: bytes of the tensors autograd saves for backward during that forward (batch 1, fp32), summed
  over saved tensors, which is what training holds at the end of the forward;
- training memory: the estimated peak of one training step at the plan's batch size on a CUDA device under fp16
  autocast (:mod:`logvmamba_nnunet.profiling.memory_estimate`);
- time (optional, on a real device): median forward and forward+backward time, batch 1.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from logvmamba_nnunet.ops.flops import count_scan_flops
from logvmamba_nnunet.ops.scan_memo import observe_records


@dataclass
class ProfileRow:
    trainer: str
    parameters: int
    conv_matmul_flops: int
    scan_flops: int
    activation_bytes: int
    training_memory_bytes: int | None = None
    forward_s: float | None = None
    forward_backward_s: float | None = None

    @property
    def total_flops(self) -> int:
        return self.conv_matmul_flops + self.scan_flops


def find_trainer_class(name: str) -> type:
    """The trainer class nnU-Net's own lookup finds for ``name`` (built-in trainers and nnUNet_extTrainer)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return recursive_find_trainer_class_by_name(name)
        except RuntimeError as error:
            raise ValueError(f"nnU-Net cannot find trainer {name!r}: {error}. Check the name, and run "
                             "`logvmamba-nnunet doctor` for trainer discovery.") from None


def network_inputs_and_outputs(plans: dict, configuration: str, dataset_json: dict) -> tuple[int, int]:
    """(input channels, output channels) of the network nnU-Net builds for ``configuration``: the image channels of
    dataset.json (plus the previous stage's labels for a cascade) and one output per label, or per region for
    region-based training."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    return (determine_num_input_channels(manager, configuration, dataset_json),
            manager.get_label_manager(dataset_json).num_segmentation_heads)


def build_network(trainer: type, plans: dict, configuration: str, in_channels: int, classes: int) -> nn.Module:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    return trainer.build_network_architecture(manager, manager.get_configuration(configuration), in_channels,
                                              classes, True)


def saved_activation_bytes(network: nn.Module, x: torch.Tensor) -> int:
    """Bytes that autograd keeps for backward after ``network(x)``: the distinct storages of the tensors it saves,
    each counted once however many operations save it or views of it, parameters excluded (they exist anyway), and
    the selective scans' results that recomputing blocks keep beside them (``ops/scan_memo.py``).

    Works on any device, the meta device included (storages are told apart by their C++ object, not by their
    address, which is 0 on meta); the saved tensors stay referenced until the count is done, so no storage of
    the count is freed and its object reused meanwhile.
    """
    parameter_storages = {p.untyped_storage()._cdata for p in network.parameters()}
    storages: dict[int, int] = {}
    kept: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameter_storages:
            storages[storage._cdata] = storage.nbytes()
            kept.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), observe_records(pack):
        network(x)
    return sum(storages.values())


def count_flops_and_memory(network: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(conv/matmul FLOPs, scan FLOPs, saved-activation bytes as :func:`saved_activation_bytes` counts them) of one
    training-mode forward pass, on the meta device."""
    network = network.to("meta")
    x = torch.zeros(input_shape, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as flop_counter, count_scan_flops() as scan_counter:
        saved = saved_activation_bytes(network, x)
    return flop_counter.get_total_flops(), scan_counter.flops, saved


def time_network(network: nn.Module, input_shape: tuple[int, ...], device: str, repeats: int) -> tuple[float, float]:
    """Median forward and forward+backward seconds (batch as in ``input_shape``)."""
    network = network.to(device)
    x = torch.randn(input_shape, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def run(backward: bool) -> float:
        start = time.perf_counter()
        output = network(x)
        if backward:
            sum(o.float().mean() for o in (output if isinstance(output, (list, tuple)) else [output])).backward()
        sync()
        return time.perf_counter() - start

    with torch.no_grad():
        run(False)
        forward = statistics.median(run(False) for _ in range(repeats))
    run(True)
    forward_backward = statistics.median(run(True) for _ in range(repeats))
    return forward, forward_backward


def profile_trainers(trainers: list[str], plans: dict, configuration: str, in_channels: int, classes: int,
                     timing_device: str | None = None, repeats: int = 2) -> list[ProfileRow]:
    """One :class:`ProfileRow` per trainer name, at the configuration's patch size (training memory at its batch
    size)."""
    from logvmamba_nnunet.profiling.memory_estimate import estimate_configuration

    patch = tuple(plans["configurations"][configuration]["patch_size"])
    rows = []
    for name in trainers:
        trainer = find_trainer_class(name)
        torch.manual_seed(0)
        network = build_network(trainer, plans, configuration, in_channels, classes)
        parameters = sum(p.numel() for p in network.parameters())
        timing = (None, None)
        if timing_device is not None:
            timing = time_network(network, (1, in_channels, *patch), timing_device, repeats)
        conv_matmul, scan, activations = count_flops_and_memory(network, (1, in_channels, *patch))
        training = estimate_configuration(trainer, plans, configuration, in_channels, classes, "cuda").total
        rows.append(ProfileRow(name, parameters, conv_matmul, scan, activations, training, *timing))
    return rows


def format_table(rows: list[ProfileRow], patch: tuple[int, ...], timing_device: str | None) -> str:
    header = ["trainer", "params (M)", "GFLOPs conv+matmul", "GFLOPs scan", "GFLOPs total", "activations (GiB)",
              "training step, CUDA (GB, est.)"]
    if timing_device:
        header += [f"forward (s, {timing_device})", f"fwd+bwd (s, {timing_device})"]
    lines = [f"patch {list(patch)}, batch 1 (training step: the plan's batch size)",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.trainer, f"{row.parameters / 1e6:.2f}", f"{row.conv_matmul_flops / 1e9:.1f}",
                 f"{row.scan_flops / 1e9:.2f}", f"{row.total_flops / 1e9:.1f}", f"{row.activation_bytes / 2**30:.2f}",
                 "n/a" if row.training_memory_bytes is None else f"{row.training_memory_bytes / 1e9:.1f}"]
        if timing_device:
            cells += [f"{row.forward_s:.3f}", f"{row.forward_backward_s:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

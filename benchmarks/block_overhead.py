"""What the LoG-family blocks cost on top of their convolutional backbone, at one nnU-Net plan.

For a plan (default: an ACDC-like anisotropic 3D plan, patch [10, 64, 56], strides [[1,1,1],[2,2,2],[1,2,2],[1,2,2]],
4 stages 32-256; or ``--plan 128`` for a 6-stage nnU-Net-style 128^3 plan), compares, for each 3D topology of the
LoG-VMamba U-Net (``stage``: blocks at every stage's resolution; ``pooled``: the authors' topology, blocks after a
2x max-pooling of the stem):

- (a) nnU-Net's ``PlainConvUNet``, built from the plan as nnU-Net builds it;
- (b) the backbone alone: the trainer's network with every stage kind ``none`` (no LoG-family block);
- (c) ``nnUNetTrainerLoGVMamba``'s network (its defaults: kinds, recomputation, fp32 blocks);
- (c') the same with ``recompute_blocks = False`` (every block keeps its activations for backward);
- (c'') for the pooled topology, (c) with ``recompute_full_resolution = False`` (the decoder's full-resolution tail
  keeps its activations for backward).

Per network: the training step (forward, cross-entropy over the deep-supervision outputs, backward, Adam step;
median of ``--repeats`` after one warm-up, the networks interleaved so that load changes hit all alike), the
saved activations of one forward (bytes of the distinct tensor storages autograd keeps for backward, parameters
excluded: ``logvmamba_nnunet.profiling.profile.saved_activation_bytes``), and the peak memory of the first step
(growth of the peak resident set, ``profiling/resident_memory.py``, each network in a fresh process so one
network's peak cannot hide another's). Ratios are against (a) and (b) of the same topology.

Usage:
    python benchmarks/block_overhead.py                     # ACDC-like plan, batch 2, 1 thread
    python benchmarks/block_overhead.py --plan 128 --batch 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from logvmamba_nnunet.profiling.profile import saved_activation_bytes
from logvmamba_nnunet.profiling.resident_memory import peak_growth_bytes

ACDC_LIKE = {"patch_size": [10, 64, 56], "features": [32, 64, 128, 256],
             "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
             "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 2]]}
TOPOLOGIES = ("stage", "pooled")


def plans_for(plan: str) -> dict:
    """nnU-Net plans with one configuration '3d_fullres': the ACDC-like plan, or the synthetic 128^3 plan."""
    from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans

    if plan == "128":
        return synthetic_plans([128, 128, 128], "3d_fullres")
    plans = synthetic_plans(ACDC_LIKE["patch_size"], "3d_fullres")
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    n = len(ACDC_LIKE["features"])
    arch.update(n_stages=n, features_per_stage=ACDC_LIKE["features"], kernel_sizes=ACDC_LIKE["kernel_sizes"],
                strides=ACDC_LIKE["strides"], n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
    return plans


def network_builders(plans: dict) -> dict[str, Callable[[], nn.Module]]:
    """Name -> function building that network (1 input channel, 3 classes, deep supervision on)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from logvmamba_nnunet_trainers import nnUNetTrainerLoGVMamba

    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")

    def plain() -> nn.Module:
        return get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                      configuration.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)

    def trainer_network(topology: str, backbone_only: bool, recompute: bool = True,
                        full_resolution: bool = True) -> Callable[[], nn.Module]:
        attributes = {"topology": topology, "recompute_blocks": recompute,
                      "recompute_full_resolution": full_resolution, **({"stage_kind": "none"} if backbone_only else {})}
        trainer = type("BenchmarkTrainer", (nnUNetTrainerLoGVMamba,), attributes)
        return lambda: trainer.build_network_architecture(manager, configuration, 1, 3, True)

    builders = {"(a) nnU-Net PlainConvUNet": plain}
    for topology in TOPOLOGIES:
        builders[f"(b) backbone, {topology}"] = trainer_network(topology, True)
        builders[f"(c) nnUNetTrainerLoGVMamba, {topology}"] = trainer_network(topology, False)
        builders[f"(c') recompute_blocks off, {topology}"] = trainer_network(topology, False, recompute=False)
    builders["(c'') recompute_full_resolution off, pooled"] = trainer_network("pooled", False, full_resolution=False)
    return builders


def training_step(network: nn.Module, patch: list[int], batch: int) -> Callable[[], None]:
    """A closure running one training step on fixed random data (cross-entropy on every output)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *patch)
    target = torch.randint(0, 3, (batch, 1, *patch)).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        outputs = network(x)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        loss = sum(F.cross_entropy(out, F.interpolate(target, size=out.shape[2:], mode="nearest")[:, 0].long())
                   for out in outputs)
        loss.backward()
        optimizer.step()

    return step


def peak_memory_in_fresh_process(name: str, args: argparse.Namespace) -> float:
    """GiB of peak-RSS growth during the first training step of ``name``, measured in a new process."""
    command = [sys.executable, __file__, "--peak-of", name, "--plan", args.plan, "--batch", str(args.batch),
               "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory run of {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_GiB"]


def first_step_peak(name: str, plans: dict, batch: int) -> float:
    network = network_builders(plans)[name]().train()
    step = training_step(network, plans["configurations"]["3d_fullres"]["patch_size"], batch)
    return peak_growth_bytes(step) / 2 ** 30


def measure(args: argparse.Namespace) -> list[dict]:
    plans = plans_for(args.plan)
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    builders = network_builders(plans)
    networks = {name: build().train() for name, build in builders.items()}
    steps = {name: training_step(network, patch, args.batch) for name, network in networks.items()}
    times: dict[str, list[float]] = {name: [] for name in networks}
    for step in steps.values():
        step()  # warm-up
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, network in networks.items():
        rows.append({"network": name, "parameters": sum(p.numel() for p in network.parameters()),
                     "step_s": statistics.median(times[name]),
                     "saved_GiB": saved_activation_bytes(network, torch.randn(args.batch, 1, *patch)) / 2 ** 30,
                     "peak_GiB": peak_memory_in_fresh_process(name, args)})
    return rows


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    by_name = {row["network"]: row for row in rows}
    plain = by_name["(a) nnU-Net PlainConvUNet"]
    lines = [f"plan {args.plan} (patch {plans_for(args.plan)['configurations']['3d_fullres']['patch_size']}), "
             f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats}; {platform.processor() or 'CPU'},"
             f" torch {torch.__version__}",
             "| network | parameters (M) | step (s) | step / (a) | step / (b) | saved activations (GiB) | "
             "saved / (b) | peak memory (GiB) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        topology = row["network"].rsplit(", ", 1)[-1]
        backbone = by_name.get(f"(b) backbone, {topology}")
        versus_b = (f"{row['step_s'] / backbone['step_s']:.2f}x", f"{row['saved_GiB'] / backbone['saved_GiB']:.2f}x") \
            if backbone and row is not backbone and topology in TOPOLOGIES else ("-", "-")
        lines.append(f"| {row['network']} | {row['parameters'] / 1e6:.2f} | {row['step_s']:.3f} | "
                     f"{row['step_s'] / plain['step_s']:.2f}x | {versus_b[0]} | {row['saved_GiB']:.3f} | "
                     f"{versus_b[1]} | {row['peak_GiB']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=("acdc", "128"), default="acdc")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peak_of:
        print(json.dumps({"peak_GiB": first_step_peak(args.peak_of, plans_for(args.plan), args.batch)}))
        return 0
    print(format_table(measure(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

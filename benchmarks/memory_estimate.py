"""Memory estimate of a training step (``logvmamba_nnunet/profiling/memory_estimate.py``) against its measured peak.

For each plan below the LoG-VMamba trainer's network is built as nnU-Net builds it, and one process per plan
measures, on the CPU in float32, the growth of its peak resident set (``profiling/resident_memory.py``, as
``benchmarks/train_step.py`` measures it) from before the network is built to the end of two training steps
(forward, nnU-Net's Dice + cross-entropy loss with deep supervision, backward, Adam step): weights, gradients,
optimizer state, activations and transients. A warm-up step at batch 1 comes first, so that the libraries' code
pages, which the kernel loads on first use, are not counted; freed memory is then returned to the system. The
estimate is the CPU variant (float32, no autocast) for the same plan and batch size. Plans are small so that a
step takes seconds on a CPU.

Usage:
    python benchmarks/memory_estimate.py                 # every plan, CPU, 2 threads
    python benchmarks/memory_estimate.py --plans 0 2
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Plan:
    label: str
    trainer: str
    patch: tuple[int, ...]
    spacing: tuple[float, ...]
    batch: int


PLANS = [
    Plan("3D isotropic, pooled", "nnUNetTrainerLoGVMamba", (24, 32, 32), (1.0, 1.0, 1.0), 2),
    Plan("3D isotropic, stage", "nnUNetTrainerLoGVMamba_StageTopology", (24, 32, 32), (1.0, 1.0, 1.0), 2),
    Plan("3D anisotropic, pooled", "nnUNetTrainerLoGVMamba", (8, 48, 40), (5.0, 1.0, 1.0), 2),
    Plan("3D anisotropic, stage", "nnUNetTrainerLoGVMamba_StageTopology", (8, 48, 40), (5.0, 1.0, 1.0), 2),
    Plan("2D, Swin-UMamba-dagger with LoG decoder", "nnUNetTrainerLoGVMamba", (64, 64), (1.0, 1.0), 2),
    Plan("2D, pooled U-Net", "nnUNetTrainerLoGVMambaUNet", (64, 96), (1.0, 1.0), 2),
]


def plans_for(plan: Plan) -> dict:
    """nnU-Net plans with one configuration: nnU-Net's topology rules (``get_pool_and_conv_props``) for the plan's
    patch and spacing, and its batch size."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans

    _, strides, kernels, patch, _ = get_pool_and_conv_props(plan.spacing, plan.patch, 4, 999999)
    plans = synthetic_plans([int(p) for p in patch])
    configuration = plans["configurations"]["synthetic"]
    configuration["batch_size"], configuration["spacing"] = plan.batch, list(plan.spacing)
    arch = configuration["architecture"]["arch_kwargs"]
    n_stages = len(strides)
    arch.update(n_stages=n_stages, strides=strides, kernel_sizes=kernels, n_conv_per_stage=[2] * n_stages,
                n_conv_per_stage_decoder=[2] * (n_stages - 1),
                features_per_stage=[min(32 * 2**s, 320 if len(patch) == 3 else 512) for s in range(n_stages)])
    return plans


def release_freed_memory() -> None:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim``), so that the measured step cannot
    reuse pages that an earlier run left resident."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(index: int) -> dict:
    """Estimate and measured peak (bytes) of plan ``index``, in this process, after a warm-up step (batch 1) that
    loads the libraries' code for these operations (pages faulted in on first use are not memory of the step)."""
    from torch import nn

    from logvmamba_nnunet.profiling.memory_estimate import estimate_configuration, nnunet_loss
    from logvmamba_nnunet.profiling.profile import build_network, find_trainer_class
    from logvmamba_nnunet.profiling.resident_memory import peak_growth_bytes

    plan = PLANS[index]
    plans = plans_for(plan)
    trainer = find_trainer_class(plan.trainer)
    patch = [int(p) for p in plans["configurations"]["synthetic"]["patch_size"]]
    torch.manual_seed(0)
    x = torch.randn(plan.batch, 1, *patch)
    label = torch.randint(0, 3, (plan.batch, 1, *patch)).float()

    def train(batch: int, steps: int) -> None:
        network = build_network(trainer, plans, "synthetic", 1, 3)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            outputs = network(x[:batch])
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            targets = [nn.functional.interpolate(label[:batch], size=o.shape[2:], mode="nearest") for o in outputs]
            nnunet_loss(outputs, targets).backward()
            optimizer.step()

    train(1, 1)
    gc.collect()
    release_freed_memory()
    measured = peak_growth_bytes(lambda: train(plan.batch, 2))
    estimate = estimate_configuration(trainer, plans, "synthetic", 1, 3, "cpu")
    return {"plan": index, "patch": patch, "estimate": estimate.total, "measured": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, nargs="+", choices=range(len(PLANS)), default=list(range(len(PLANS))))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only is not None:
        print(json.dumps(measure(args.only)))
        return 0
    print(f"training step on the CPU, float32, {args.threads} threads, torch {torch.__version__}; MiB = 2^20 bytes")
    print("| plan | trainer | patch | batch | estimate (MiB) | measured peak (MiB) | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    for index in args.plans:
        command = [sys.executable, __file__, "--only", str(index), "--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return result.returncode
        row = json.loads(result.stdout.strip().splitlines()[-1])
        plan = PLANS[index]
        print(f"| {plan.label} | {plan.trainer} | {row['patch']} | {plan.batch} | {row['estimate'] / 2**20:.0f} | "
              f"{row['measured'] / 2**20:.0f} | {row['estimate'] / row['measured']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step cost of nnUNetTrainerLoGVMamba's network against nnU-Net's default network at one plan.

For a synthetic 3D plan (nnU-Net-style ``arch_kwargs``: 32 -> 320 features, stride-2 stages, 2 convolutions per
stage), builds the LoG-VMamba U-Net exactly as the trainer does (``build_network_architecture``'s kwargs) and
nnU-Net's default ``PlainConvUNet`` with the same kwargs, then times forward + loss + backward + optimizer step
(median of repeats after warm-up) and reports the peak memory and the parameter count.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` during the step, over what was allocated before it (weights
and inputs excluded); on the CPU the growth of the process's peak resident set (``VmHWM``, reset before the step;
``logvmamba_nnunet/profiling/resident_memory.py``) during the first step, measured in a fresh subprocess per
network so one network's peak cannot hide the other's.
On CUDA the step runs under fp16 autocast with a gradient scaler, as nnU-Net trains.

Usage:
    python benchmarks/train_step.py                      # CPU, patch 48x64x48, batch 2
    python benchmarks/train_step.py --device cuda --patch 128 128 128
"""

from __future__ import annotations

import argparse
import json
import pydoc
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from logvmamba_nnunet.profiling.resident_memory import peak_growth_bytes

# name -> (network class path, extra keyword arguments); the first is nnU-Net's default network
NETWORKS = {
    "nnU-Net default (PlainConvUNet)": ("dynamic_network_architectures.architectures.unet.PlainConvUNet", {}),
    "U-Mamba-Enc": ("logvmamba_nnunet.networks.umamba.UMambaEncUNet", {}),
    "U-Mamba-Bot": ("logvmamba_nnunet.networks.umamba.UMambaBotUNet", {}),
    "VSS U-Net": ("logvmamba_nnunet.networks.log_vmamba_unet.LoGVMambaUNet", {"stage_kind": "vss"}),
    "L-VMamba U-Net": ("logvmamba_nnunet.networks.log_vmamba_unet.LoGVMambaUNet", {"stage_kind": "local"}),
    "G-VMamba U-Net": ("logvmamba_nnunet.networks.log_vmamba_unet.LoGVMambaUNet", {"stage_kind": "global"}),
    "LoG-VMamba U-Net": ("logvmamba_nnunet.networks.log_vmamba_unet.LoGVMambaUNet", {}),
}
DEFAULT_NETWORKS = ["nnU-Net default (PlainConvUNet)", "LoG-VMamba U-Net"]


def plan_kwargs(patch: list[int]) -> dict:
    """nnU-Net-style 3D arch_kwargs for ``patch`` (stages until the bottleneck is at most 8 voxels per axis)."""
    n_stages = 1
    while min(p // 2 ** n_stages for p in patch) >= 4 and n_stages < 6:
        n_stages += 1
    return dict(
        n_stages=n_stages, features_per_stage=[min(32 * 2 ** i, 320) for i in range(n_stages)], conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n_stages, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
        n_conv_per_stage=[2] * n_stages, n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def build(name: str, patch: list[int], in_channels: int, classes: int) -> nn.Module:
    """The network ``name`` of ``NETWORKS`` for the synthetic plan at ``patch``, as its trainer would build it."""
    class_path, extra = NETWORKS[name]
    kwargs = plan_kwargs(patch)
    if "LoGVMambaUNet" in class_path:
        kwargs["patch_size"] = patch
        if "stage_kind" in extra:
            kwargs["stage_kinds"] = [extra["stage_kind"]] * kwargs["n_stages"]
    network_class = pydoc.locate(class_path)
    return network_class(in_channels, num_classes=classes, deep_supervision=True, **kwargs)


def measure(name: str, patch: list[int], batch: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    net = build(name, patch, 1, 3).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if device == "cuda" else None
    x = torch.randn(batch, 1, *patch, device=device)
    target = torch.randint(0, 3, (batch, *patch), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            loss = nn.functional.cross_entropy(net(x)[0], target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_growth_bytes(step)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"network": name, "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
            "step_s": statistics.median(times), "peak_GiB": peak / 2 ** 30}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 64, 48])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=DEFAULT_NETWORKS,
                        help="networks to compare (default: nnU-Net's default and LoG-VMamba)")
    parser.add_argument("--only", choices=list(NETWORKS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(measure(args.only, args.patch, args.batch, args.device, args.repeats)))
        return 0
    rows = []
    for name in args.networks:
        command = [sys.executable, __file__, "--only", name, "--device", args.device, "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--patch", *map(str, args.patch)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return result.returncode
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"training step, patch {args.patch}, batch {args.batch}, {device}, torch {torch.__version__}")
    print("| network | parameters (M) | step (s, median) | peak memory (GiB) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['network']} | {row['params_M']:.2f} | {row['step_s']:.3f} | {row['peak_GiB']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``logvmamba-nnunet doctor``: check the installation and say how to fix each problem."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import os
import platform
from dataclasses import dataclass

from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV, OPT_OUT_ENV, TRAINER_PACKAGE, ext_trainer_folder

MAIN_TRAINER = "nnUNetTrainerLoGVMamba"


@dataclass
class Check:
    """One line of the report: ``ok`` False marks a problem that makes the exit code non-zero."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions() -> list[Check]:
    checks = [Check("python", True, platform.python_version())]
    torch_version = _version("torch")
    if torch_version is None:
        return checks + [Check("torch", False, "not installed",
                               "pip install torch==2.14.1 torchvision==0.29.1 (matching versions)")]
    import torch

    cuda = f"CUDA {torch.version.cuda}, device: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() \
        else "no CUDA device (CPU only)"
    checks.append(Check("torch", True, f"{torch.__version__}; {cuda}"))
    try:
        import torchvision.ops  # noqa: F401  (nnU-Net's trainer lookup imports it through timm)

        checks.append(Check("torchvision", True, torchvision.__version__))
    except Exception as error:  # a mismatched torchvision raises RuntimeError/ImportError on import
        checks.append(Check("torchvision", False, f"does not import: {error}",
                            f"install the torchvision release built for torch {torch.__version__} "
                            "(e.g. torch==2.14.1 with torchvision==0.29.1)"))
    nnunet_version = _version("nnunetv2")
    if nnunet_version is None:
        checks.append(Check("nnunetv2", False, "not installed", "pip install 'nnunetv2>=2.8.0,<2.9'"))
    else:
        major_minor = tuple(int(p) for p in nnunet_version.split(".")[:2])
        checks.append(Check("nnunetv2", major_minor == (2, 8), nnunet_version,
                            "" if major_minor == (2, 8) else "pip install 'nnunetv2>=2.8.0,<2.9'"))
    dna = _version("dynamic_network_architectures")
    checks.append(Check("dynamic-network-architectures", dna is not None, dna or "not installed",
                        "" if dna else "pip install dynamic-network-architectures"))
    return checks


def check_scan_backend() -> list[Check]:
    import torch

    from logvmamba_nnunet.ops.backends import describe_backends, resolve_backend

    checks = []
    backends = describe_backends()
    for name, (available, reason) in backends.items():
        checks.append(Check(f"scan backend {name}", True, ("available" if available else "unavailable")
                            + (f": {reason}" if reason else "")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = resolve_backend(os.environ.get("LOGVMAMBA_SCAN_BACKEND", "auto"), device)
        available, reason = backends["mamba_ssm"]
        reasons = ([] if device.type == "cuda" else ["no CUDA device"]) + ([] if available else ["it does not import"])
        why = "" if chosen == "mamba_ssm" else "; mamba-ssm's CUDA kernel is not used: " + " and ".join(reasons)
        checks.append(Check("scan backend in use", True, f"{chosen} (on {device.type}){why}"))
    except (RuntimeError, ValueError) as error:
        checks.append(Check("scan backend in use", False, str(error),
                            "unset LOGVMAMBA_SCAN_BACKEND or install what the message names"))
    return checks


def check_trainer_discovery() -> Check:
    note = f" ({OPT_OUT_ENV} is set, so automatic registration is off)" if os.environ.get(OPT_OUT_ENV) else ""
    fix = (f"export {EXT_TRAINER_ENV}=$(logvmamba-nnunet ext-path --value)  "
           "(needed when the package is installed in a way that skips its .pth file)")
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        with contextlib.redirect_stdout(io.StringIO()):
            found = recursive_find_trainer_class_by_name(MAIN_TRAINER)
    except Exception as error:
        return Check("trainer discovery", False, f"nnU-Net's lookup of {MAIN_TRAINER} failed: {error}{note}", fix)
    try:
        ours = importlib.import_module(TRAINER_PACKAGE).nnUNetTrainerLoGVMamba
    except ImportError as error:
        return Check("trainer discovery", False, f"nnU-Net finds {MAIN_TRAINER}, but the package {TRAINER_PACKAGE} "
                     f"does not import ({error}): its folder {ext_trainer_folder()} is not on sys.path",
                     "pip install -e . (from a clone) or pip install logvmamba-nnunet")
    if found is not ours:
        return Check("trainer discovery", False, f"nnU-Net found a different {MAIN_TRAINER}: {found}", fix)
    return Check("trainer discovery", True,
                 f"nnU-Net finds {MAIN_TRAINER} (folder {ext_trainer_folder()} is on {EXT_TRAINER_ENV}){note}")


def check_memory_estimate(patch: tuple[int, ...] = (128, 128, 128)) -> Check:
    """The estimated training memory of the main trainer at an nnU-Net-style plan for ``patch`` (batch 2) on CUDA,
    against this machine's GPU when there is one (informational)."""
    import torch

    from logvmamba_nnunet.nnunet.memory_check import device_memory_bytes
    from logvmamba_nnunet.nnunet.planner import GB
    from logvmamba_nnunet.nnunet.synthetic_plans import synthetic_plans
    from logvmamba_nnunet.profiling.memory_estimate import estimate_configuration

    trainer = getattr(importlib.import_module(TRAINER_PACKAGE), MAIN_TRAINER)
    estimate = estimate_configuration(trainer, synthetic_plans(list(patch)), "synthetic", 1, 3, "cuda")
    size = "x".join(map(str, patch))
    detail = (f"{MAIN_TRAINER}, patch {size}, batch {estimate.batch_size}: {estimate.total / GB:.1f} GB "
              "on a CUDA device (fp16 autocast)")
    if torch.cuda.is_available():
        capacity = device_memory_bytes(torch.device("cuda", torch.cuda.current_device()))
        detail += f"; this GPU has {capacity / GB:.1f} GB"
        if estimate.total > capacity:
            detail += f": plan with `logvmamba-nnunet plan -d ID --gpu-memory {int(capacity // GB)}`"
    return Check("memory estimate", True, detail)


def check_nnunet_paths() -> list[Check]:
    checks = []
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(variable)
        checks.append(Check(variable, True, value if value else "not set (needed for planning/training: "
                                                                f"export {variable}=/path/to/folder)"))
    return checks


def collect_checks() -> list[Check]:
    checks = check_versions()
    if any(not c.ok for c in checks if c.name in ("torch", "nnunetv2")):
        return checks
    checks = checks + check_scan_backend() + [check_trainer_discovery()]
    if checks[-1].ok:
        checks.append(check_memory_estimate())
    return checks + check_nnunet_paths()


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check versions, scan backends and trainer discovery",
        description="Report Python/torch/CUDA/nnU-Net versions, whether mamba-ssm's CUDA kernel imports (and why "
                    "not), which scan backend will run, and whether nnU-Net can find the trainers. Exits non-zero "
                    "when something is broken, with a fix for each problem.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = collect_checks()
    width = max(len(c.name) for c in checks)
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL':>4}] {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            print(f"{'':>7}{'':<{width}}  fix: {check.fix}")
    problems = sum(not c.ok for c in checks)
    print("all checks passed" if not problems else f"{problems} problem(s) found")
    return 1 if problems else 0

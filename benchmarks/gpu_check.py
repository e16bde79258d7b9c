"""One prepared check of the selective-scan backends on a GPU: parity, speed, bandwidth, memory, network.

Prints progress lines, then one markdown table (also written to ``--out``):
- parity: every available backend (``torch``, ``triton``, ``mamba_ssm`` when it imports) against the
  float64 reference (``logvmamba_nnunet.ops.reference``, run on the CPU) on fresh random inputs, in two
  regimes (Mamba's default init; large steps where delta * A reaches -50 and beyond, grouped B/C):
  relative L2 error of y and the largest relative L2 error over the gradients of u, delta, A, B, C, D, z
  and delta_bias; tolerances 1e-5 (output) and 1e-4 (gradients);
- timing: forward and forward+backward through the public ``selective_scan(..., backend=...)`` with D,
  z, delta_bias and softplus (as the SSM blocks call it), fp32 inputs, N = 16, B/C of shape (B, N, L);
  median (and min) of repeated runs timed with CUDA events after one warm-up run (which also compiles
  the Triton kernels and gives the peak memory); the number of repeats fits a per-case time budget;
- bandwidth: bytes moved by an ideal fused kernel / median time, against the device's copy bandwidth
  (a large device-to-device ``copy_``, counting bytes read plus written). With E = B*D*L and
  F = B*N*L, fp32: forward reads u, delta, z (3E) and B, C (2F) and writes y (E): 4 * (4E + 2F) bytes;
  the backward reads u, delta, z, dy (4E) and B, C (2F) and writes du, ddelta, dz (3E) and dB, dC (2F):
  4 * (7E + 4F) more bytes for forward+backward;
- peak memory: ``torch.cuda.max_memory_allocated`` during the warm-up call, over what was allocated
  before it (inputs excluded; outputs, gradients and temporaries included);
- network: if ``logvmamba_nnunet.networks`` provides ``build_benchmark_network_3d(patch_size)``, one
  training step (forward, loss, backward; autocast as nnU-Net does on CUDA) of that network at a 128^3
  patch, batch 2, with its peak memory; otherwise "network: skipped (not available)".

A watchdog ends the run with the partial table once ``--deadline-s`` has passed, so it cannot hang; a
failing case is reported in its row and the run goes on.

``--dry-run`` runs everything on the CPU with tiny shapes (the Triton backend through Triton's
interpreter, ``TRITON_INTERPRET=1``, when triton imports; wall-clock timing, no peak memory), network
patch 32^3 and batch 1 (``--skip-network`` leaves it out).

Usage:
    python benchmarks/gpu_check.py                    # on a CUDA machine, well under 5 minutes
    python benchmarks/gpu_check.py --out gpu_check.md
    python benchmarks/gpu_check.py --dry-run --skip-network
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

STATE_SIZE = 16
OUTPUT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4
GRADIENT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# (name, B/C groups, large steps)
PARITY_REGIMES = (("Mamba init", 1, False), ("large steps, 4 groups", 4, True))


@dataclass(frozen=True)
class Settings:
    """What one run measures. Shapes are (batch, channels, length)."""

    device: str
    parity_shape: tuple[int, int, int]
    timing_shapes: tuple[tuple[int, int, int], ...]
    copy_bytes: int
    seconds_per_case: float
    max_repeats: int
    network_patch: int
    network_batch: int
    network_repeats: int


GPU_SETTINGS = Settings(
    device="cuda", parity_shape=(2, 64, 4096),
    timing_shapes=((2, 64, 32768), (2, 64, 262144), (2, 384, 4096), (2, 384, 32768)),
    copy_bytes=1 << 30, seconds_per_case=2.0, max_repeats=20, network_patch=128, network_batch=2,
    network_repeats=3)
DRY_RUN_SETTINGS = Settings(
    device="cpu", parity_shape=(1, 4, 40), timing_shapes=((1, 8, 48),), copy_bytes=1 << 22,
    seconds_per_case=0.0, max_repeats=1, network_patch=32, network_batch=1, network_repeats=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton in its interpreter")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--skip-network", action="store_true", help="leave out the network step")
    parser.add_argument("--deadline-s", type=float, default=280.0,
                        help="print the partial table and exit after this many seconds (default 280)")
    return parser.parse_args(argv)


class Report:
    """The rows of the table, printed as markdown; safe to render from the watchdog thread."""

    COLUMNS = ("check", "backend", "shape (B, D, L)", "forward", "forward+backward", "notes")

    def __init__(self, title: list[str]) -> None:
        self.title = title
        self.rows: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def add(self, *cells: str) -> None:
        with self.lock:
            self.rows.append(tuple(cells) + ("",) * (len(self.COLUMNS) - len(cells)))

    def markdown(self) -> str:
        with self.lock:
            lines = [*self.title, "", "| " + " | ".join(self.COLUMNS) + " |",
                     "|" + "---|" * len(self.COLUMNS)]
            lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


class Progress:
    """Flushed progress lines with the elapsed time."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)


def start_watchdog(deadline_s: float, report: Report, out: str | None) -> threading.Timer:
    """After ``deadline_s`` seconds print (and write) the partial table and end the process; returns the
    timer, to be cancelled when the run finishes in time."""

    def expire() -> None:
        text = report.markdown() + f"\nINCOMPLETE: stopped by the watchdog after {deadline_s:.0f} s\n"
        print(text, flush=True)
        if out:
            with open(out, "w") as handle:
                handle.write(text)
        os._exit(3)

    timer = threading.Timer(deadline_s, expire)
    timer.daemon = True
    timer.start()
    return timer


# --------------------------------------------------------------------------------------------------
# Inputs and measurements
# --------------------------------------------------------------------------------------------------


def make_inputs(shape: tuple[int, int, int], groups: int, large_steps: bool, device, seed: int) -> dict:
    """Scan inputs as the SSM blocks pass them: D, z, delta_bias, softplus; B/C (B, N, L) or grouped."""
    batch, channels, length = shape
    generator = torch.Generator().manual_seed(seed)

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator)

    A = -torch.arange(1, STATE_SIZE + 1, dtype=torch.float32).repeat(channels, 1)
    if large_steps:  # softplus(delta + bias) about 3, so delta * A reaches -50 and beyond
        delta = normal(batch, channels, length) + 3.0
        bias = normal(channels) * 0.1
    else:  # Mamba's init: softplus(delta + bias) in [1e-3, 1e-1]
        delta = normal(batch, channels, length) * 0.1
        bias = torch.log(torch.expm1(torch.exp(torch.rand(channels, generator=generator) * 4.6 - 6.9)))
    bc_shape = (batch, STATE_SIZE, length) if groups == 1 else (batch, groups, STATE_SIZE, length)
    tensors = {"u": normal(batch, channels, length), "delta": delta, "A": A, "B": normal(*bc_shape),
               "C": normal(*bc_shape), "D": normal(channels), "z": normal(batch, channels, length),
               "delta_bias": bias}
    return {name: x.to(device) for name, x in tensors.items()}


def run_scan(backend: str, inputs: dict, with_grad: bool):
    """One call of the public scan; returns (y, leaves) with leaves requiring grad when ``with_grad``."""
    from logvmamba_nnunet.ops import selective_scan

    leaves = {name: x.detach().requires_grad_(with_grad) for name, x in inputs.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    return y, leaves


def relative_error(actual, expected) -> float:
    expected = expected.double().cpu()
    difference = actual.double().cpu() - expected
    return (difference.norm() / expected.norm().clamp_min(1e-30)).item()


def parity_row(report: Report, backend: str, shape: tuple[int, int, int], regime: str,
               reference: tuple) -> None:
    """Errors of ``backend`` against the float64 reference (computed once per regime)."""
    inputs, expected_y, expected_grads, output_weight = reference
    y, leaves = run_scan(backend, inputs, with_grad=True)
    y.backward(output_weight.to(y.device, y.dtype))
    grad_errors = {name: relative_error(leaves[name].grad, expected_grads[name]) for name in GRADIENT_NAMES}
    worst = max(grad_errors, key=grad_errors.get)
    output_error = relative_error(y.detach(), expected_y)
    finite = all(leaf.grad.isfinite().all().item() for leaf in leaves.values()) and y.isfinite().all().item()
    passed = output_error <= OUTPUT_TOLERANCE and grad_errors[worst] <= GRADIENT_TOLERANCE and finite
    report.add(f"parity ({regime})", backend, str(shape), f"y err {output_error:.1e}",
               f"max grad err {grad_errors[worst]:.1e} (d{worst})", "ok" if passed else "FAIL")


def reference_results(inputs: dict, seed: int) -> tuple:
    """Float64 reference output and gradients on the CPU, for a random output weight."""
    from logvmamba_nnunet.ops.reference import selective_scan_reference

    leaves = {name: x.detach().cpu().double().requires_grad_() for name, x in inputs.items()}
    y = selective_scan_reference(**leaves, delta_softplus=True)
    output_weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y.backward(output_weight)
    return inputs, y.detach(), {name: leaf.grad for name, leaf in leaves.items()}, output_weight


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(call: Callable[[], None], settings: Settings, warm_up: bool = True) -> tuple[float, float, int]:
    """Median and min milliseconds of ``call`` (after one warm-up call, if asked), and the number of
    timed calls.

    CUDA: CUDA events around each call; CPU: wall clock. Timed calls go on until their total passes
    ``settings.seconds_per_case`` or there are ``settings.max_repeats`` of them (at least one).
    """
    if warm_up:
        call()
        synchronize(settings.device)
    times_ms: list[float] = []
    while not times_ms or (len(times_ms) < settings.max_repeats
                           and sum(times_ms) < 1e3 * settings.seconds_per_case):
        if settings.device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            call()
            end.record()
            end.synchronize()
            times_ms.append(begin.elapsed_time(end))
        else:
            begin_s = time.perf_counter()
            call()
            times_ms.append((time.perf_counter() - begin_s) * 1e3)
    return statistics.median(times_ms), min(times_ms), len(times_ms)


def peak_extra_bytes(call: Callable[[], None], device: str) -> int | None:
    """Run ``call`` once; return the peak CUDA memory allocated during it beyond what was allocated
    before it (None on CPU)."""
    if device != "cuda":
        call()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def ideal_bytes(shape: tuple[int, int, int], mode: str) -> int:
    """Bytes an ideal fused fp32 kernel moves (see the module docstring)."""
    batch, channels, length = shape
    per_channel, per_state = batch * channels * length, batch * STATE_SIZE * length
    forward = 4 * (4 * per_channel + 2 * per_state)
    return forward if mode == "forward" else forward + 4 * (7 * per_channel + 4 * per_state)


def copy_bandwidth(settings: Settings) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written)."""
    source = torch.empty(settings.copy_bytes // 4, dtype=torch.float32, device=settings.device).uniform_()
    target = torch.empty_like(source)
    copy_settings = replace(settings, seconds_per_case=max(settings.seconds_per_case, 0.5), max_repeats=50)
    median_ms, _, _ = time_call(lambda: target.copy_(source), copy_settings)
    return 2 * settings.copy_bytes / (median_ms * 1e-3) / 1e9


def format_timing(median_ms: float, min_ms: float, repeats: int, shape, mode: str,
                  copy_gbs: float) -> str:
    gbs = ideal_bytes(shape, mode) / (median_ms * 1e-3) / 1e9
    return (f"{median_ms:.3f} ms (min {min_ms:.3f}, n={repeats}); {gbs:.3g} GB/s = "
            f"{100 * gbs / copy_gbs:.2g}% of copy")


def timing_row(report: Report, backend: str, shape: tuple[int, int, int], settings: Settings,
               copy_gbs: float, torch_times: dict) -> None:
    """Forward and forward+backward timings, bandwidth and peak memory of one backend at one shape."""
    inputs = make_inputs(shape, groups=1, large_steps=False, device=settings.device, seed=2)
    output_weight = torch.randn(shape, device=settings.device)

    def forward() -> None:
        with torch.no_grad():
            run_scan(backend, inputs, with_grad=False)

    def forward_backward() -> None:
        y, _ = run_scan(backend, inputs, with_grad=True)
        y.backward(output_weight)

    cells, peaks = [], []
    for mode, call in (("forward", forward), ("forward+backward", forward_backward)):
        peak = peak_extra_bytes(call, settings.device)  # also the warm-up (and Triton's compilation)
        peaks.append("n/a" if peak is None else f"{peak / 2**20:.0f} MiB")
        median_ms, min_ms, repeats = time_call(call, settings, warm_up=False)
        cells.append(format_timing(median_ms, min_ms, repeats, shape, mode, copy_gbs))
        if backend == "torch":
            torch_times[(shape, mode)] = median_ms
        elif (shape, mode) in torch_times:
            cells[-1] += f"; {torch_times[(shape, mode)] / median_ms:.3g}x vs torch"
    report.add("timing", backend, str(shape), *cells, f"peak extra memory fwd {peaks[0]}, fwd+bwd {peaks[1]}")


def find_network_builder() -> Callable | None:
    """``build_benchmark_network_3d`` from ``logvmamba_nnunet.networks`` (or one of its modules)."""
    package = importlib.import_module("logvmamba_nnunet.networks")
    builder = getattr(package, "build_benchmark_network_3d", None)
    for module_info in pkgutil.iter_modules(package.__path__):
        if builder is not None:
            break
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        builder = getattr(module, "build_benchmark_network_3d", None)
    return builder


def network_row(report: Report, settings: Settings, log: Progress) -> None:
    """One training step of the benchmark network: median time of a few repeats and peak memory."""
    builder = find_network_builder()
    if builder is None:
        log("network: skipped (not available)")
        report.add("network", "-", "-", "-", "-", "network: skipped (not available)")
        return
    from logvmamba_nnunet.ops.backends import resolve_backend

    patch = (settings.network_patch,) * 3
    network = builder(patch).to(settings.device)
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d))
    channels = getattr(network, "input_channels", first_conv.in_channels)
    x = torch.randn(settings.network_batch, channels, *patch, device=settings.device)

    def step() -> None:
        with torch.autocast(settings.device, enabled=settings.device == "cuda"):
            outputs = network(x)
            outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
            loss = sum(output.float().square().mean() for output in outputs)
        loss.backward()
        network.zero_grad(set_to_none=True)

    network_settings = replace(settings, seconds_per_case=60.0, max_repeats=settings.network_repeats)
    peak = peak_extra_bytes(step, settings.device)  # also the warm-up
    median_ms, min_ms, repeats = time_call(step, network_settings, warm_up=False)
    peak_text = "n/a" if peak is None else f"{peak / 2**30:.2f} GiB"
    report.add("network step (autocast)", resolve_backend("auto", settings.device),
               f"batch {settings.network_batch}, patch {settings.network_patch}^3", "-",
               f"{median_ms:.1f} ms (min {min_ms:.1f}, n={repeats})", f"peak memory {peak_text}; "
               f"{sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters ({builder.__module__})")


def guarded(report: Report, log: Progress, label: str, check: str, backend: str, shape: str,
            action: Callable[[], None]) -> None:
    """Run one measurement; a failure becomes a table row instead of ending the run."""
    log(label)
    try:
        action()
    except Exception as error:  # report any failure (OOM, compile error, ...) and go on
        message = " ".join(str(error).split())[:200]
        log(f"  FAILED: {type(error).__name__}: {message}")
        report.add(check, backend, shape, "-", "-", f"ERROR {type(error).__name__}: {message}")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def run_parity(report: Report, log: Progress, settings: Settings, backends: list[str], regime: str,
               groups: int, large_steps: bool) -> None:
    """The float64 reference once, then a parity row per backend."""
    shape = settings.parity_shape
    references: list[tuple] = []

    def compute_reference() -> None:
        inputs = make_inputs(shape, groups, large_steps, settings.device, seed=1)
        references.append(reference_results(inputs, seed=3))

    check = f"parity ({regime})"
    guarded(report, log, f"float64 reference, {regime}, {shape}", check, "reference", str(shape),
            compute_reference)
    for backend in backends if references else []:
        guarded(report, log, f"parity {backend}, {regime}", check, backend, str(shape),
                partial(parity_row, report, backend, shape, regime, references[0]))


def available_backends(device: str) -> list[str]:
    from logvmamba_nnunet.ops.backends import describe_backends

    return [name for name, (available, _) in describe_backends(device).items() if available]


def device_description(device: str) -> str:
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        return (f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
                f"{properties.multi_processor_count} SMs")
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = DRY_RUN_SETTINGS if args.dry_run else GPU_SETTINGS
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    if settings.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --dry-run", flush=True)
        return 2
    log = Progress()
    versions = f"torch {torch.__version__}"
    try:
        import triton

        versions += f", triton {triton.__version__}"
    except ImportError:
        versions += ", triton not importable"
    report = Report([f"# selective-scan GPU check{' (dry run)' if args.dry_run else ''}", "",
                     f"device: {device_description(settings.device)}; {versions}"])
    watchdog = start_watchdog(args.deadline_s, report, args.out)

    backends = available_backends(settings.device)
    log(f"device {device_description(settings.device)}; backends {backends}")
    copy_gbs = 0.0

    def measure_copy() -> None:
        nonlocal copy_gbs
        copy_gbs = copy_bandwidth(settings)
        report.add("copy bandwidth", "-", f"{settings.copy_bytes / 2**20:.0f} MiB", f"{copy_gbs:.4g} GB/s", "-",
                   "device-to-device copy_, bytes read + written")

    guarded(report, log, "copy bandwidth", "copy bandwidth", "-", "-", measure_copy)

    for regime, groups, large_steps in PARITY_REGIMES:
        run_parity(report, log, settings, backends, regime, groups, large_steps)
    torch_times: dict = {}
    for shape in settings.timing_shapes:
        for backend in backends:
            guarded(report, log, f"timing {backend} {shape}", "timing", backend, str(shape),
                    partial(timing_row, report, backend, shape, settings, copy_gbs or float("nan"), torch_times))
    if args.skip_network:
        report.add("network", "-", "-", "-", "-", "skipped (--skip-network)")
    else:
        guarded(report, log, "network step", "network step", "auto", "-",
                lambda: network_row(report, settings, log))

    watchdog.cancel()
    text = report.markdown()
    log("done")
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

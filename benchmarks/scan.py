"""Benchmark of the selective scan: the ``torch`` backend against two plain algorithms.

Algorithms (all compute the same Mamba-1 scan with D, delta_bias and softplus, as the SSM blocks do):
- ``torch``: ``selective_scan(..., backend="torch")``, the exact chunked scan with its own backward;
- ``loop``: a plain per-step loop over ``unbind``-ed tensors (autograd records every step);
- ``materialised``: mamba-ssm's ``selective_scan_ref`` algorithm, re-expressed here: it materialises
  exp(delta * A) and delta * B * u as (B, D, L, N) tensors, then steps through them (with ``unbind``; the
  original indexes ``x[:, :, i]``, whose backward is even slower).

Each case reports the best wall time over its repeats and the peak extra memory of its first call:
- CPU: every case runs in a fresh subprocess; peak extra memory is the growth of the process's resident
  set high-water mark (``VmHWM``, reset after the inputs were created; ``profiling/resident_memory.py``) over
  the resident set size after the inputs were created. It includes the outputs and, for forward+backward, the
  gradients.
- CUDA: ``torch.cuda.max_memory_allocated()`` over the memory allocated after the inputs were created.
Cases whose estimated memory exceeds ``--max-gib`` are not run and are reported as "skipped (memory)".

``--device cuda`` (or ``--parity``) first checks the ``torch`` backend against the float64 reference
(outputs and every gradient) on that device. ``--quick`` is a dry run with tiny shapes.

``--compare-ref REV`` times the ``torch`` backend against its own implementation at git revision ``REV``
instead: the file ``logvmamba_nnunet/ops/scan_torch.py`` of that revision is loaded into a temporary module
for the run only. Both run forward+backward on the same inputs in one process, old and new repeats
interleaved (alternating which goes first). The table reports the median wall time and the median CPU time
of the process (which other jobs on the machine inflate less), the speed-up, and the largest difference
between the two results.

Usage:
    python benchmarks/scan.py                      # the default table on CPU, 1 and 2 threads
    python benchmarks/scan.py --device cuda        # parity checks + the table on the GPU
    python benchmarks/scan.py --shapes 2x64x4096 --threads 1 --modes forward
    python benchmarks/scan.py --threads 2 --case-timeout 60   # on a busy machine
    python benchmarks/scan.py --quick
    python benchmarks/scan.py --compare-ref 0746f5d --shapes 2x54x35840 --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from logvmamba_nnunet.ops import scan_torch, selective_scan
from logvmamba_nnunet.ops.reference import selective_scan_reference
from logvmamba_nnunet.ops.scan_inputs import as_grouped
from logvmamba_nnunet.profiling.resident_memory import (
    peak_resident_set_bytes,
    reset_peak_resident_set,
    resident_set_bytes,
)

STATE_SIZE = 16
DEFAULT_SHAPES = ((2, 64, 4096), (2, 64, 32768), (2, 384, 4096), (2, 384, 32768))
QUICK_SHAPES = ((1, 8, 256),)
ALGORITHMS = ("torch", "loop", "materialised")
MODES = ("forward", "forward+backward")
COMPARE_SHAPES = ((2, 54, 35840),)
COMPARE_REPEATS = 5
SCAN_TORCH_PATH = "logvmamba_nnunet/ops/scan_torch.py"
PARITY_LENGTHS = (1, 7, 127, 1000, 4096)
QUICK_PARITY_LENGTHS = (1, 7, 127)
OUTPUT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4

# Rough bytes per (B, D, L, N) element an algorithm keeps alive at its peak, for the memory guard.
_BYTES_PER_STATE_ELEMENT = {
    ("torch", "forward"): 0.0,
    ("torch", "forward+backward"): 0.0,
    ("loop", "forward"): 0.0,
    ("loop", "forward+backward"): 16.0,
    ("materialised", "forward"): 12.0,
    ("materialised", "forward+backward"): 32.0,
}
# Bytes per (B, D, L) element: inputs, outputs, gradients and per-sequence temporaries.
_BYTES_PER_SEQUENCE_ELEMENT = 64.0


@dataclass
class ScanInputs:
    """Inputs of one benchmark case: u, delta (B, D, L); A (D, N); B, C (B, N, L); D, delta_bias (D,);
    grad_y (B, D, L), the upstream gradient for forward+backward."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    delta_bias: torch.Tensor
    grad_y: torch.Tensor

    def parameters(self) -> list[torch.Tensor]:
        return [self.u, self.delta, self.A, self.B, self.C, self.D, self.delta_bias]


def make_inputs(batch: int, channels: int, length: int, device: str, requires_grad: bool) -> ScanInputs:
    """Random inputs at Mamba's default initialisation (A = -(1..N), dt in [1e-3, 0.1], D = 1)."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    log_dt = torch.rand(channels, generator=generator) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
    dt = torch.exp(log_dt)
    inputs = ScanInputs(
        u=randn(batch, channels, length),
        delta=randn(batch, channels, length) * 0.5,
        A=-torch.arange(1, STATE_SIZE + 1, dtype=torch.float32).repeat(channels, 1).to(device),
        B=randn(batch, STATE_SIZE, length),
        C=randn(batch, STATE_SIZE, length),
        D=torch.ones(channels, device=device),
        delta_bias=(dt + torch.log(-torch.expm1(-dt))).to(device),
        grad_y=randn(batch, channels, length),
    )
    for tensor in inputs.parameters():
        tensor.requires_grad_(requires_grad)
    return inputs


def run_torch_backend(x: ScanInputs) -> torch.Tensor:
    return selective_scan(
        x.u, x.delta, x.A, x.B, x.C, D=x.D, delta_bias=x.delta_bias, delta_softplus=True, backend="torch"
    )


def run_loop(x: ScanInputs) -> torch.Tensor:
    """Plain per-step recurrence over ``unbind``-ed tensors."""
    delta = F.softplus(x.delta + x.delta_bias[:, None])
    state = x.u.new_zeros(x.u.shape[0], x.u.shape[1], x.A.shape[1])
    outputs = []
    steps = zip(x.u.unbind(-1), delta.unbind(-1), x.B.unbind(-1), x.C.unbind(-1), strict=True)
    for u_t, delta_t, B_t, C_t in steps:
        state = torch.exp(delta_t[..., None] * x.A) * state + (delta_t * u_t)[..., None] * B_t[:, None]
        outputs.append(torch.einsum("bdn,bn->bd", state, C_t))
    return torch.stack(outputs, dim=-1) + x.D[:, None] * x.u


def run_materialised(x: ScanInputs) -> torch.Tensor:
    """selective_scan_ref's algorithm: (B, D, L, N) decays and inputs, then a step loop over them."""
    delta = F.softplus(x.delta + x.delta_bias[:, None])
    decays = torch.exp(torch.einsum("bdl,dn->bdln", delta, x.A))
    drives = torch.einsum("bdl,bnl,bdl->bdln", delta, x.B, x.u)
    state = x.u.new_zeros(x.u.shape[0], x.u.shape[1], x.A.shape[1])
    outputs = []
    for decay_t, drive_t, C_t in zip(decays.unbind(2), drives.unbind(2), x.C.unbind(-1), strict=True):
        state = decay_t * state + drive_t
        outputs.append(torch.einsum("bdn,bn->bd", state, C_t))
    return torch.stack(outputs, dim=-1) + x.D[:, None] * x.u


RUNNERS: dict[str, Callable[[ScanInputs], torch.Tensor]] = {
    "torch": run_torch_backend,
    "loop": run_loop,
    "materialised": run_materialised,
}


def estimated_bytes(algorithm: str, mode: str, shape: tuple[int, int, int]) -> float:
    """Rough peak memory of a case, used to skip cases that would not fit."""
    batch, channels, length = shape
    sequence = batch * channels * length
    return sequence * (_BYTES_PER_SEQUENCE_ELEMENT + STATE_SIZE * _BYTES_PER_STATE_ELEMENT[(algorithm, mode)])


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _call(runner: Callable[[ScanInputs], torch.Tensor], inputs: ScanInputs, mode: str) -> None:
    for tensor in inputs.parameters():
        tensor.grad = None
    if mode == "forward":
        with torch.no_grad():
            runner(inputs)
    else:
        runner(inputs).backward(inputs.grad_y)


def measure_case(algorithm: str, mode: str, shape: tuple[int, int, int], device: str, repeats: int) -> dict:
    """Time one case (best of ``repeats``; a first call over 2 s is not repeated) and measure the peak
    extra memory of its first call. Returns {"seconds": float, "peak_bytes": int}.

    A call on a tiny input first initialises torch's lazy state (autograd engine, kernels) so that neither
    the time nor the memory of the case includes it.
    """
    runner = RUNNERS[algorithm]
    _call(runner, make_inputs(1, 2, 8, device=device, requires_grad=mode != "forward"), mode)
    inputs = make_inputs(*shape, device=device, requires_grad=mode != "forward")
    _synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = resident_set_bytes()
        reset_peak_resident_set()
    times, peak = [], 0
    for attempt in range(max(1, repeats)):
        start = time.perf_counter()
        _call(runner, inputs, mode)
        _synchronize(device)
        times.append(time.perf_counter() - start)
        if attempt == 0:
            peak = (torch.cuda.max_memory_allocated() if device == "cuda" else peak_resident_set_bytes()) - baseline
        if times[0] > 2.0:
            break
    return {"seconds": min(times), "peak_bytes": max(0, peak)}


def _run_case_in_subprocess(algorithm: str, mode: str, shape: tuple[int, int, int], threads: int,
                            repeats: int, timeout: float | None) -> dict:
    """CPU cases run in a fresh process so that its resident-set high-water mark belongs to the case.

    A case still running after ``timeout`` seconds is killed and reported as timed out.
    """
    case = json.dumps({"algorithm": algorithm, "mode": mode, "shape": shape, "threads": threads,
                       "repeats": repeats})
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "--case", case], capture_output=True, text=True, check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out (> {timeout:g} s)"}
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _case_main(case_json: str) -> None:
    case = json.loads(case_json)
    torch.set_num_threads(case["threads"])
    result = measure_case(case["algorithm"], case["mode"], tuple(case["shape"]), "cpu", case["repeats"])
    print(json.dumps(result))


def load_scan_at_revision(revision: str) -> ModuleType:
    """``logvmamba_nnunet/ops/scan_torch.py`` as it was at git revision ``revision``, loaded into a temporary
    module (it imports the package's other modules from the working tree)."""
    root = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        ["git", "show", f"{revision}:{SCAN_TORCH_PATH}"], cwd=root, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"git show {revision}:{SCAN_TORCH_PATH} failed: {completed.stderr.strip()}")
    name = f"_scan_torch_at_{abs(hash(revision))}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan_torch_reference.py"
        path.write_text(completed.stdout)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
    return module


def _scan_call(module: ModuleType, x: ScanInputs) -> tuple[float, float, float, list[torch.Tensor]]:
    """Forward+backward of ``module.selective_scan_torch`` on the benchmark case: wall seconds of the
    forward and of the backward, CPU seconds of the process for both, and the output and gradients."""
    for tensor in x.parameters():
        tensor.grad = None
    cpu, start = time.process_time(), time.perf_counter()
    y = module.selective_scan_torch(
        x.u, x.delta, x.A, as_grouped(x.B), as_grouped(x.C), x.D, None, x.delta_bias, True, False, None
    )
    middle = time.perf_counter()
    y.backward(x.grad_y)
    end = time.perf_counter()
    return middle - start, end - middle, time.process_time() - cpu, [y.detach(), *(t.grad for t in x.parameters())]


def compare_with_revision(revision: str, shapes, threads: int, repeats: int) -> list[dict]:
    """Time the torch backend's scan against its implementation at ``revision`` (see the module docstring) and
    print a markdown table; returns one row per shape with the median seconds of both."""
    torch.set_num_threads(threads)
    implementations = {f"at {revision}": load_scan_at_revision(revision), "working tree": scan_torch}
    print(f"torch {torch.__version__}, cpu ({os.cpu_count()} logical CPUs), {threads} thread(s), "
          f"{repeats} interleaved repeats, medians")
    print("| (B, D, L) | implementation | forward (s) | backward (s) | forward+backward (s) | CPU time (s) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        inputs = make_inputs(*shape, device="cpu", requires_grad=True)
        results, timings = {}, {name: [] for name in implementations}
        for name, module in implementations.items():  # warm-up call, also kept for the comparison
            results[name] = _scan_call(module, inputs)[3]
        for repeat in range(repeats):  # old first in even repeats, new first in odd ones
            order = list(implementations.items())
            for name, module in order if repeat % 2 == 0 else order[::-1]:
                timings[name].append(_scan_call(module, inputs)[:3])
        medians = {}
        for name, times in timings.items():
            forward, backward, cpu = (statistics.median(t[i] for t in times) for i in range(3))
            total = statistics.median(t[0] + t[1] for t in times)
            medians[name] = {"forward": forward, "backward": backward, "total": total, "cpu": cpu}
            print(f"| {shape} | {name} | {forward:.3f} | {backward:.3f} | {total:.3f} | {cpu:.3f} |")
        old, new = medians[f"at {revision}"], medians["working tree"]
        difference = max(
            _relative_error(a, b.double()) for a, b in zip(results["working tree"], results[f"at {revision}"],
                                                         strict=True)
        )
        print(f"| {shape} | speed-up | {old['forward'] / new['forward']:.2f}x | "
              f"{old['backward'] / new['backward']:.2f}x | {old['total'] / new['total']:.2f}x | "
              f"{old['cpu'] / new['cpu']:.2f}x |")
        print(f"largest relative difference between the two (output and gradients): {difference:.1e}", flush=True)
        rows.append({"shape": shape, "old": old, "new": new, "difference": difference})
    return rows


def _relative_error(value: torch.Tensor | None, reference: torch.Tensor) -> float:
    if value is None:
        return math.inf
    scale = reference.norm().item()
    error = (value.double() - reference).norm().item()
    return error / scale if scale > 0 else error


def parity_checks(device: str, lengths: tuple[int, ...]) -> bool:
    """Compare the torch backend with the float64 reference on ``device``; print a table, return success.

    Two regimes: Mamba's default initialisation, and large steps where delta * A reaches about -50.
    Every case uses grouped B/C, D, z, delta_bias and softplus and checks the last state too.
    """
    print(f"Parity of the torch backend against the float64 reference on {device} "
          f"(tolerances: output {OUTPUT_TOLERANCE:g}, gradients {GRADIENT_TOLERANCE:g})")
    print("| L | regime | output | last state | worst gradient | ok |")
    print("|---|---|---|---|---|---|")
    all_ok = True
    generator = torch.Generator().manual_seed(1)
    for length in lengths:
        for regime in ("default", "large steps"):
            batch, channels, groups, state = 2, 4, 2, STATE_SIZE
            scale = 3.0 if regime == "large steps" else 0.5
            A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)
            tensors = {
                "u": torch.randn(batch, channels, length, generator=generator),
                "delta": torch.randn(batch, channels, length, generator=generator) * scale,
                "A": A * (1.0 + torch.rand(channels, state, generator=generator)),
                "B": torch.randn(batch, groups, state, length, generator=generator),
                "C": torch.randn(batch, groups, state, length, generator=generator),
                "D": torch.randn(channels, generator=generator),
                "z": torch.randn(batch, channels, length, generator=generator),
                "delta_bias": torch.randn(channels, generator=generator) * 0.5,
            }
            grad_y = torch.randn(batch, channels, length, generator=generator).to(device)
            grad_last = torch.randn(batch, channels, state, generator=generator).to(device)
            ours = {k: v.to(device).requires_grad_(True) for k, v in tensors.items()}
            ref = {k: v.detach().to(device, torch.float64).requires_grad_(True) for k, v in tensors.items()}
            y, last = selective_scan(**ours, delta_softplus=True, return_last_state=True, backend="torch")
            ((y * grad_y).sum() + (last * grad_last).sum()).backward()
            y_ref, last_ref = selective_scan_reference(**ref, delta_softplus=True, return_last_state=True)
            ((y_ref * grad_y.double()).sum() + (last_ref * grad_last.double()).sum()).backward()
            output_error = _relative_error(y, y_ref)
            last_error = _relative_error(last, last_ref)
            gradient_error = max(_relative_error(ours[k].grad, ref[k].grad) for k in tensors)
            finite = all(torch.isfinite(t).all() for t in (y, last, *(v.grad for v in ours.values())))
            ok = (
                finite
                and max(output_error, last_error) <= OUTPUT_TOLERANCE
                and gradient_error <= GRADIENT_TOLERANCE
            )
            all_ok &= ok
            print(f"| {length} | {regime} | {output_error:.1e} | {last_error:.1e} | {gradient_error:.1e} | "
                  f"{'yes' if ok else 'NO'} |")
    return all_ok


def _format_result(result: dict) -> tuple[str, str]:
    if "skipped" in result:
        return result["skipped"], "-"
    if "error" in result:
        return f"error: {result['error']}", "-"
    return f"{result['seconds']:.3f}", f"{result['peak_bytes'] / 2**20:.0f}"


def benchmark_table(shapes, threads_list, algorithms, modes, device, repeats, max_bytes,
                    timeout: float | None = None) -> list[dict]:
    """Run every case and print a markdown table; returns the rows."""
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} logical CPUs)"
    print(f"torch {torch.__version__}, device {where}")
    print("| (B, D, L) | threads | mode | algorithm | time (s) | peak extra memory (MiB) | "
          "speed-up vs loop |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        for threads in threads_list:
            for mode in modes:
                results = {}
                for algorithm in algorithms:
                    if estimated_bytes(algorithm, mode, shape) > max_bytes:
                        results[algorithm] = {"skipped": "skipped (memory)"}
                    elif device == "cuda":
                        results[algorithm] = measure_case(algorithm, mode, shape, device, repeats)
                    else:
                        results[algorithm] = _run_case_in_subprocess(
                            algorithm, mode, shape, threads, repeats, timeout
                        )
                loop_seconds = results.get("loop", {}).get("seconds")
                for algorithm, result in results.items():
                    seconds = result.get("seconds")
                    speedup = f"{loop_seconds / seconds:.1f}x" if seconds and loop_seconds else "-"
                    time_text, memory_text = _format_result(result)
                    shape_text = "(" + ", ".join(map(str, shape)) + ")"
                    thread_text = str(threads) if device == "cpu" else "-"
                    print(f"| {shape_text} | {thread_text} | {mode} | {algorithm} | {time_text} | "
                          f"{memory_text} | {speedup} |", flush=True)
                    rows.append({"shape": shape, "threads": threads, "mode": mode, "algorithm": algorithm,
                                 **result})
    return rows


def _parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"shape {item!r} is not BxDxL with positive integers, e.g. 2x64x4096"
            )
        shapes.append(tuple(int(p) for p in parts))
    return tuple(shapes)


def _parse_choices(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(","))
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
        return items

    return parse


def _parse_threads(text: str) -> tuple[int, ...]:
    try:
        threads = tuple(int(item) for item in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"threads must be comma-separated integers, got {text!r}") from error
    if any(t < 1 for t in threads):
        raise argparse.ArgumentTypeError("threads must be positive")
    return threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--shapes", type=_parse_shapes, default=None,
        help="e.g. 2x64x4096,2x384x32768 (default: the table's four shapes; 2x54x35840 with --compare-ref)",
    )
    parser.add_argument("--threads", type=_parse_threads, default=(1, 2), help="CPU threads, e.g. 1,2")
    parser.add_argument("--algorithms", type=_parse_choices(ALGORITHMS), default=ALGORITHMS)
    parser.add_argument("--modes", type=_parse_choices(MODES), default=MODES)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per case (default 3, best reported; with --compare-ref 5, medians)")
    parser.add_argument("--max-gib", type=float, default=None,
                        help="skip cases estimated to need more (default 4 on CPU, 40 on CUDA)")
    parser.add_argument("--case-timeout", type=float, default=None,
                        help="CPU only: stop a case after this many seconds and report it as timed out")
    parser.add_argument("--parity", action="store_true", help="check parity with the reference first")
    parser.add_argument("--quick", action="store_true", help="dry run: tiny shapes, one thread, one repeat")
    parser.add_argument("--compare-ref", metavar="REV",
                        help="time the torch backend against its scan_torch.py at git revision REV (CPU)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _case_main(args.case)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device; none is available")
    if args.compare_ref:
        if args.device != "cpu":
            parser.error("--compare-ref runs on the CPU")
        shapes = QUICK_SHAPES if args.quick else args.shapes or COMPARE_SHAPES
        repeats = 1 if args.quick else args.repeats or COMPARE_REPEATS
        compare_with_revision(args.compare_ref, shapes, args.threads[0], repeats)
        return 0
    shapes, threads, repeats = args.shapes or DEFAULT_SHAPES, args.threads, args.repeats or 3
    lengths = PARITY_LENGTHS
    if args.quick:
        shapes, threads, repeats, lengths = QUICK_SHAPES, (1,), 1, QUICK_PARITY_LENGTHS
    if args.device == "cuda":
        threads = (1,)  # CPU threads do not apply
    max_gib = args.max_gib if args.max_gib is not None else (40.0 if args.device == "cuda" else 4.0)
    parity_ok = True
    if args.parity or args.quick or args.device == "cuda":
        parity_ok = parity_checks(args.device, lengths)
        print()
    benchmark_table(shapes, threads, args.algorithms, args.modes, args.device, repeats, max_gib * 2**30,
                    args.case_timeout)
    return 0 if parity_ok else 1


if __name__ == "__main__":
    sys.exit(main())

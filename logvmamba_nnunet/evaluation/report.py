"""Summaries of an :class:`~logvmamba_nnunet.evaluation.evaluate.Evaluation`: mean +- standard error tables,
CSV and JSON files.

Summary rows:

- one per label/region: mean +- standard error over cases, every case counted with the empty-mask conventions;
  ``hd95_penalized`` counts the cases whose HD95 is the penalty (exactly one mask empty).
- ``average``: per case the mean over all labels/regions, then mean +- standard error over cases (for
  BraTS/ACDC this equals the paper's "Avg" column: the mean of the per-class means).
- ``average (present)``: per case the mean over the labels/regions present in the reference or the prediction
  (both-empty ones skipped, as in U-Mamba's 2D evaluation scripts), then over cases with at least one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from logvmamba_nnunet.data.safe_output import staged_files
from logvmamba_nnunet.evaluation.evaluate import Evaluation

METRICS = ("dice", "iou", "hd95", "nsd")
INSTANCE_METRICS = ("f1", "iou", "precision", "recall")
PERCENT_METRICS = {"dice", "iou", "nsd", "f1", "precision", "recall"}
CONVENTIONS = {
    "both_empty": "Dice 1, IoU 1, HD95 0, NSD 1",
    "one_empty": "Dice 0, IoU 0, NSD 0, HD95 = penalty (flagged hd95_penalized)",
    "instances_both_empty": "precision, recall, F1, IoU 1",
    "instances_one_empty": "precision, recall, F1, IoU 0",
}


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)``; (nan, nan) for no value, SE nan for one value."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    if array.size == 1:
        return float(array[0]), math.nan
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    mean, se = mean_and_standard_error(values)
    return {"mean": mean, "se": se, "n": len(values)}


def summarize(evaluation: Evaluation) -> dict:
    """Per target, ``average`` and ``average (present)`` statistics (see module docstring), plus instances."""
    cases = evaluation.cases
    summary: dict = {"n_cases": len(cases), "per_target": {}}
    for target in evaluation.targets:
        results = [case.metrics[target.name] for case in cases]
        entry = {metric: _stats([getattr(r, metric) for r in results]) for metric in METRICS}
        entry["labels"] = list(target.labels)
        entry["hd95_penalized"] = sum(r.hd95_penalized for r in results)
        entry["both_empty"] = sum(r.both_empty for r in results)
        summary["per_target"][target.name] = entry
    summary["average"] = {metric: _stats([float(np.mean([getattr(r, metric) for r in case.metrics.values()]))
                                          for case in cases]) for metric in METRICS}
    present_means: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for case in cases:
        present = [r for r in case.metrics.values() if not r.both_empty]
        if present:
            for metric in METRICS:
                present_means[metric].append(float(np.mean([getattr(r, metric) for r in present])))
    summary["average_present"] = {metric: _stats(values) for metric, values in present_means.items()}
    instance_results = [case.instances for case in cases if case.instances is not None]
    if instance_results:
        summary["instances"] = {metric: _stats([getattr(r, metric) for r in instance_results])
                                for metric in INSTANCE_METRICS}
    return summary


def json_safe(value):
    """Replace NaN by None (JSON has no NaN) and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_reports(evaluation: Evaluation, out_prefix: str | Path) -> dict[str, Path]:
    """Write ``<prefix>.json`` (settings, summary, every case), ``<prefix>_per_case.csv`` (one row per case
    and target), ``<prefix>_summary.csv`` and, with instances, ``<prefix>_instances.csv``.

    The files are written under temporary names and renamed into place when all are complete, so an error leaves
    earlier reports of the same prefix as they were.

    Returns:
        The written files by kind (``json``, ``per_case``, ``summary``, ``instances``).
    """
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(evaluation)
    files = {"json": out_prefix.with_name(out_prefix.name + ".json"),
             "per_case": out_prefix.with_name(out_prefix.name + "_per_case.csv"),
             "summary": out_prefix.with_name(out_prefix.name + "_summary.csv")}
    if "instances" in summary:
        files["instances"] = out_prefix.with_name(out_prefix.name + "_instances.csv")
    with staged_files(list(files.values())) as staging:
        _write_report_files(evaluation, summary, dict(zip(files, staging, strict=True)))
    return files


def _write_report_files(evaluation: Evaluation, summary: dict, files: dict[str, Path]) -> None:
    document = {
        "settings": evaluation.settings,
        "conventions": CONVENTIONS,
        "targets": [{"name": t.name, "labels": list(t.labels)} for t in evaluation.targets],
        "summary": summary,
        "references_without_prediction": evaluation.references_without_prediction,
        "cases": [{"case": c.case, "shape": list(c.shape), "spacing": list(c.spacing),
                   "metrics": {name: m.as_dict() for name, m in c.metrics.items()},
                   "instances": None if c.instances is None else c.instances.as_dict()}
                  for c in evaluation.cases],
    }
    files["json"].write_text(json.dumps(json_safe(document), indent=2))
    per_case_columns = ["case", "target", "labels", *METRICS, "n_pred", "n_ref", "pred_empty", "ref_empty",
                        "both_empty", "hd95_penalized"]
    with files["per_case"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=per_case_columns, extrasaction="ignore")
        writer.writeheader()
        for case in evaluation.cases:
            for target in evaluation.targets:
                writer.writerow({"case": case.case, "target": target.name,
                                 "labels": ";".join(map(str, target.labels)),
                                 **case.metrics[target.name].as_dict()})
    with files["summary"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "metric", "mean", "se", "n"])
        rows = [*summary["per_target"].items(), ("average", summary["average"]),
                ("average (present)", summary["average_present"])]
        if "instances" in summary:
            rows.append(("instances", summary["instances"]))
        for name, entry in rows:
            for metric, stats in entry.items():
                if isinstance(stats, dict):
                    writer.writerow([name, metric, stats["mean"], stats["se"], stats["n"]])
    if "instances" in files:
        with files["instances"].open("w", newline="") as handle:
            columns = ["case", "tp", "fp", "fn", "n_ref", "n_pred", *INSTANCE_METRICS]
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for case in evaluation.cases:
                writer.writerow({"case": case.case, **case.instances.as_dict()})


def mean_se_cell(stats: dict, metric: str) -> str:
    """``stats`` (``mean``, ``se``) as "mean ± se" in the metric's unit (% or mm); "-" for no value."""
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    mean, se = stats["mean"] * scale, stats["se"] * scale
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(se) else f"{mean:.2f} ± {se:.2f}"


def format_table(summary: dict, nsd_tolerance_mm: float) -> str:
    """Text table: one row per target plus the averages (Dice/IoU/NSD in %, HD95 in mm, mean ± SE)."""
    headers = ["target", "n", "Dice (%)", "IoU (%)", "HD95 (mm)", f"NSD@{nsd_tolerance_mm:g} (%)",
               "HD95 penalized"]
    rows = [[name, str(entry["dice"]["n"]), *(mean_se_cell(entry[m], m) for m in METRICS),
             str(entry["hd95_penalized"])] for name, entry in summary["per_target"].items()]
    for label, key in (("average", "average"), ("average (present)", "average_present")):
        entry = summary[key]
        rows.append([label, str(entry["dice"]["n"]), *(mean_se_cell(entry[m], m) for m in METRICS), ""])
    lines = _align([headers, *rows])
    penalized = sum(entry["hd95_penalized"] for entry in summary["per_target"].values())
    if penalized:
        lines.append(f"note: {penalized} HD95 value(s) are the empty-mask penalty (exactly one of prediction "
                     "and reference empty); see the per-case CSV column hd95_penalized.")
    if "instances" in summary:
        entry = summary["instances"]
        instance_headers = ["instances", "n", "F1 = instance Dice (%)", "IoU (%)", "precision (%)",
                            "recall (%)"]
        instance_row = ["cells", str(entry["f1"]["n"]), *(mean_se_cell(entry[m], m) for m in INSTANCE_METRICS)]
        lines += ["", *_align([instance_headers, instance_row])]
    return "\n".join(lines)


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]

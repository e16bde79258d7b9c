"""Files of a :class:`~logvmamba_nnunet.evaluation.compare.Comparison`: CSV, JSON, markdown tables and the figure.

``<prefix>.csv``: one row per model, label/region and metric: mean ± standard error over folds, each fold's mean,
the test against the reference (empty in the reference's rows) and the network's cost; values as fractions (Dice,
NSD) or mm (HD95). ``<prefix>.json``: the same plus settings and every per-case value. ``<prefix>.md``: the tables
that the command prints (Dice and NSD in %). ``<prefix>.png``: :mod:`~logvmamba_nnunet.evaluation.compare_figure`.
All four are written under temporary names and renamed into place together, so a failure writes nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from logvmamba_nnunet.data.safe_output import staged_files
from logvmamba_nnunet.evaluation.compare import METRIC_NAMES, Comparison, ModelCost, PairedTest
from logvmamba_nnunet.evaluation.compare_figure import draw_dice_boxplots
from logvmamba_nnunet.evaluation.report import PERCENT_METRICS, json_safe, mean_se_cell

CONVENTIONS = {
    "summary": "per fold the mean over its validation cases, then mean and standard error (std ddof=1 / "
               "sqrt(folds)) over folds",
    "tests": "two-sided Wilcoxon signed-rank test per case (all folds pooled, each case once) of every model "
             "against the reference, Holm-corrected over all tests; median_difference = model - reference",
    "both_empty": "reference and prediction empty: Dice 1 (nnU-Net's summary.json writes NaN), HD95 0, NSD 1",
    "cost": "the trainer's network for the configuration's patch size, batch 1: trainable parameters, FLOPs of one "
            "forward pass (2 per multiply-add, selective scan included), bytes of the fp32 tensors autograd saves "
            "for backward; and the estimated peak memory of one training step at the plan's batch size on a CUDA "
            "device under fp16 autocast (docs/usage.md, 'Plans that fit the GPU')",
}


def output_files(prefix: str | Path) -> dict[str, Path]:
    """The files a comparison writes for ``prefix``, by kind."""
    prefix = Path(prefix)
    return {kind: prefix.with_name(f"{prefix.name}.{kind}") for kind in ("csv", "json", "md", "png")}


def write_comparison(comparison: Comparison, prefix: str | Path) -> dict[str, Path]:
    """Write the four files (module docstring) all together or none; returns them by kind."""
    files = output_files(prefix)
    files["csv"].parent.mkdir(parents=True, exist_ok=True)
    with staged_files(list(files.values())) as staging:
        staged = dict(zip(files, staging, strict=True))
        _write_csv(comparison, staged["csv"])
        staged["json"].write_text(json.dumps(json_safe(_document(comparison)), indent=2))
        staged["md"].write_text(format_markdown(comparison) + "\n")
        draw_dice_boxplots(comparison, staged["png"])
    return files


def _tests_by_key(comparison: Comparison) -> dict[tuple[str, str, str], PairedTest]:
    return {(t.model, t.target, t.metric): t for t in comparison.tests}


def _cost_fields(cost: ModelCost) -> dict:
    return {"trainable_parameters": cost.trainable_parameters,
            "forward_gflops": None if cost.forward_flops is None else cost.forward_flops / 1e9,
            "saved_activations_gib": None if cost.saved_activation_bytes is None
            else cost.saved_activation_bytes / 2**30,
            "training_memory_gb": None if cost.training_memory_bytes is None else cost.training_memory_bytes / 1e9,
            "note": cost.note}


def _write_csv(comparison: Comparison, path: Path) -> None:
    tests = _tests_by_key(comparison)
    fold_columns = [f"fold_{k}_mean" for k in comparison.folds]
    columns = ["model", "trainer", "plans", "target", "metric", "mean", "se", "n_folds", "n_cases", *fold_columns,
               "reference", "median_difference", "better", "statistic", "p_value", "p_holm",
               "trainable_parameters", "forward_gflops", "saved_activations_gib", "training_memory_gb", "note"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for model in comparison.models:
            cost = _cost_fields(comparison.costs[model.label])
            for target in comparison.targets:
                for metric in comparison.metrics:
                    mean, se = comparison.summary(model.label, target.name, metric)
                    row = {"model": model.label, "trainer": model.trainer, "plans": model.plans,
                           "target": target.name, "metric": metric, "mean": mean, "se": se,
                           "n_folds": len(comparison.folds),
                           "n_cases": len(comparison.per_case(model.label, target.name, metric)),
                           **dict(zip(fold_columns, comparison.fold_means(model.label, target.name, metric),
                                      strict=True)),
                           "reference": comparison.reference, **cost}
                    test = tests.get((model.label, target.name, metric))
                    if test is not None:
                        row.update(median_difference=test.median_difference, better=test.better,
                                   statistic=test.statistic, p_value=test.p_value, p_holm=test.p_holm)
                    writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _document(comparison: Comparison) -> dict:
    models = []
    for model in comparison.models:
        targets = {}
        for target in comparison.targets:
            targets[target.name] = {}
            for metric in comparison.metrics:
                mean, se = comparison.summary(model.label, target.name, metric)
                targets[target.name][metric] = {
                    "mean": mean, "se": se, "n_folds": len(comparison.folds),
                    "fold_means": dict(zip(map(str, comparison.folds),
                                           comparison.fold_means(model.label, target.name, metric), strict=True)),
                    "per_case": comparison.per_case(model.label, target.name, metric)}
        models.append({"label": model.label, "trainer": model.trainer, "plans": model.plans,
                       "folder": str(model.folder), "cost": _cost_fields(comparison.costs[model.label]),
                       "both_empty_cases": comparison.both_empty[model.label], "targets": targets})
    return {"dataset": comparison.dataset, "configuration": comparison.configuration,
            "folds": comparison.folds, "reference": comparison.reference, "metrics": list(comparison.metrics),
            "targets": [{"name": t.name, "labels": list(t.labels)} for t in comparison.targets],
            "settings": comparison.settings, "conventions": CONVENTIONS, "models": models,
            "tests": [vars(test) for test in comparison.tests]}


def _metric_header(comparison: Comparison, metric: str) -> str:
    if metric == "nsd":
        return f"NSD@{comparison.settings['nsd_tolerance_mm']:g}mm (%)"
    return {"dice": "Dice (%)", "hd95": "HD95 (mm)"}[metric]


def _difference(value: float, metric: str) -> str:
    return f"{value * (100.0 if metric in PERCENT_METRICS else 1.0):+.2f}"


def _number(value: float | None, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{value / scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def format_markdown(comparison: Comparison) -> str:
    """Three markdown tables: mean ± SE over folds, the paired tests, the networks' cost; notes below them."""
    folds = ", ".join(map(str, comparison.folds))
    n_cases = len(comparison.per_case(comparison.reference, comparison.targets[0].name, comparison.metrics[0]))
    source = ("Dice from nnU-Net's summary.json" if comparison.settings["source"] == "summary.json" else
              "Dice, HD95 and NSD of the validation predictions against nnU-Net's gt_segmentations")
    lines = [f"## {comparison.dataset} {comparison.configuration}: "
             f"{' vs '.join(model.label for model in comparison.models)}", "",
             f"{source}; folds {folds} ({n_cases} validation cases). Per fold the mean over its cases, then mean "
             f"± standard error over the {len(comparison.folds)} folds. Reference and prediction both empty: Dice "
             "100% (nnU-Net's summary.json writes NaN), HD95 0, NSD 100%.", ""]
    summary_rows = [[model.label, target.name,
                     *(mean_se_cell(dict(zip(("mean", "se"), comparison.summary(model.label, target.name, metric),
                                             strict=True)), metric) for metric in comparison.metrics)]
                    for target in comparison.targets for model in comparison.models]
    lines += _table(["model", "label/region", *(_metric_header(comparison, m) for m in comparison.metrics)],
                    summary_rows)
    lines += ["", f"Two-sided Wilcoxon signed-rank tests against {comparison.reference}, paired per case (all folds "
              f"pooled), Holm-corrected over the {len(comparison.tests)} tests. Median difference = model − "
              "reference, in % points (Dice, NSD) or mm (HD95).", ""]
    lines += _table(["model", "label/region", "metric", "cases", "median difference", "better", "p", "p (Holm)"],
                    [[t.model, t.target, METRIC_NAMES[t.metric], str(t.n_cases),
                      _difference(t.median_difference, t.metric), t.better, f"{t.p_value:.3g}", f"{t.p_holm:.3g}"]
                     for t in comparison.tests])
    lines += ["", f"Networks at the {comparison.configuration} patch size, batch 1: FLOPs of one forward pass "
              "(selective scan included) and the fp32 activations autograd saves for backward; training memory: "
              "the estimated peak of one training step at the plan's batch size on a CUDA device under fp16 "
              "autocast.", ""]
    cost_rows = []
    for model in comparison.models:
        cost = comparison.costs[model.label]
        cost_rows.append([model.label, model.plans, _number(cost.trainable_parameters, 1e6, 2),
                          _number(cost.forward_flops, 1e9, 1), _number(cost.saved_activation_bytes, 2**30, 2),
                          _number(cost.training_memory_bytes, 1e9, 1)])
    lines += _table(["model", "plans", "trainable parameters (M)", "GFLOPs (forward, batch 1)",
                     "saved activations (GiB, batch 1)", "training memory (GB, estimated)"], cost_rows)
    notes = [f"- {label}: {cost.note}" for label, cost in comparison.costs.items() if cost.note]
    for label, counts in comparison.both_empty.items():
        empty = [f"{name} {count}" for name, count in counts.items() if count]
        if empty:
            notes.append(f"- {label}: cases with reference and prediction both empty, counted as Dice 100%: "
                         f"{', '.join(empty)}")
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines)

"""Compare trained nnU-Net models of one dataset and configuration: cross-validation metrics, paired tests per case
and the cost of each network.

The models are nnU-Net's results folders ``DatasetXXX_Name/{trainer}__{plans}__{configuration}``. A fold counts when
its ``fold_K/validation/summary.json`` exists (nnU-Net writes it after the fold's validation); every model must have
the same folds, and in each fold the same validation cases.

Values per case and label/region:

- by default Dice from ``summary.json``. nnU-Net writes NaN there when reference and prediction are both empty, and
  leaves such cases out of its own mean; here they count as Dice 1, the convention of ``logvmamba-nnunet evaluate``
  (docs/metrics.md), so that both sources agree and every case counts in every mean and test;
- with a ground-truth folder (surface metrics): Dice, HD95 and NSD of every validation prediction against nnU-Net's
  ``gt_segmentations``, all from :func:`~logvmamba_nnunet.evaluation.evaluate.evaluate_folders` and its empty-mask
  conventions.

Summary per model, label/region and metric: per fold the mean over the fold's cases, then mean ± standard error over
folds. Tests: every model against the reference model, per label/region and metric, a two-sided Wilcoxon signed-rank
test on the per-case values of all folds (each case once; a case validated in several folds counts with its mean
over them), Holm-corrected over all tests of the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from textwrap import shorten

import numpy as np

from logvmamba_nnunet.data.json_object import read_json_object
from logvmamba_nnunet.evaluation.evaluate import Target, evaluate_folders, targets_from_dataset_json
from logvmamba_nnunet.evaluation.report import mean_and_standard_error
from logvmamba_nnunet.evaluation.statistics import holm, paired_wilcoxon

FOLDS = (0, 1, 2, 3, 4)
SUMMARY_METRICS = ("dice",)
SURFACE_METRICS = ("dice", "hd95", "nsd")
HIGHER_IS_BETTER = {"dice": True, "hd95": False, "nsd": True}
METRIC_NAMES = {"dice": "Dice", "hd95": "HD95", "nsd": "NSD"}

# per case, per label/region name, per metric
CaseValues = dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class Model:
    """A trained model: a trainer with a plans identifier, named ``label`` in the reports."""

    label: str
    trainer: str
    plans: str
    folder: Path


@dataclass
class ModelCost:
    """The network's cost at the plan's patch size, batch 1, and the estimated peak memory of a training step at the
    plan's batch size on a CUDA device; None with a ``note`` when it cannot be built."""

    trainable_parameters: int | None = None
    forward_flops: int | None = None
    saved_activation_bytes: int | None = None
    training_memory_bytes: int | None = None
    note: str = ""


@dataclass
class PairedTest:
    """Wilcoxon signed-rank test of one model against the reference on one label/region and metric."""

    model: str
    target: str
    metric: str
    n_cases: int
    median_difference: float  # median over cases of model - reference
    better: str  # the model's label, the reference's label, or "neither" (median difference 0)
    statistic: float
    p_value: float
    p_holm: float = math.nan


@dataclass
class Comparison:
    """Everything a comparison report shows; ``values[model][target][metric][fold][case]``."""

    dataset: str
    configuration: str
    models: list[Model]
    reference: str
    folds: list[int]
    targets: list[Target]
    metrics: tuple[str, ...]
    values: dict[str, dict[str, dict[str, dict[int, dict[str, float]]]]]
    both_empty: dict[str, dict[str, int]]  # model -> target -> case-folds with empty reference and prediction
    costs: dict[str, ModelCost]
    tests: list[PairedTest]
    settings: dict

    def fold_means(self, model: str, target: str, metric: str) -> list[float]:
        """Per fold (in ``folds`` order) the mean over the fold's validation cases."""
        per_fold = self.values[model][target][metric]
        return [float(np.mean(list(per_fold[fold].values()))) for fold in self.folds]

    def summary(self, model: str, target: str, metric: str) -> tuple[float, float]:
        """Mean and standard error over folds of the fold means."""
        return mean_and_standard_error(self.fold_means(model, target, metric))

    def per_case(self, model: str, target: str, metric: str) -> dict[str, float]:
        """One value per case, all folds pooled; a case validated in several folds gets its mean over them."""
        pooled: dict[str, list[float]] = {}
        for fold in self.folds:
            for case, value in self.values[model][target][metric][fold].items():
                pooled.setdefault(case, []).append(value)
        return {case: float(np.mean(values)) for case, values in sorted(pooled.items())}


def _load_json(path: Path, fix: str) -> dict:
    try:
        return read_json_object(path)
    except ValueError as error:
        raise ValueError(f"{error}; {fix}") from None


def _names(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(str(name) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} ... ({len(names)} in all)"


def find_models(dataset_folder: Path, configuration: str, trainers: Sequence[str], plans: Sequence[str]
                ) -> list[Model]:
    """The results folders of ``trainers`` (with ``plans``, one per trainer), labelled by trainer name, or by
    ``trainer__plans`` when a trainer appears with several plans."""
    unique = len(set(trainers)) == len(trainers)
    models = []
    for trainer, plan in zip(trainers, plans, strict=True):
        folder = dataset_folder / f"{trainer}__{plan}__{configuration}"
        if not folder.is_dir():
            trained = sorted(p.name for p in dataset_folder.glob(f"*__*__{configuration}") if p.is_dir())
            raise ValueError(f"no results folder {folder.name} in {dataset_folder}: {trainer} was not trained with "
                             f"plans {plan} and configuration {configuration}; check -tr, -p and -c (trained "
                             f"{configuration} models there: {_names(trained) or 'none'})")
        models.append(Model(trainer if unique else f"{trainer}__{plan}", trainer, plan, folder))
    return models


def common_folds(models: Sequence[Model], dataset: str, configuration: str) -> list[int]:
    """The folds (of 0..4) with ``validation/summary.json``; ValueError naming each model's missing folds unless
    every model has the same ones."""
    present = {m.label: [k for k in FOLDS if (m.folder / f"fold_{k}" / "validation" / "summary.json").is_file()]
               for m in models}
    for model in models:
        if not present[model.label]:
            raise ValueError(f"{model.folder} has no fold with validation/summary.json (fold_0 .. fold_4); train a "
                             f"fold first (nnUNetv2_train {dataset} {configuration} 0 -tr {model.trainer} -p "
                             f"{model.plans}), or add --val when its training finished without validation")
    folds = sorted(set().union(*present.values()))
    missing = [f"{label} lacks fold {', '.join(str(k) for k in folds if k not in own)}"
               for label, own in present.items() if own != folds]
    if missing:
        raise ValueError(f"the models do not have the same folds: {'; '.join(missing)} (a fold counts when "
                         "fold_K/validation/summary.json exists); train or validate the missing folds "
                         "(nnUNetv2_train ... FOLD, with --val for a trained one), or compare models with the same "
                         "folds")
    return folds


def check_same_cases(cases: dict[str, dict[int, set[str]]], folds: Sequence[int]) -> None:
    """ValueError naming, per fold and model, the validation cases that other models have and it lacks."""
    problems = []
    for fold in folds:
        union = set().union(*(per_fold[fold] for per_fold in cases.values()))
        for label, per_fold in cases.items():
            lacking = sorted(union - per_fold[fold])
            if lacking:
                problems.append(f"fold {fold}: {label} lacks {_names(lacking)}")
    if problems:
        raise ValueError(f"the models were not validated on the same cases ({'; '.join(problems)}); all must use "
                         "the same splits_final.json: re-run those folds' validation (nnUNetv2_train ... --val) or "
                         "compare models trained on the same splits")


def _labels_of(key: str) -> tuple[int, ...]:
    """The labels of a summary.json key: '1' -> (1,), '(1, 2)' -> (1, 2)."""
    from nnunetv2.evaluation.evaluate_predictions import key_to_label_or_region

    value = key_to_label_or_region(key)
    return (value,) if isinstance(value, int) else tuple(value)


def read_summary(path: Path, targets: Sequence[Target], file_ending: str) -> tuple[CaseValues, dict[str, int]]:
    """Per case (file name without ``file_ending``) the Dice of every target in nnU-Net's ``summary.json``, with
    NaN (both masks empty) as 1; and per target the number of such cases."""
    fix = "re-run the fold's validation (nnUNetv2_train ... --val)"
    summary = _load_json(path, fix)
    entries = summary.get("metric_per_case")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path} has no 'metric_per_case' list, so it is not an nnU-Net summary.json; {fix}")
    values: CaseValues = {}
    both_empty = {target.name: 0 for target in targets}
    for entry in entries:
        try:
            name = Path(entry["reference_file"]).name
            by_labels = {_labels_of(key): metrics for key, metrics in entry["metrics"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"{path}: a metric_per_case entry lacks reference_file or metrics ({error!r}); "
                             f"{fix}") from None
        case = name[:-len(file_ending)] if name.endswith(file_ending) else name
        values[case] = {}
        for target in targets:
            if target.labels not in by_labels:
                raise ValueError(f"{path}: case {case} has no Dice for {target.name!r} (labels "
                                 f"{list(target.labels)}), which dataset.json defines; {fix}")
            dice = float(by_labels[target.labels]["Dice"])
            if math.isnan(dice):
                both_empty[target.name] += 1
                dice = 1.0
            values[case][target.name] = {"dice": dice}
    return values, both_empty


def evaluate_fold(validation: Path, gt_folder: Path, dataset_json: Path, nsd_tolerance_mm: float,
                  num_processes: int) -> tuple[CaseValues, dict[str, int]]:
    """Dice, HD95 and NSD per case and target of a fold's validation predictions against ``gt_folder``, and per
    target the number of cases whose reference and prediction are both empty."""
    evaluation = evaluate_folders(validation, gt_folder, dataset_json, nsd_tolerance_mm, None, num_processes)
    values = {case.case: {name: {metric: float(getattr(result, metric)) for metric in SURFACE_METRICS}
                          for name, result in case.metrics.items()} for case in evaluation.cases}
    both_empty = {target.name: sum(case.metrics[target.name].both_empty for case in evaluation.cases)
                  for target in evaluation.targets}
    return values, both_empty


def model_cost(model: Model, configuration: str, dataset_json: dict) -> ModelCost:
    """Trainable parameters, forward FLOPs (scan included) and saved-activation bytes (fp32) of the network the
    model's trainer builds for its plan, at the configuration's patch size with batch 1
    (:mod:`logvmamba_nnunet.profiling.profile`), and the estimated peak memory of one training step at the plan's
    batch size on a CUDA device under fp16 autocast (:mod:`logvmamba_nnunet.profiling.memory_estimate`). A trainer
    that cannot be imported, or whose network cannot be built, gives an empty cost with the reason instead of
    failing the comparison."""
    from logvmamba_nnunet.profiling.memory_estimate import estimate_configuration
    from logvmamba_nnunet.profiling.profile import (
        build_network,
        count_flops_and_memory,
        find_trainer_class,
        network_inputs_and_outputs,
    )

    try:
        plans = _load_json(model.folder / "plans.json", "nnU-Net writes it when training starts")
        trainer = find_trainer_class(model.trainer)
        in_channels, outputs = network_inputs_and_outputs(plans, configuration, dataset_json)
        network = build_network(trainer, plans, configuration, in_channels, outputs)
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        patch = tuple(plans["configurations"][configuration]["patch_size"])
        conv_matmul, scan, saved = count_flops_and_memory(network, (1, in_channels, *patch))
        training = estimate_configuration(trainer, plans, configuration, in_channels, outputs, "cuda").total
    except Exception as error:  # third-party trainer code can fail in any way; the comparison goes on without it
        return ModelCost(note=shorten(f"not profiled: {type(error).__name__}: {error}", 300, placeholder=" ..."))
    return ModelCost(trainable, conv_matmul + scan, saved, training)


def paired_tests(comparison: Comparison) -> list[PairedTest]:
    """Every model against the reference, per target and metric, Holm-corrected over all of them."""
    tests = []
    for model in comparison.models:
        if model.label == comparison.reference:
            continue
        for target in comparison.targets:
            for metric in comparison.metrics:
                values = comparison.per_case(model.label, target.name, metric)
                reference = comparison.per_case(comparison.reference, target.name, metric)
                ours, theirs = [values[case] for case in reference], list(reference.values())
                statistic, p_value = paired_wilcoxon(ours, theirs)
                median = float(np.median(np.subtract(ours, theirs)))
                improves = median > 0 if HIGHER_IS_BETTER[metric] else median < 0
                better = "neither" if median == 0 else model.label if improves else comparison.reference
                tests.append(PairedTest(model.label, target.name, metric, len(ours), median, better,
                                        statistic, p_value))
    for test, adjusted in zip(tests, holm([test.p_value for test in tests]), strict=True):
        test.p_holm = adjusted
    return tests


def compare_models(dataset: str, configuration: str, models: Sequence[Model], reference: str,
                   gt_folder: Path | None = None, nsd_tolerance_mm: float = 2.0, num_processes: int = 1
                   ) -> Comparison:
    """Read (or, with ``gt_folder``, evaluate) every model's validation folds, check that they match, and compute
    summaries, paired tests and network costs (see the module docstring)."""
    dataset_jsons = {m.label: _load_json(m.folder / "dataset.json", "nnU-Net copies it into the results folder when "
                                         "training starts; copy it from nnUNet_preprocessed") for m in models}
    targets = targets_from_dataset_json(dataset_jsons[models[0].label])
    for model in models[1:]:
        other = targets_from_dataset_json(dataset_jsons[model.label])
        if other != targets:
            raise ValueError(f"the models define different labels/regions ({models[0].label}: "
                             f"{[(t.name, list(t.labels)) for t in targets]}; {model.label}: "
                             f"{[(t.name, list(t.labels)) for t in other]}); compare models of the same dataset")
    folds = common_folds(models, dataset, configuration)
    file_ending = dataset_jsons[models[0].label].get("file_ending", "")
    loaded = {m.label: {k: read_summary(m.folder / f"fold_{k}" / "validation" / "summary.json", targets,
                                        file_ending) for k in folds} for m in models}
    check_same_cases({label: {k: set(per_fold[k][0]) for k in folds} for label, per_fold in loaded.items()}, folds)
    metrics = SUMMARY_METRICS
    if gt_folder is not None:
        metrics = SURFACE_METRICS
        for model in models:
            for fold in folds:
                validation = model.folder / f"fold_{fold}" / "validation"
                evaluated = evaluate_fold(validation, gt_folder, model.folder / "dataset.json", nsd_tolerance_mm,
                                          num_processes)
                listed = set(loaded[model.label][fold][0])
                if set(evaluated[0]) != listed:
                    raise ValueError(f"{validation}: the predictions ({len(evaluated[0])} cases) and summary.json "
                                     f"({len(listed)} cases) differ in {_names(sorted(set(evaluated[0]) ^ listed))}; "
                                     "re-run the fold's validation (nnUNetv2_train ... --val)")
                loaded[model.label][fold] = evaluated
    values = {m.label: {t.name: {metric: {k: {case: loaded[m.label][k][0][case][t.name][metric]
                                              for case in loaded[m.label][k][0]} for k in folds}
                                 for metric in metrics} for t in targets} for m in models}
    both_empty = {m.label: {t.name: sum(loaded[m.label][k][1][t.name] for k in folds) for t in targets}
                  for m in models}
    settings = {"source": "evaluate_folders" if gt_folder is not None else "summary.json",
                "ground_truth_folder": None if gt_folder is None else str(gt_folder),
                "nsd_tolerance_mm": nsd_tolerance_mm if gt_folder is not None else None,
                "hd95_empty_penalty_mm": "image diagonal" if gt_folder is not None else None}
    costs = {m.label: model_cost(m, configuration, dataset_jsons[m.label]) for m in models}
    comparison = Comparison(dataset, configuration, list(models), reference, folds, targets, metrics, values,
                            both_empty, costs, [], settings)
    comparison.tests = paired_tests(comparison)
    return comparison

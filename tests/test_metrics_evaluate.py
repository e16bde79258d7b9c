"""Folder evaluation (nnU-Net readers, labels and regions), reports and the ``evaluate`` command."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
from skimage import io

from logvmamba_nnunet.cli import evaluate as evaluate_cli
from logvmamba_nnunet.evaluation.evaluate import (
    Target,
    evaluate_folders,
    find_case_files,
    targets_from_dataset_json,
)
from logvmamba_nnunet.evaluation.instances import instances_to_semantic
from logvmamba_nnunet.evaluation.metrics import compute_binary_metrics
from logvmamba_nnunet.evaluation.report import format_table, mean_and_standard_error, summarize, write_reports

BRATS_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3],
    "numTraining": 3,
    "file_ending": ".nii.gz",
}
SPACING = (0.5, 2.0, 1.5)  # array axis order, as nnU-Net reports it


def write_nifti(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    image = SimpleITK.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing)))  # SimpleITK lists spacing x, y, z = reversed array axes
    SimpleITK.WriteImage(image, str(path))


def brats_like(et_box: tuple[slice, ...] | None) -> np.ndarray:
    """Label map in nnU-Net's BraTS numbering: 1 edema, 2 necrotic core, 3 enhancing tumor (in the core)."""
    labels = np.zeros((24, 16, 16), dtype=np.uint8)
    labels[1:23, 1:15, 1:15] = 1
    labels[3:21, 3:13, 3:13] = 2
    if et_box is not None:
        labels[et_box] = 3
    return labels


ET_REF = (slice(5, 11), slice(5, 11), slice(5, 11))
ET_SHIFTED = (slice(7, 13), slice(5, 11), slice(5, 11))  # 2 voxels of 0.5 mm along axis 0


@pytest.fixture
def brats_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three cases: ET shifted by 2 voxels; ET only in the prediction; no ET anywhere. WT and TC are exact."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    cases = {"case_a": (ET_SHIFTED, ET_REF), "case_b": (ET_REF, None), "case_c": (None, None)}
    for case, (pred_et, ref_et) in cases.items():
        write_nifti(pred / f"{case}.nii.gz", brats_like(pred_et))
        write_nifti(ref / f"{case}.nii.gz", brats_like(ref_et))
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps(BRATS_JSON))
    return pred, ref, dataset_json


def test_targets_come_from_labels_and_regions_in_file_order():
    assert targets_from_dataset_json(BRATS_JSON) == [Target("whole tumor", (1, 2, 3)),
                                                     Target("tumor core", (2, 3)),
                                                     Target("enhancing tumor", (3,))]
    plain = {"labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}}
    assert [t.labels for t in targets_from_dataset_json(plain)] == [(1,), (2,), (3,)]
    assert Target("tc", (2, 3)).mask(np.array([0, 1, 2, 3])).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="labels > 0"):
        targets_from_dataset_json({"labels": {"background": 0, "bad": [0, 1]}})
    with pytest.raises(ValueError, match="no 'labels'"):
        targets_from_dataset_json({})


def test_region_evaluation_of_brats_like_label_maps(brats_folders):
    """ET of case_a is the shifted cube of test_metrics (Dice 2/3, HD95 1.0 mm, NSD@0.5 = 100/152); case_b has
    ET only in the prediction (penalty = diagonal of 24x16x16 voxels at 0.5x2.0x1.5 mm = sqrt(144+1024+576));
    case_c has no ET at all (both empty). WT and TC are identical everywhere."""
    pred, ref, dataset_json = brats_folders
    evaluation = evaluate_folders(pred, ref, dataset_json, nsd_tolerance_mm=0.5)
    by_case = {case.case: case for case in evaluation.cases}
    assert sorted(by_case) == ["case_a", "case_b", "case_c"]
    for case in by_case.values():
        assert case.spacing == pytest.approx(SPACING)
        for region in ("whole tumor", "tumor core"):
            metrics = case.metrics[region]
            assert (metrics.dice, metrics.hd95, metrics.nsd) == (1.0, 0.0, 1.0)
    shifted = by_case["case_a"].metrics["enhancing tumor"]
    assert shifted.dice == pytest.approx(2 / 3) and shifted.iou == pytest.approx(0.5)
    assert shifted.hd95 == pytest.approx(1.0, rel=1e-6) and shifted.nsd == pytest.approx(100 / 152, rel=1e-6)
    only_pred = by_case["case_b"].metrics["enhancing tumor"]
    assert only_pred.hd95_penalized and only_pred.ref_empty and not only_pred.pred_empty
    assert only_pred.hd95 == pytest.approx(math.sqrt(1744))
    assert (only_pred.dice, only_pred.nsd) == (0.0, 0.0)
    assert by_case["case_c"].metrics["enhancing tumor"].both_empty

    summary = summarize(evaluation)
    et = summary["per_target"]["enhancing tumor"]
    dice_values = [2 / 3, 0.0, 1.0]
    mean = sum(dice_values) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in dice_values) / 2) / math.sqrt(3)
    assert et["dice"]["mean"] == pytest.approx(mean) and et["dice"]["se"] == pytest.approx(se)
    assert et["hd95"]["mean"] == pytest.approx((1.0 + math.sqrt(1744) + 0.0) / 3, rel=1e-6)
    assert (et["hd95_penalized"], et["both_empty"]) == (1, 1)
    case_averages = [(1 + 1 + 2 / 3) / 3, (1 + 1 + 0) / 3, 1.0]
    assert summary["average"]["dice"]["mean"] == pytest.approx(sum(case_averages) / 3)
    present_averages = [(1 + 1 + 2 / 3) / 3, (1 + 1 + 0) / 3, 1.0]  # case_c: WT and TC present, ET skipped
    assert summary["average_present"]["dice"]["mean"] == pytest.approx(sum(present_averages) / 3)


def test_evaluate_command_writes_csv_json_and_a_table(brats_folders, tmp_path, capsys):
    pred, ref, dataset_json = brats_folders
    parser = argparse.ArgumentParser()
    evaluate_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "results" / "brats"
    args = parser.parse_args(["evaluate", str(pred), str(ref), "-d", str(dataset_json), "--nsd-tolerance-mm",
                              "0.5", "-o", str(out), "-np", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "enhancing tumor" in printed and "±" in printed and "average (present)" in printed

    document = json.loads(out.with_name("brats.json").read_text())
    assert document["settings"]["hd95_empty_penalty_mm"] == "image diagonal"
    penalized = [c["case"] for c in document["cases"] if c["metrics"]["enhancing tumor"]["hd95_penalized"]]
    assert penalized == ["case_b"]
    with out.with_name("brats_per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9
    row = next(r for r in rows if r["case"] == "case_a" and r["target"] == "enhancing tumor")
    assert float(row["dice"]) == pytest.approx(2 / 3) and row["labels"] == "3"
    with out.with_name("brats_summary.csv").open() as handle:
        summary_rows = list(csv.DictReader(handle))
    dice_row = next(r for r in summary_rows if r["target"] == "enhancing tumor" and r["metric"] == "dice")
    assert float(dice_row["mean"]) == pytest.approx(5 / 9) and dice_row["n"] == "3"


def test_predictions_without_reference_are_refused_and_missing_ones_reported(brats_folders, tmp_path, capsys):
    pred, ref, dataset_json = brats_folders
    write_nifti(ref / "case_d.nii.gz", brats_like(ET_REF))
    evaluation = evaluate_folders(pred, ref, dataset_json)
    assert evaluation.references_without_prediction == ["case_d"]
    write_nifti(pred / "case_e.nii.gz", brats_like(ET_REF))
    with pytest.raises(ValueError, match="without a reference"):
        evaluate_folders(pred, ref, dataset_json)
    parser = argparse.ArgumentParser()
    evaluate_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(pred), str(ref), "-d", str(dataset_json), "-np", "1"])
    assert args.func(args) == 2
    assert "case_e" in capsys.readouterr().err


def test_case_files_pair_by_name_and_the_dataset_json_defaults_to_the_prediction_folder(brats_folders):
    pred, ref, dataset_json = brats_folders
    (pred / "plans.json").write_text("{}")  # nnU-Net writes these next to predictions; not cases
    pairs, missing = find_case_files(pred, ref, ".nii.gz")
    assert [(case, p.name, r.parent) for case, p, r in pairs] == [
        ("case_a", "case_a.nii.gz", ref), ("case_b", "case_b.nii.gz", ref), ("case_c", "case_c.nii.gz", ref)]
    assert missing == []
    with pytest.raises(ValueError, match="dataset.json not found"):
        evaluate_folders(pred, ref)
    (pred / "dataset.json").write_text(dataset_json.read_text())
    assert len(evaluate_folders(pred, ref).cases) == 3


def test_shape_mismatch_is_refused(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    write_nifti(pred / "a.nii.gz", np.zeros((4, 5, 6)))
    write_nifti(ref / "a.nii.gz", np.zeros((4, 5, 7)))
    with pytest.raises(ValueError, match="differs from reference shape"):
        evaluate_folders(pred, ref, {"labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"})


def test_ignore_label_counts_as_background_in_both_maps(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    reference = np.zeros((10, 10, 10), dtype=np.uint8)
    reference[2:8, 2:8, 2:8] = 1
    reference[2:8, 2:8, 5:8] = 2  # ignored: the prediction's label 1 there must not count as false positive
    prediction = np.zeros_like(reference)
    prediction[2:8, 2:8, 2:8] = 1
    write_nifti(pred / "a.nii.gz", prediction, (1.0, 1.0, 1.0))
    write_nifti(ref / "a.nii.gz", reference, (1.0, 1.0, 1.0))
    dataset = {"labels": {"background": 0, "organ": 1, "ignore": 2}, "file_ending": ".nii.gz"}
    result = evaluate_folders(pred, ref, dataset).cases[0].metrics["organ"]
    assert result.dice == 1.0 and result.n_pred == result.n_ref == 6 * 6 * 3


def test_png_predictions_are_evaluated_as_2d_images(tmp_path):
    rng = np.random.default_rng(0)
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    maps = {}
    for case in ("x", "y"):
        maps[case] = (rng.integers(0, 3, size=(20, 24)).astype(np.uint8),
                      rng.integers(0, 3, size=(20, 24)).astype(np.uint8))
        io.imsave(pred / f"{case}.png", maps[case][0], check_contrast=False)
        io.imsave(ref / f"{case}.png", maps[case][1], check_contrast=False)
    dataset = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".png"}
    evaluation = evaluate_folders(pred, ref, dataset, nsd_tolerance_mm=1.0)
    for case in evaluation.cases:
        p, r = maps[case.case]
        expected = compute_binary_metrics(p == 2, r == 2, (1.0, 1.0), nsd_tolerance_mm=1.0)
        assert case.metrics["b"] == expected


def test_instance_evaluation_of_interior_boundary_predictions(tmp_path):
    cells = np.zeros((40, 40), dtype=np.uint16)
    for index, (y, x) in enumerate([(5, 5), (5, 20), (20, 8), (22, 24)], start=1):
        cells[y:y + 8, x:x + 9] = index
    predicted_cells = cells.copy()
    predicted_cells[predicted_cells == 4] = 0  # one missed cell
    pred, ref, instances = tmp_path / "pred", tmp_path / "ref", tmp_path / "instances"
    for folder in (pred, ref, instances):
        folder.mkdir()
    io.imsave(pred / "img.png", instances_to_semantic(predicted_cells), check_contrast=False)
    io.imsave(ref / "img.png", instances_to_semantic(cells), check_contrast=False)
    io.imsave(instances / "img.tif", cells, check_contrast=False)
    dataset = {"labels": {"background": 0, "interior": 1, "boundary": 2}, "file_ending": ".png"}
    evaluation = evaluate_folders(pred, ref, dataset, instance_ref_folder=instances)
    result = evaluation.cases[0].instances
    assert (result.tp, result.fp, result.fn) == (3, 0, 1)
    assert result.f1 == pytest.approx(6 / 7)
    files = write_reports(evaluation, tmp_path / "out" / "cells")
    assert "instances" in files and "F1" in format_table(summarize(evaluation), 2.0)
    with pytest.raises(ValueError, match="'interior' and 'boundary'"):
        evaluate_folders(pred, ref, {"labels": {"background": 0, "cell": 1}, "file_ending": ".png"},
                         instance_ref_folder=instances)


def test_mean_and_standard_error():
    values = [0.2, 0.9, 0.4, 0.7]
    mean = sum(values) / 4
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / 3) / 2
    assert mean_and_standard_error(values) == pytest.approx((mean, se))
    assert mean_and_standard_error([0.5])[0] == 0.5 and math.isnan(mean_and_standard_error([0.5])[1])
    assert all(math.isnan(v) for v in mean_and_standard_error([]))


@pytest.mark.e2e
def test_worker_processes_give_the_same_results(brats_folders):
    pred, ref, dataset_json = brats_folders
    sequential = evaluate_folders(pred, ref, dataset_json, num_processes=1)
    parallel = evaluate_folders(pred, ref, dataset_json, num_processes=2)
    assert [c.metrics for c in parallel.cases] == [c.metrics for c in sequential.cases]

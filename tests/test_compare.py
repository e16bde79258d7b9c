"""``logvmamba-nnunet compare``: reading nnU-Net's results folders, SE over folds, paired tests with Holm's correction,
the written files and figure, surface metrics from tiny NIfTI files, network cost, and bad input."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK
from matplotlib import image as mpimg

from logvmamba_nnunet.evaluation import compare
from logvmamba_nnunet.evaluation.compare import ModelCost
from logvmamba_nnunet.evaluation.compare_figure import FIGURE_DPI, FIGURE_SIZE_INCHES
from logvmamba_nnunet.evaluation.statistics import holm, paired_wilcoxon
from tests import plans_factory
from tests.test_cli_misuse import run_in_process, snapshot

DATASET = "Dataset321_Compare"
CONFIG = "3d_fullres"
FOLDS = (0, 1, 2, 3, 4)
CASES_PER_FOLD = 4
LABEL_KEYS = {"organ": "1", "lesion": "2"}
FAKE_COST = ModelCost(1_500_000, 2_000_000_000, 3 * 2**30, 7_500_000_000)


@pytest.fixture
def results(tmp_path: Path, monkeypatch) -> Path:
    """$nnUNet_results (with an empty dataset folder) and the other two nnU-Net folders, in tmp_path."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    (tmp_path / "nnUNet_results" / DATASET).mkdir()
    return tmp_path / "nnUNet_results"


@pytest.fixture
def fake_cost(monkeypatch) -> None:
    """Skip building networks: every model costs FAKE_COST."""
    monkeypatch.setattr(compare, "model_cost", lambda model, configuration, dataset_json: FAKE_COST)


def case_name(fold: int, index: int) -> str:
    return f"case_{fold}{index:02d}"


def write_model(results: Path, trainer: str, dice: np.ndarray, plans: str = "nnUNetPlans",
                folds: tuple[int, ...] = FOLDS, drop_case: tuple[int, int] | None = None) -> Path:
    """A results folder whose fold_K/validation/summary.json holds ``dice[K, case, label]`` (NaN allowed), as
    nnU-Net writes it; ``drop_case`` (fold, index) leaves one case out."""
    folder = results / DATASET / f"{trainer}__{plans}__{CONFIG}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(plans_factory.DATASET_JSON))
    (folder / "plans.json").write_text(json.dumps(plans_factory.plans(resenc=plans != "nnUNetPlans")))
    for fold in folds:
        validation = folder / f"fold_{fold}" / "validation"
        validation.mkdir(parents=True)
        entries = []
        for index in range(dice.shape[1]):
            if drop_case == (fold, index):
                continue
            name = f"{case_name(fold, index)}.nii.gz"
            metrics = {key: {"Dice": float(dice[fold, index, j]), "IoU": float(dice[fold, index, j] /
                                                                               (2 - dice[fold, index, j])),
                             "FP": 1, "TP": 10, "FN": 1, "TN": 100, "n_pred": 11, "n_ref": 11}
                       for j, key in enumerate(LABEL_KEYS.values())}
            entries.append({"metrics": metrics, "prediction_file": str(validation / name),
                            "reference_file": f"/data/nnUNet_preprocessed/{DATASET}/gt_segmentations/{name}"})
        means = {key: {"Dice": float(np.nanmean(dice[fold, :, j]))} for j, key in enumerate(LABEL_KEYS.values())}
        summary = {"foreground_mean": {"Dice": float(np.mean([m["Dice"] for m in means.values()]))},
                   "mean": means, "metric_per_case": entries}
        (validation / "summary.json").write_text(json.dumps(summary, indent=1))  # NaN as nnU-Net writes it
    return folder


def random_dice(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 0.85, size=(len(FOLDS), CASES_PER_FOLD, len(LABEL_KEYS)))


def run_compare(capsys, *extra: str) -> tuple[int, str, str]:
    return run_in_process(["compare", "-d", "321", "-c", CONFIG, *extra], capsys)


def read_csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as handle:
        return {(row["model"], row["target"], row["metric"]): row for row in csv.DictReader(handle)}


def by_hand(dice: np.ndarray, label: int) -> tuple[float, float]:
    """Mean over each fold's cases, then mean and sample standard deviation / sqrt(folds), written out."""
    fold_means = [sum(dice[fold, :, label]) / dice.shape[1] for fold in range(dice.shape[0])]
    mean = sum(fold_means) / len(fold_means)
    variance = sum((m - mean) ** 2 for m in fold_means) / (len(fold_means) - 1)
    return mean, math.sqrt(variance) / math.sqrt(len(fold_means))


# statistics


def test_holm_matches_a_hand_example():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04), back in the given order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_wilcoxon_identical_values_give_p_one_and_a_clear_shift_a_small_p():
    values = np.random.default_rng(1).uniform(size=12)
    assert paired_wilcoxon(values, values) == (0.0, 1.0)
    statistic, p = paired_wilcoxon(values + 0.05, values)
    assert statistic == 0.0 and p == pytest.approx(2 / 2**12)  # exact two-sided p: all 12 differences positive


# the command on synthetic results folders


def test_better_trainer_on_every_case_is_significant_and_files_hold_the_numbers(results: Path, fake_cost, capsys):
    dice_a = random_dice(7)
    dice_b = dice_a + np.random.default_rng(8).uniform(0.02, 0.1, size=dice_a.shape)
    write_model(results, "TrainerA", dice_a)
    write_model(results, "TrainerB", dice_b)
    prefix = results.parent / "out" / "cmp"
    status, out, err = run_compare(capsys, "-tr", "TrainerA", "TrainerB", "-o", str(prefix))
    assert status == 0, err

    document = json.loads(prefix.with_suffix(".json").read_text())
    assert document["folds"] == list(FOLDS) and document["reference"] == "TrainerA"
    assert len(document["tests"]) == 2
    n_cases = len(FOLDS) * CASES_PER_FOLD
    for test in document["tests"]:
        assert test["model"] == "TrainerB" and test["better"] == "TrainerB" and test["median_difference"] > 0
        assert test["n_cases"] == n_cases
        assert test["p_value"] == pytest.approx(2 / 2**n_cases)  # exact: every difference positive
        assert test["p_holm"] == pytest.approx(2 * test["p_value"]) and test["p_holm"] < 0.05

    rows = read_csv(prefix.with_suffix(".csv"))
    for model, dice in (("TrainerA", dice_a), ("TrainerB", dice_b)):
        for j, target in enumerate(LABEL_KEYS):
            mean, se = by_hand(dice, j)
            row = rows[(model, target, "dice")]
            assert float(row["mean"]) == pytest.approx(mean) and float(row["se"]) == pytest.approx(se)
            assert [float(row[f"fold_{k}_mean"]) for k in FOLDS] == pytest.approx(dice[:, :, j].mean(axis=1))
            assert document["models"][["TrainerA", "TrainerB"].index(model)]["targets"][target]["dice"]["mean"] \
                == pytest.approx(mean)
            assert int(row["n_cases"]) == n_cases and row["trainable_parameters"] == "1500000"
            assert f"| {model} | {target} | {100 * mean:.2f} ± {100 * se:.2f} |" in out
    assert rows[("TrainerA", "organ", "dice")]["p_value"] == ""  # the reference is not tested against itself
    assert float(rows[("TrainerB", "lesion", "dice")]["p_holm"]) < 0.05

    markdown = prefix.with_suffix(".md").read_text()
    assert markdown.strip() in out
    assert "| TrainerA | nnUNetPlans | 1.50 | 2.0 | 3.00 | 7.5 |" in markdown
    assert f"figure: {prefix.with_suffix('.png')}" in out


def test_identical_trainers_give_p_one_and_equal_means(results: Path, fake_cost, capsys):
    dice = random_dice(11)
    dice[2, 1, 1] = math.nan  # lesion empty in reference and prediction: nnU-Net writes NaN, counted as Dice 1
    write_model(results, "TrainerA", dice)
    write_model(results, "TrainerB", dice.copy())
    prefix = results.parent / "identical"
    status, out, err = run_compare(capsys, "-tr", "TrainerA", "TrainerB", "-o", str(prefix))
    assert status == 0, err
    document = json.loads(prefix.with_suffix(".json").read_text())
    for test in document["tests"]:
        assert test["p_value"] == 1.0 and test["p_holm"] == 1.0
        assert test["median_difference"] == 0.0 and test["better"] == "neither"
    rows = read_csv(prefix.with_suffix(".csv"))
    counted = np.where(np.isnan(dice), 1.0, dice)
    for j, target in enumerate(LABEL_KEYS):
        a, b = rows[("TrainerA", target, "dice")], rows[("TrainerB", target, "dice")]
        assert a["mean"] == b["mean"] and a["se"] == b["se"]
        assert (float(a["mean"]), float(a["se"])) == pytest.approx(by_hand(counted, j))
    assert document["models"][0]["both_empty_cases"] == {"organ": 0, "lesion": 1}
    assert "counted as Dice 100%: lesion 1" in out


def test_default_prefix_and_figure_size(results: Path, fake_cost, capsys):
    write_model(results, "TrainerA", random_dice(3))
    write_model(results, "TrainerB", random_dice(4))
    write_model(results, "TrainerC", random_dice(5))
    status, out, err = run_compare(capsys, "-tr", "TrainerA", "TrainerB", "TrainerC", "--reference", "TrainerB")
    assert status == 0, err
    prefix = results / DATASET / f"compare_{CONFIG}_TrainerA_vs_TrainerB_vs_TrainerC"
    for suffix in (".csv", ".json", ".md", ".png"):
        assert prefix.with_name(prefix.name + suffix).is_file()
    assert json.loads(prefix.with_name(prefix.name + ".json").read_text())["reference"] == "TrainerB"
    png = prefix.with_name(prefix.name + ".png")
    assert f"figure: {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (FIGURE_SIZE_INCHES[0] * FIGURE_DPI, FIGURE_SIZE_INCHES[1] * FIGURE_DPI) == (1000, 500)
    assert mpimg.imread(png).shape[:2] == (500, 1000)
    assert not [p.name for p in png.parent.iterdir() if p.name.endswith(".partial")]


def test_a_network_that_cannot_be_built_is_reported_not_fatal(results: Path, monkeypatch, capsys):
    from logvmamba_nnunet.profiling import profile

    def missing(name: str) -> type:
        raise ValueError(f"nnU-Net cannot find trainer {name!r}")

    monkeypatch.setattr(profile, "find_trainer_class", missing)
    write_model(results, "TrainerA", random_dice(1))
    write_model(results, "TrainerB", random_dice(2))
    status, out, err = run_compare(capsys, "-tr", "TrainerA", "TrainerB", "-o", str(results.parent / "c"))
    assert status == 0, err
    assert "| TrainerB | nnUNetPlans | n/a | n/a | n/a |" in out
    assert "- TrainerB: not profiled: ValueError: nnU-Net cannot find trainer 'TrainerB'" in out


def test_network_cost_of_a_real_trainer_with_two_plans(results: Path, capsys):
    """nnU-Net's default trainer with a plain and a residual-encoder plan: the same counts as nnU-Net's own network
    builder gives for 1 input channel and 3 outputs (background, organ, lesion)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from logvmamba_nnunet.profiling.memory_estimate import estimate_configuration

    write_model(results, "nnUNetTrainer", random_dice(5))
    write_model(results, "nnUNetTrainer", random_dice(6), plans="nnUNetResEncUNetMPlans")
    status, out, err = run_compare(capsys, "-tr", "nnUNetTrainer", "nnUNetTrainer", "-p", "nnUNetPlans",
                                   "nnUNetResEncUNetMPlans", "-o", str(results.parent / "real"))
    assert status == 0, err
    models = json.loads((results.parent / "real.json").read_text())["models"]
    assert [m["label"] for m in models] == ["nnUNetTrainer__nnUNetPlans", "nnUNetTrainer__nnUNetResEncUNetMPlans"]
    for model, resenc in zip(models, (False, True), strict=True):
        arch = plans_factory.plans(resenc)["configurations"][CONFIG]["architecture"]
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                         arch["_kw_requires_import"], 1, 3, deep_supervision=True)
        assert model["cost"]["trainable_parameters"] == sum(p.numel() for p in network.parameters())
        assert model["cost"]["forward_gflops"] > 0 and model["cost"]["saved_activations_gib"] > 0
        assert model["cost"]["note"] == ""
        estimate = estimate_configuration(nnUNetTrainer, plans_factory.plans(resenc), CONFIG, 1, 3, "cuda").total
        assert model["cost"]["training_memory_gb"] == pytest.approx(estimate / 1e9)
        assert model["cost"]["training_memory_gb"] > model["cost"]["saved_activations_gib"] * 2**30 / 1e9
        assert network(torch.zeros(1, 1, 16, 32, 32))[0].shape[1] == 3
    assert models[0]["cost"]["trainable_parameters"] != models[1]["cost"]["trainable_parameters"]


# --surface-metrics on tiny NIfTI files


def write_nifti(path: Path, array: np.ndarray) -> None:
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(array.astype(np.uint8)), str(path))  # spacing 1


def segmentation(lesion_start: int) -> np.ndarray:
    """An organ box and, apart from it, a 2x2x2 lesion starting at ``lesion_start`` along the first axis."""
    array = np.zeros((6, 8, 8), np.uint8)
    array[1:5, 1:4, 1:7] = 1
    array[lesion_start:lesion_start + 2, 5:7, 5:7] = 2
    return array


def test_surface_metrics_from_validation_predictions(results: Path, fake_cost, capsys):
    """TrainerA predicts every reference exactly. TrainerB shifts the lesion by one voxel (Dice 0.5, HD95 1, NSD at
    0.5 mm 0.5: half of each surface is at distance 0, half at 1) in both cases of fold 0 and one case of fold 1."""
    gt = results.parent / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
    gt.mkdir(parents=True)
    shifted = {(0, 0), (0, 1), (1, 0)}
    placeholder = np.full((2, 2, 2), 0.3)  # summary.json Dice; with --surface-metrics Dice comes from the files
    for trainer in ("TrainerA", "TrainerB"):
        folder = write_model(results, trainer, placeholder, folds=(0, 1))
        for fold in (0, 1):
            for index in range(2):
                name = f"{case_name(fold, index)}.nii.gz"
                write_nifti(gt / name, segmentation(2))
                moved = trainer == "TrainerB" and (fold, index) in shifted
                write_nifti(folder / f"fold_{fold}" / "validation" / name, segmentation(3 if moved else 2))
    prefix = results.parent / "surface"
    status, out, err = run_compare(capsys, "-tr", "TrainerA", "TrainerB", "--surface-metrics",
                                   "--nsd-tolerance-mm", "0.5", "-np", "1", "-o", str(prefix))
    assert status == 0, err
    rows = read_csv(prefix.with_suffix(".csv"))
    # lesion, TrainerB: fold means 0.5 and 0.75 (Dice), 1 and 0.5 (HD95), 0.5 and 0.75 (NSD); SE over 2 folds
    expected = {"dice": (0.625, 0.125), "hd95": (0.75, 0.25), "nsd": (0.625, 0.125)}
    for metric, (mean, se) in expected.items():
        row = rows[("TrainerB", "lesion", metric)]
        assert (float(row["mean"]), float(row["se"])) == pytest.approx((mean, se))
        exact = rows[("TrainerA", "lesion", metric)]
        assert float(exact["mean"]) == (0.0 if metric == "hd95" else 1.0) and float(exact["se"]) == 0.0
        assert float(rows[("TrainerB", "organ", metric)]["mean"]) == (0.0 if metric == "hd95" else 1.0)
    document = json.loads(prefix.with_suffix(".json").read_text())
    assert document["settings"]["source"] == "evaluate_folders" and document["settings"]["nsd_tolerance_mm"] == 0.5
    lesion = {(t["target"], t["metric"]): t for t in document["tests"]}
    assert lesion[("lesion", "hd95")]["better"] == "TrainerA" and lesion[("lesion", "hd95")]["median_difference"] == 1
    assert lesion[("organ", "dice")]["p_value"] == 1.0
    assert len(document["tests"]) == 6  # 2 labels x 3 metrics, all in Holm's correction
    assert "NSD@0.5mm (%)" in out and "HD95 (mm)" in out


# bad input: one line, non-zero exit, nothing written


def spoil(results: Path, what: str) -> None:
    dice = random_dice(9)
    write_model(results, "TrainerA", dice)
    if what == "missing fold":
        write_model(results, "TrainerB", dice, folds=(0, 1, 2, 4))
    elif what == "mismatched cases":
        write_model(results, "TrainerB", dice, drop_case=(2, 1))
    elif what == "long names":
        write_model(results, "TrainerB", dice)
        for letter in "XY":
            write_model(results, LONG_NAME + letter, dice)
    else:
        write_model(results, "TrainerB", dice)


LONG_NAME = "nnUNetTrainer" + "Long" * 25


BAD_INPUTS = [
    ("missing-fold", "missing fold", ["-tr", "TrainerA", "TrainerB"],
     ["TrainerB lacks fold 3", "train or validate the missing folds"]),
    ("mismatched-cases", "mismatched cases", ["-tr", "TrainerA", "TrainerB"],
     [f"fold 2: TrainerB lacks {case_name(2, 1)})", "same splits_final.json"]),
    ("unknown-trainer-folder", "", ["-tr", "TrainerA", "TrainerZ"],
     [f"no results folder TrainerZ__nnUNetPlans__{CONFIG}", "check -tr, -p and -c",
      f"TrainerA__nnUNetPlans__{CONFIG}, TrainerB__nnUNetPlans__{CONFIG}"]),
    ("unknown-reference", "", ["-tr", "TrainerA", "TrainerB", "--reference", "TrainerZ"],
     ["--reference TrainerZ is not one of the compared trainers (TrainerA, TrainerB)", "pass one of them"]),
    ("plans-count", "", ["-tr", "TrainerA", "TrainerB", "-p", "x", "y", "z"],
     ["-p gives 3 plans identifiers for 2 trainers", "one per trainer"]),
    ("one-model", "", ["-tr", "TrainerA"], ["at least two models", "-tr"]),
    ("same-model-twice", "", ["-tr", "TrainerA", "TrainerA"], ["TrainerA with nnUNetPlans more than once",
                                                                "give each model once"]),
    ("default-name-too-long", "long names", ["-tr", LONG_NAME + "X", LONG_NAME + "Y"],
     ["too long for a file name", "--output"]),
    ("no-gt-segmentations", "", ["-tr", "TrainerA", "TrainerB", "--surface-metrics"],
     ["gt_segmentations does not exist", "leave out --surface-metrics"]),
]


@pytest.mark.parametrize("what, args, expected", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gives_one_line_and_writes_nothing(results: Path, fake_cost, capsys, what, args, expected):
    spoil(results, what)
    before = snapshot(results.parent)
    status, out, err = run_compare(capsys, *args)
    assert status == 2, (out, err)
    assert len(err.splitlines()) == 1 and err.startswith("logvmamba-nnunet compare: error: "), err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in out + err
    assert snapshot(results.parent) == before


def test_unknown_dataset_and_unset_results(results: Path, monkeypatch, capsys):
    status, _, err = run_in_process(["compare", "-d", "654", "-c", CONFIG, "-tr", "A", "B"], capsys)
    assert status == 2 and "unknown dataset id 654" in err and DATASET in err
    monkeypatch.delenv("nnUNet_results")
    status, _, err = run_in_process(["compare", "-d", "321", "-c", CONFIG, "-tr", "A", "B"], capsys)
    assert status == 2 and "nnUNet_results is not set" in err

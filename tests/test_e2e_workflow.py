"""nnU-Net's whole recipe with the LoG-VMamba trainer next to nnU-Net's default trainer, on CPU, with the stock
console scripts: plan 3d_fullres and 2d; 5 folds of each with ``--npz`` for both trainers;
``nnUNetv2_find_best_configuration`` over the four models; the commands it prints, run verbatim; the ensemble of
the LoG-VMamba 2d and 3d_fullres models as nnU-Net prints it when that ensemble wins; export to a zip, install
into a fresh ``nnUNet_results`` and predict identical segmentations.

The trainers are tiny variants from ``tests/ext_trainers_for_tests`` (1 epoch of 2 iterations, no test-time
mirroring, a narrow 2D VMamba), put on ``nnUNet_extTrainer`` for the subprocesses only. The printed commands are
run as printed except for two things: their placeholders (``INPUT_FOLDER``, ``OUTPUT_FOLDER``...) become folders of
the test, and ``-device cpu`` is appended to ``nnUNetv2_predict`` (its default device is CUDA). The number of
worker processes comes from nnU-Net's own environment variables (``nnUNet_def_n_proc``, ``nnUNet_npp``,
``nnUNet_nps``), set to 1 to keep the run short.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from logvmamba_nnunet.data.synthetic import make_synthetic_dataset
from logvmamba_nnunet.nnunet.discovery import EXT_TRAINER_ENV
from tests.trainer_paths import ext_trainer_value

pytestmark = pytest.mark.e2e

DATASET_ID = 613
LOG_TRAINER = "nnUNetTrainerLoGVMamba_TinyWorkflow"
DEFAULT_TRAINER = "nnUNetTrainer_TinyDefault"
TRAINERS = (LOG_TRAINER, DEFAULT_TRAINER)
CONFIGURATIONS = ("3d_fullres", "2d")
FOLDS = (0, 1, 2, 3, 4)
PLANS = "nnUNetPlans"
PLACEHOLDER = re.compile(r"(INPUT|OUTPUT)_FOLDER\w*")

# What find_best_configuration does once it has picked a winner, here for a given ensemble folder: determine the
# ensemble's postprocessing, then print (and write) nnU-Net's inference instructions for it.
ENSEMBLE_INSTRUCTIONS = """
import os, sys
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.evaluation.find_best_configuration import print_inference_instructions
from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing
from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config

information_file, ensemble, reference, instructions_file = sys.argv[1:]
determine_postprocessing(ensemble, reference, join(ensemble, 'plans.json'), join(ensemble, 'dataset.json'),
                         num_processes=1)
information = load_json(information_file)
selected = []
for member in os.path.basename(ensemble).split('___')[1:3]:
    trainer, plans, configuration = convert_identifier_to_trainer_plans_config(member)
    selected.append({'configuration': configuration, 'trainer': trainer, 'plans_identifier': plans})
information['best_model_or_ensemble'].update(postprocessing_file=join(ensemble, 'postprocessing.pkl'),
                                             some_plans_file=join(ensemble, 'plans.json'),
                                             selected_model_or_models=selected)
print_inference_instructions(information, instructions_file=instructions_file)
"""


def run(command: list[str], env: dict[str, str], log: Path) -> str:
    """Run ``command``; its output goes to ``log``; fail with the output's end if it exits non-zero."""
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    log.write_text(f"$ {shlex.join(command)}\n{result.stdout}\n{result.stderr}")
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def read(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Array (Z, Y, X), spacing, origin and direction of an image file."""
    import SimpleITK

    image = SimpleITK.ReadImage(str(path))
    return SimpleITK.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


class Workflow:
    """Folders and environment of the test's nnU-Net installation."""

    def __init__(self, root: Path):
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.env = dict(os.environ)
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (root / name).mkdir()
            self.env[name] = str(root / name)
        self.env.update({
            "nnUNet_def_n_proc": "1", "nnUNet_npp": "1", "nnUNet_nps": "1", "nnUNet_n_proc_DA": "0",
            "nnUNet_compile": "false", "OMP_NUM_THREADS": "1",
            EXT_TRAINER_ENV: ext_trainer_value(),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])})
        self.dataset = make_synthetic_dataset(root / "nnUNet_raw", DATASET_ID, num_train=5, num_test=1,
                                              size=(16, 20, 16))
        self.results = root / "nnUNet_results" / self.dataset.name
        self.commands_run = 0

    def run(self, command: list[str], env: dict[str, str] | None = None) -> str:
        self.commands_run += 1
        return run(command, env or self.env, self.logs / f"{self.commands_run:02d}_{Path(command[0]).name}.log")

    def model_folder(self, trainer: str, configuration: str) -> Path:
        return self.results / f"{trainer}__{PLANS}__{configuration}"

    def images_ts(self) -> list[Path]:
        return sorted((self.dataset / "imagesTs").glob("*_0000.nii.gz"))

    def run_instructions(self, instructions: str, output_root: Path) -> dict[str, Path]:
        """Run the command lines of nnU-Net's inference instructions in order, placeholders replaced by folders
        under ``output_root`` (``INPUT_FOLDER`` by the test images), ``-device cpu`` added to nnUNetv2_predict.
        Returns the folder of every placeholder."""
        folders = {"INPUT_FOLDER": self.dataset / "imagesTs"}
        commands = [shlex.split(line) for line in instructions.splitlines() if line.startswith("nnUNetv2_")]
        assert commands, f"no commands in the instructions:\n{instructions}"
        for command in commands:
            for token in command:
                if PLACEHOLDER.fullmatch(token):
                    folders.setdefault(token, output_root / token.lower())
            command = [str(folders.get(token, token)) for token in command]
            if command[0] == "nnUNetv2_predict":
                command += ["-device", "cpu"]
            self.run(command)
        return folders

    def assert_valid_segmentations(self, folder: Path) -> None:
        """One segmentation per test image, on the image's grid, with labels of the dataset only."""
        images = self.images_ts()
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == [
            p.name.replace("_0000.nii.gz", ".nii.gz") for p in images]
        for image_file in images:
            labels, spacing, origin, direction = read(folder / image_file.name.replace("_0000.nii.gz", ".nii.gz"))
            image, image_spacing, image_origin, image_direction = read(image_file)
            assert labels.shape == image.shape
            np.testing.assert_allclose(spacing, image_spacing)
            np.testing.assert_allclose(origin, image_origin)
            np.testing.assert_allclose(direction, image_direction)
            assert set(np.unique(labels).tolist()) <= {0, 1, 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Workflow:
    """Planned and preprocessed dataset; 5 folds x 2 configurations x 2 trainers trained with --npz, two
    trainings at a time (after a first one alone, which writes the dataset's splits file)."""
    workflow = Workflow(tmp_path_factory.mktemp("workflow"))
    # planning estimates memory with torch.set_num_threads(nnUNet_n_proc_DA), which must not be 0
    workflow.run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *CONFIGURATIONS, "-np", "1", "1",
                  "--verify_dataset_integrity"], {**workflow.env, "nnUNet_n_proc_DA": "1"})
    trainings = [["nnUNetv2_train", str(DATASET_ID), configuration, str(fold), "-tr", trainer, "-device", "cpu",
                  "--npz"] for trainer in TRAINERS for configuration in CONFIGURATIONS for fold in FOLDS]
    workflow.run(trainings[0])
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(workflow.run, trainings[1:]))
    return workflow


@pytest.fixture(scope="module")
def best(trained: Workflow) -> tuple[Workflow, str, dict]:
    """``nnUNetv2_find_best_configuration`` over both trainers and configurations: its output and its
    inference_information.json."""
    output = trained.run(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", *CONFIGURATIONS,
                          "-tr", *TRAINERS])
    return trained, output, json.loads((trained.results / "inference_information.json").read_text())


def is_log_ensemble(information: dict) -> bool:
    winners = information["best_model_or_ensemble"]["selected_model_or_models"]
    return len(winners) == 2 and all(w["trainer"] == LOG_TRAINER for w in winners)


def predictions_per_configuration(instructions: str, folders: dict[str, Path]) -> dict[str, Path]:
    """``folders`` plus, under each configuration name, the output folder of its nnUNetv2_predict line."""
    folders = dict(folders)
    for line in instructions.splitlines():
        if line.startswith("nnUNetv2_predict "):
            tokens = shlex.split(line)
            folders[tokens[tokens.index("-c") + 1]] = folders[tokens[tokens.index("-o") + 1]]
    return folders


@pytest.fixture(scope="module")
def printed_predictions(best, tmp_path_factory) -> dict[str, Path]:
    """The commands find_best_configuration printed, run verbatim (placeholders apart): placeholder folders and,
    under each configuration name, that model's predictions."""
    workflow = best[0]
    instructions = (workflow.results / "inference_instructions.txt").read_text()
    return predictions_per_configuration(
        instructions, workflow.run_instructions(instructions, tmp_path_factory.mktemp("printed")))


@pytest.fixture(scope="module")
def log_ensemble_predictions(best, printed_predictions, tmp_path_factory) -> dict[str, Path]:
    """The inference instructions of the LoG-VMamba 2d + 3d_fullres ensemble, run verbatim (placeholders apart):
    those printed by find_best_configuration when that ensemble won, else those nnU-Net prints for it."""
    workflow, _, information = best
    if is_log_ensemble(information):
        return printed_predictions
    ensembles = list((workflow.results / "ensembles").glob(f"ensemble___{LOG_TRAINER}__*___{LOG_TRAINER}__*"))
    assert len(ensembles) == 1, ensembles
    instructions_file = workflow.root / "log_ensemble_instructions.txt"
    workflow.run([sys.executable, "-c", ENSEMBLE_INSTRUCTIONS, str(workflow.results / "inference_information.json"),
                  str(ensembles[0]), str(workflow.root / "nnUNet_preprocessed" / workflow.dataset.name /
                                         "gt_segmentations"), str(instructions_file)])
    instructions = instructions_file.read_text()
    return predictions_per_configuration(
        instructions, workflow.run_instructions(instructions, tmp_path_factory.mktemp("log_ensemble")))


def test_five_folds_with_npz_for_both_trainers_and_configurations(trained):
    for trainer in TRAINERS:
        for configuration in CONFIGURATIONS:
            validated = []
            for fold in FOLDS:
                fold_folder = trained.model_folder(trainer, configuration) / f"fold_{fold}"
                assert (fold_folder / "checkpoint_final.pth").is_file()
                validation = fold_folder / "validation"
                cases = sorted(p.name[:-len(".nii.gz")] for p in validation.glob("*.nii.gz"))
                assert cases and cases == sorted(p.stem for p in validation.glob("*.npz"))
                assert set(json.loads((validation / "summary.json").read_text())["mean"]) == {"1", "2"}
                validated += cases
            assert sorted(validated) == sorted(p.name[:-len(".nii.gz")]
                                               for p in (trained.dataset / "labelsTr").glob("*.nii.gz"))


def test_find_best_configuration_prints_commands_that_give_valid_segmentations(best, printed_predictions):
    workflow, output, information = best
    results = output.split("***All results:***")[1].split("*Best*")[0]
    models = [f"{trainer}__{PLANS}__{configuration}" for trainer in TRAINERS for configuration in CONFIGURATIONS]
    for model in models:
        assert re.search(rf"^{model}: ", results, re.MULTILINE), model
    assert len(re.findall(r"^ensemble___", results, re.MULTILINE)) == len(models) * (len(models) - 1) // 2
    instructions = (workflow.results / "inference_instructions.txt").read_text()
    commands = [line for line in instructions.splitlines() if line.startswith("nnUNetv2_")]
    assert all(command in output for command in commands)
    predicts = [c for c in commands if c.startswith("nnUNetv2_predict ")]
    winners = information["best_model_or_ensemble"]["selected_model_or_models"]
    assert len(predicts) == len(winners)
    assert [c.split()[0] for c in commands] == ["nnUNetv2_predict"] * len(winners) + (
        ["nnUNetv2_ensemble"] if len(winners) == 2 else []) + ["nnUNetv2_apply_postprocessing"]
    workflow.assert_valid_segmentations(printed_predictions["OUTPUT_FOLDER"])
    workflow.assert_valid_segmentations(printed_predictions["OUTPUT_FOLDER_PP"])


def test_log_vmamba_ensemble_with_postprocessing(best, log_ensemble_predictions):
    workflow = best[0]
    for configuration in CONFIGURATIONS:
        folder = log_ensemble_predictions[configuration]
        workflow.assert_valid_segmentations(folder)
        assert len(list(folder.glob("*.npz"))) == len(workflow.images_ts())
    workflow.assert_valid_segmentations(log_ensemble_predictions["OUTPUT_FOLDER"])
    workflow.assert_valid_segmentations(log_ensemble_predictions["OUTPUT_FOLDER_PP"])


def test_export_install_predict_gives_identical_segmentations(best, log_ensemble_predictions, tmp_path):
    workflow = best[0]
    archive = tmp_path / "logvmamba_models.zip"
    workflow.run(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", str(archive), "-c",
                  *CONFIGURATIONS, "-tr", LOG_TRAINER])
    fresh_results = tmp_path / "fresh_nnUNet_results"
    fresh_results.mkdir()
    fresh = {**workflow.env, "nnUNet_results": str(fresh_results)}
    workflow.run(["nnUNetv2_install_pretrained_model_from_zip", str(archive)], fresh)
    model_folder = fresh_results / workflow.dataset.name / f"{LOG_TRAINER}__{PLANS}__3d_fullres"
    assert model_folder.is_dir()
    images = str(workflow.dataset / "imagesTs")
    workflow.run(["nnUNetv2_predict_from_modelfolder", "-i", images, "-o", str(tmp_path / "3d_fullres"),
                  "-m", str(model_folder), "-device", "cpu"], fresh)
    workflow.run(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path / "2d"), "-d", str(DATASET_ID), "-c", "2d",
                  "-tr", LOG_TRAINER, "-device", "cpu"], fresh)
    for configuration in CONFIGURATIONS:
        workflow.assert_valid_segmentations(tmp_path / configuration)
        for before in sorted(log_ensemble_predictions[configuration].glob("*.nii.gz")):
            labels, *geometry = read(before)
            again, *geometry_again = read(tmp_path / configuration / before.name)
            np.testing.assert_array_equal(labels, again)
            assert geometry == geometry_again

"""``logvmamba-nnunet plan``: nnU-Net plans sized for a LoG-family trainer's network and a GPU's memory."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from logvmamba_nnunet.cli.validation import (
    UserInputError,
    load_json_object,
    reports_user_errors,
    require_at_least,
    require_dataset_name,
    require_environment,
    user_errors,
)
from logvmamba_nnunet.nnunet.planner import (
    CONFIGURATIONS,
    DEFAULT_TRAINER,
    GB,
    MEMORY_KEY,
    PRESETS,
    parse_gpu_memory,
    plans_identifier,
)


def add_parser(subparsers) -> None:
    presets = ", ".join(f"{name} = {gb:g} GB" for name, gb in PRESETS.items())
    parser = subparsers.add_parser(
        "plan", help="nnU-Net plans whose patch and batch fit a LoG trainer's network in a GPU's memory",
        description="Run nnU-Net's experiment planning (the dataset fingerprint is reused if present, else "
                    "extracted) with the memory estimate of the trainer's network instead of nnU-Net's default "
                    "network, and write a plans file that nnUNetv2_preprocess -plans_name, nnUNetv2_train -p, "
                    f"nnUNetv2_predict -p and nnUNetv2_find_best_configuration -p use. Presets: {presets} "
                    "(as nnU-Net's ResEnc presets).")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name in $nnUNet_raw")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"], choices=CONFIGURATIONS,
                        help="configurations to plan (default: 2d 3d_fullres)")
    parser.add_argument("--gpu-memory", required=True, metavar="GB|M|L|XL",
                        help=f"GPU memory to plan for: GB (10^9 bytes) or a preset ({presets})")
    parser.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER, help="trainer whose network is sized "
                        "(default: %(default)s)")
    parser.add_argument("-p", "--plans-name", help="plans identifier (default: nnUNetLoGVMambaPlans_<GB>G, with the "
                        "trainer's name for other trainers)")
    parser.add_argument("-np", "--processes", type=int, default=2,
                        help="processes for the fingerprint extraction when there is none (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a plans file of that name that this command did not write")
    parser.set_defaults(func=run)


def check_trainer(name: str) -> type:
    """The LoG-family trainer class named ``name``; :class:`UserInputError` for unknown or other trainers."""
    from logvmamba_nnunet.profiling.profile import find_trainer_class
    from logvmamba_nnunet_trainers.base import LoGFamilyTrainer

    with user_errors():
        trainer = find_trainer_class(name)
    if not issubclass(trainer, LoGFamilyTrainer):
        raise UserInputError(f"-tr {name} is not a LoG-family trainer, so this planner cannot size its network; "
                             f"use nnUNetv2_plan_experiment for it, or -tr {DEFAULT_TRAINER}")
    return trainer


def check_plans_file(plans_file: Path, overwrite: bool) -> None:
    """Refuse to replace a plans file this command did not write, unless ``overwrite``."""
    if not plans_file.exists() or overwrite:
        return
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
        if MEMORY_KEY in json.loads(plans_file.read_text()):
            return
    raise UserInputError(f"{plans_file} exists and was not written by logvmamba-nnunet plan; choose another -p "
                         "name, or pass --overwrite to replace it")


def ensure_fingerprint(dataset_name: str, preprocessed: Path, processes: int) -> None:
    """nnU-Net's dataset fingerprint, extracted by nnU-Net when ``dataset_fingerprint.json`` is missing."""
    if (preprocessed / dataset_name / "dataset_fingerprint.json").is_file():
        return
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    print(f"extracting the dataset fingerprint of {dataset_name} (nnU-Net)")
    extract_fingerprint_dataset(convert_dataset_name_to_id(dataset_name), num_processes=processes,
                                check_dataset_integrity=False, verbose=False)


def next_steps(dataset_name: str, plans_name: str, configurations: list[str], trainer: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    dataset_id = convert_dataset_name_to_id(dataset_name)
    configuration = "3d_fullres" if "3d_fullres" in configurations else configurations[0]
    return (f"next: nnUNetv2_preprocess -d {dataset_id} -plans_name {plans_name} -c {' '.join(configurations)}\n"
            f"      nnUNetv2_train {dataset_id} {configuration} 0 -tr {trainer} -p {plans_name}")


@reports_user_errors("plan")
def run(args: argparse.Namespace) -> int:
    from logvmamba_nnunet.data.safe_output import staged_files

    with user_errors():
        gigabytes = parse_gpu_memory(args.gpu_memory)
    require_at_least("-np", args.processes, 1)
    raw = Path(require_environment("nnUNet_raw", "plan reads the raw dataset"))
    preprocessed = Path(require_environment("nnUNet_preprocessed", "plan writes the plans there"))
    dataset_name = require_dataset_name(args.dataset, "nnUNet_raw", raw)
    load_json_object(raw / dataset_name / "dataset.json", "dataset.json",
                     f"check the dataset in nnUNet_raw ({raw / dataset_name})")
    check_trainer(args.trainer)
    plans_name = args.plans_name or plans_identifier(gigabytes, args.trainer)
    if not plans_name or Path(plans_name).name != plans_name:
        raise UserInputError(f"-p {plans_name!r} is not a valid plans name; give a name without '/', e.g. "
                             f"{plans_identifier(gigabytes, args.trainer)}")
    plans_file = preprocessed / dataset_name / f"{plans_name}.json"
    check_plans_file(plans_file, args.overwrite)

    from logvmamba_nnunet.nnunet.planner import LoGVMambaPlanner

    ensure_fingerprint(dataset_name, preprocessed, args.processes)
    with user_errors(), contextlib.redirect_stdout(io.StringIO()):
        planner = LoGVMambaPlanner(dataset_name, gigabytes, plans_name=plans_name, trainer_name=args.trainer,
                                   configurations=args.configurations)
        planner.plan_experiment()
    with staged_files([plans_file]) as (temporary,):
        temporary.write_text(json.dumps(planner.plans, indent=4))
    print(f"wrote {plans_file} ({args.trainer}, {gigabytes:g} GB)")
    estimates = planner.plans[MEMORY_KEY]["estimated_bytes"]
    for name, configuration in planner.plans["configurations"].items():
        if name in estimates:
            print(f"  {name}: patch {list(configuration['patch_size'])}, batch {configuration['batch_size']}, "
                  f"estimated training memory {estimates[name] / GB:.1f} GB")
    print(next_steps(dataset_name, plans_name, list(args.configurations), args.trainer))
    return 0

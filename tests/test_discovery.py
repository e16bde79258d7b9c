"""Trainer discovery: the trainer folder nnUNet_extTrainer points at, one class object per process however it is
reached, the wheel's .pth hook, an editable install and a plain clone with the documented export."""

import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import logvmamba_nnunet_trainers as trainers
from logvmamba_nnunet.nnunet.discovery import (
    EXT_TRAINER_ENV,
    OPT_OUT_ENV,
    TRAINER_PACKAGE,
    ext_trainer_folder,
    register_ext_trainer_path,
    with_ext_trainer_folder,
)

REPO = Path(__file__).resolve().parents[1]
PTH_FILE = REPO / "logvmamba_nnunet" / "nnunet" / "logvmamba_nnunet_ext_trainer.pth"


def run_python(code: str, env: dict[str, str] | None = None, python: str | Path = sys.executable,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, cwd=cwd)


def test_trainer_folder_is_the_repository_folder_with_one_package():
    folder = Path(ext_trainer_folder())
    assert folder == REPO / "nnunet_trainers"
    assert [(m.name, m.ispkg) for m in pkgutil.iter_modules([str(folder)])] == [(TRAINER_PACKAGE, True)]
    assert Path(trainers.__file__).resolve() == folder / TRAINER_PACKAGE / "__init__.py"


def test_trainer_modules_define_trainers_only():
    """Every class a trainer module defines is an nnUNetTrainer subclass, and the modules define no functions."""
    folder = Path(ext_trainer_folder()) / TRAINER_PACKAGE
    names = [m.name for m in pkgutil.iter_modules([str(folder)])]
    assert {"base", "logvmamba", "swin_umamba", "umamba", "monai_baselines", "epochs"} <= set(names)
    for name in names:
        module = sys.modules.get(f"{TRAINER_PACKAGE}.{name}") or __import__(f"{TRAINER_PACKAGE}.{name}",
                                                                          fromlist=["_"])
        own = [obj for _, obj in inspect.getmembers(module) if getattr(obj, "__module__", None) == module.__name__]
        assert own, f"{module.__name__} defines nothing"
        for obj in own:
            assert inspect.isclass(obj) and issubclass(obj, nnUNetTrainer), f"{module.__name__}.{obj.__name__}"


def test_user_facing_trainers_are_exported_and_test_trainers_are_not():
    defined = {cls.__name__ for cls in vars(trainers).values()
               if inspect.isclass(cls) and issubclass(cls, nnUNetTrainer) and cls.__name__.startswith("nnUNetTrainer")}
    assert defined == set(trainers.__all__)
    assert not [name for name in trainers.__all__ if name.endswith("_Tiny")]
    for name in ("nnUNetTrainerSwinUMambaDagger", "nnUNetTrainerSwinUMambaLoG"):
        assert not issubclass(getattr(trainers, name), trainers.nnUNetTrainerLoGVMamba), name


def test_appends_once_and_keeps_existing_entries():
    other = os.pathsep.join(["/somewhere/else", "/another"])
    value = with_ext_trainer_folder(other)
    assert value.split(os.pathsep) == ["/somewhere/else", "/another", ext_trainer_folder()]
    assert with_ext_trainer_folder(value) == value
    assert with_ext_trainer_folder(None) == ext_trainer_folder()


def test_register_and_opt_out():
    environ = {EXT_TRAINER_ENV: "/mine"}
    assert register_ext_trainer_path(environ)
    assert environ[EXT_TRAINER_ENV] == os.pathsep.join(["/mine", ext_trainer_folder()])
    environ = {EXT_TRAINER_ENV: "/mine", OPT_OUT_ENV: "1"}
    assert not register_ext_trainer_path(environ)
    assert environ[EXT_TRAINER_ENV] == "/mine"


def test_pth_file_adds_the_installed_folder_and_registers_silently(tmp_path):
    """site.py processes the .pth as it would in site-packages: the wheel's trainer folder (a name that cannot be
    imported) goes on sys.path, and the registration line appends the trainer folder without output."""
    (tmp_path / "logvmamba-nnunet-trainers").mkdir()
    (tmp_path / PTH_FILE.name).write_text(PTH_FILE.read_text())
    lines = PTH_FILE.read_text().splitlines()
    assert lines[0] == "logvmamba-nnunet-trainers" and not lines[0].isidentifier()
    assert len(lines) == 2 and lines[1].startswith("import ")
    code = (f"import os, site, sys\nsite.addsitedir({str(tmp_path)!r})\n"
            f"print({str(tmp_path / 'logvmamba-nnunet-trainers')!r} in sys.path)\n"
            f"print(os.environ['{EXT_TRAINER_ENV}'])")
    result = run_python(code, env={**os.environ, EXT_TRAINER_ENV: "/mine"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    added, value = result.stdout.strip().splitlines()
    assert added == "True" and value.split(os.pathsep) == ["/mine", ext_trainer_folder()]


LOOKUP_BOTH_ORDERS = """
import pickle
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
names = {names!r}
if {lookup_first}:
    first = {{name: find(name) for name in names}}
import logvmamba_nnunet_trainers as t
for name in names:
    c = getattr(t, name)
    if {lookup_first}:
        assert first[name] is c, (name, 'lookup before import')
    assert find(name) is c, (name, 'lookup after import')
    assert find(name) is c, (name, 'second lookup')
    assert pickle.loads(pickle.dumps(c)) is c, name
import logvmamba_nnunet_trainers.logvmamba as m
assert m.nnUNetTrainerLoGVMamba is t.nnUNetTrainerLoGVMamba
print('found', len(names))
"""


@pytest.mark.parametrize("lookup_first", [False, True])
def test_nnunet_lookup_and_import_give_one_class_in_either_order(lookup_first):
    """nnU-Net's lookup removes the modules it loaded from the trainer folder; the package still yields the classes
    defined the first time, whether the lookup or an import comes first, and they pickle by reference."""
    code = LOOKUP_BOTH_ORDERS.format(names=list(trainers.__all__), lookup_first=lookup_first)
    env = {**os.environ, EXT_TRAINER_ENV: with_ext_trainer_folder(os.environ.get(EXT_TRAINER_ENV))}
    result = run_python(code, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"found {len(trainers.__all__)}" in result.stdout


def test_network_built_by_a_looked_up_trainer_pickles_its_classes():
    """Every module class of a network built by a trainer from nnU-Net's lookup pickles by reference (whole networks
    do not pickle: dynamic-network-architectures' residual blocks hold a lambda)."""
    code = """
import pickle
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tests.plans_factory import plans
manager = PlansManager(plans())
for name, configuration in (("nnUNetTrainerLoGVMamba", "3d_fullres"), ("nnUNetTrainerLoGVMamba", "2d"),
                            ("nnUNetTrainerUMambaEnc", "3d_fullres")):
    network = find(name).build_network_architecture(manager, manager.get_configuration(configuration), 1, 3, True)
    for cls in {type(module) for module in network.modules()}:
        assert pickle.loads(pickle.dumps(cls)) is cls, cls
print('ok')
"""
    env = {**os.environ, EXT_TRAINER_ENV: with_ext_trainer_folder(os.environ.get(EXT_TRAINER_ENV))}
    result = run_python(code, env=env, cwd=REPO)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_names_are_valid_and_do_not_shadow_nnunet():
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer")
    for name in trainers.__all__:
        assert "__" not in name
        assert recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer",
                                           nnunetv2.__path__[0]) is None, f"{name} shadows a built-in trainer"


def test_editable_install_imports_the_trainers_without_the_variable(tmp_path):
    """This test environment is an editable install: the trainer package imports from the repository's folder with
    nnUNet_extTrainer unset (nnU-Net's lookup itself needs the documented export there)."""
    env = {k: v for k, v in os.environ.items() if k != EXT_TRAINER_ENV}
    result = run_python("import logvmamba_nnunet_trainers as t; print(t.__file__)", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).resolve() == REPO / "nnunet_trainers" / TRAINER_PACKAGE / "__init__.py"


def fresh_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv without pip whose interpreter sees this environment's dependencies (their folders listed in a .pth,
    which adds them to sys.path without running the .pth files inside them, e.g. the editable install's)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])", python=python)
                .stdout.strip())
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    return python, site


@pytest.mark.e2e
def test_clone_with_the_documented_export_finds_the_trainer(tmp_path):
    """A clone that is not installed (the package on PYTHONPATH): after the documented export nnU-Net's lookup finds
    the trainer in the clone's nnunet_trainers/ folder."""
    python, _ = fresh_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != EXT_TRAINER_ENV}
    env["PYTHONPATH"] = str(REPO)
    export = run_python("from logvmamba_nnunet.cli.main import main; main(['ext-path', '--value'])", env=env,
                        python=python, cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-2000:]
    env[EXT_TRAINER_ENV] = export.stdout.strip()
    assert env[EXT_TRAINER_ENV] == str(REPO / "nnunet_trainers")
    lookup = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
              "c = f('nnUNetTrainerLoGVMamba')\nprint(c.__module__)\n")
    result = run_python(lookup, env=env, python=python, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == f"{TRAINER_PACKAGE}.logvmamba"


@pytest.mark.e2e
def test_wheel_install_registers_and_uninstalls_cleanly(tmp_path):
    """Non-editable install into a fresh venv: the stock lookup finds the trainer without nnUNet_extTrainer set, in
    the installed trainer folder, as the same class the package import gives; the wheel installs no top-level
    package with a generic name; after pip uninstall the interpreter starts without error output."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True)
    wheel = next((tmp_path / "dist").glob("logvmamba_nnunet-*.whl"))
    python, site = fresh_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in (EXT_TRAINER_ENV, "PYTHONPATH")}
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    before = set(os.listdir(site))
    subprocess.run(pip + ["install", "--no-deps", "-q", str(wheel)], check=True, env=env)
    added = {name for name in set(os.listdir(site)) - before if not name.endswith(".dist-info")}
    assert added == {"logvmamba_nnunet", "logvmamba-nnunet-trainers", "logvmamba_nnunet_ext_trainer.pth"}
    lookup = ("import os\nfrom nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
              "c = f('nnUNetTrainerLoGVMamba')\nimport logvmamba_nnunet_trainers as t\n"
              "assert c is t.nnUNetTrainerLoGVMamba\nprint(c.__module__, os.environ['nnUNet_extTrainer'])\n")
    result = run_python(lookup, env=env, python=python, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    module, value = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert module == f"{TRAINER_PACKAGE}.logvmamba"
    assert value == str(site / "logvmamba-nnunet-trainers")
    subprocess.run(pip + ["uninstall", "-y", "-q", "logvmamba-nnunet"], check=True, env=env)
    assert not set(os.listdir(site)) - before - {"__pycache__"}
    clean = run_python("pass", env=env, python=python, cwd=tmp_path)
    assert clean.returncode == 0 and clean.stderr == ""

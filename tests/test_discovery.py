"""Trainer discovery through nnUNet_extTrainer, the .pth hook, and the trainer names."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import logvmamba_nnunet.nnunet_trainers as trainers
from logvmamba_nnunet.nnunet.discovery import (
    EXT_TRAINER_ENV,
    OPT_OUT_ENV,
    ext_trainer_folder,
    register_ext_trainer_path,
    with_ext_trainer_folder,
)

PTH_FILE = Path(__file__).resolve().parents[1] / "logvmamba_nnunet" / "nnunet" / "logvmamba_nnunet_ext_trainer.pth"


def test_folder_holds_one_thin_module():
    files = sorted(p.name for p in Path(ext_trainer_folder()).iterdir() if p.suffix == ".py")
    assert files == ["logvmamba_nnunet_trainers.py"]


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


def test_pth_line_appends_without_output():
    """The .pth line, executed as site.py does, appends the folder and prints nothing."""
    line = PTH_FILE.read_text().strip()
    assert line.startswith("import ") and "\n" not in line
    code = f"{line}\nimport os; print(os.environ['{EXT_TRAINER_ENV}'])"
    env = {**os.environ, EXT_TRAINER_ENV: "/mine"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip().split(os.pathsep) == ["/mine", ext_trainer_folder()]
    assert result.stderr == ""


def test_nnunet_lookup_finds_the_same_picklable_class():
    code = (
        "import pickle\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "import logvmamba_nnunet.nnunet_trainers as t\n"
        "for name in t.__all__:\n"
        "    c = find(name)\n"
        "    assert c is getattr(t, name), (name, c)\n"
        "    assert pickle.loads(pickle.dumps(c)) is c\n"
        "print('found', len(t.__all__))\n")
    env = {**os.environ, EXT_TRAINER_ENV: with_ext_trainer_folder(os.environ.get(EXT_TRAINER_ENV))}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"found {len(trainers.__all__)}" in result.stdout


def test_names_are_valid_and_do_not_shadow_nnunet():
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer")
    for name in trainers.__all__:
        assert "__" not in name
        assert pickle.loads(pickle.dumps(getattr(trainers, name))) is getattr(trainers, name)
        assert recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer",
                                           nnunetv2.__path__[0]) is None, f"{name} shadows a built-in trainer"


@pytest.mark.e2e
def test_wheel_install_registers_and_uninstalls_cleanly(tmp_path):
    """Non-editable install into a fresh venv (dependencies borrowed from this one): the stock lookup finds the
    trainer without nnUNet_extTrainer set; after pip uninstall the interpreter starts without error output."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(repo)], check=True)
    wheel = next((tmp_path / "dist").glob("logvmamba_nnunet-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    env = {k: v for k, v in os.environ.items() if k != EXT_TRAINER_ENV}
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(pip + ["install", "--no-deps", "-q", str(wheel)], check=True, env=env)
    lookup = ("import os\nfrom nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
              "c = f('nnUNetTrainerLoGVMamba')\nprint(c.__module__, os.environ['nnUNet_extTrainer'])\n")
    result = subprocess.run([str(python), "-c", lookup], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "logvmamba_nnunet.nnunet_trainers.logvmamba" in result.stdout
    assert str(site) in result.stdout  # the folder of the installed wheel, not of the source tree
    subprocess.run(pip + ["uninstall", "-y", "-q", "logvmamba-nnunet"], check=True, env=env)
    assert not (site / "logvmamba_nnunet_ext_trainer.pth").exists()
    clean = subprocess.run([str(python), "-c", "pass"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert clean.returncode == 0 and clean.stderr == ""

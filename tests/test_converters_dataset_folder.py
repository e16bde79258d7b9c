"""Dataset folder naming, staged writing, cross-validation splits and the ``convert`` command's plumbing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from logvmamba_nnunet.cli import convert as convert_cli
from logvmamba_nnunet.evaluation.converters.dataset_folder import (
    dataset_folder_name,
    grouped_splits,
    install_splits,
    resolve_dataset_folder,
    staged_dataset_folder,
    write_splits,
)


def test_dataset_names_follow_nnunet_rules():
    assert dataset_folder_name(27, "ACDC") == "Dataset027_ACDC"
    for dataset_id, name in ((0, "A"), (1000, "A"), (5, "a__b"), (5, "bad name")):
        with pytest.raises(ValueError):
            dataset_folder_name(dataset_id, name)


def test_resolve_dataset_folder(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert resolve_dataset_folder(None, tmp_path / "x", 1, "A", None) == tmp_path / "x"
    assert resolve_dataset_folder(None, None, 501, "BraTS2020", str(raw)) == raw / "Dataset501_BraTS2020"
    assert resolve_dataset_folder("27", None, 502, "ACDC", str(raw)) == raw / "Dataset027_ACDC"
    assert resolve_dataset_folder("Dataset123_Mine", None, 502, "ACDC", str(raw)) == raw / "Dataset123_Mine"
    with pytest.raises(ValueError, match="nnUNet_raw"):
        resolve_dataset_folder(None, None, 501, "BraTS2020", None)
    with pytest.raises(ValueError, match="neither"):
        resolve_dataset_folder("ACDC", None, 502, "ACDC", str(raw))
    (raw / "Dataset027_Other").mkdir()
    with pytest.raises(ValueError, match="unique ids"):
        resolve_dataset_folder("27", None, 502, "ACDC", str(raw))


def test_staged_folder_moves_into_place_and_refuses_to_overwrite(tmp_path: Path):
    target = tmp_path / "Dataset001_A"
    with staged_dataset_folder(target) as folder:
        assert folder != target and folder.parent == tmp_path
        (folder / "first.txt").write_text("1")
    assert (target / "first.txt").read_text() == "1"
    with pytest.raises(FileExistsError, match="--overwrite"), staged_dataset_folder(target):
        pass
    with staged_dataset_folder(target, overwrite=True) as folder:
        (folder / "second.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["second.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A"]


def test_a_failed_conversion_leaves_no_trace_and_keeps_the_old_folder(tmp_path: Path):
    target = tmp_path / "Dataset001_A"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dataset_folder(target, overwrite=True) as folder:
        (folder / "new.txt").write_text("new")
        raise RuntimeError("converter failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A"]
    assert (target / "old.txt").read_text() == "old"


def test_grouped_splits_keep_groups_together_and_cover_every_case():
    groups = {f"p{p}_frame{f}": f"p{p}" for p in range(7) for f in range(2)}
    splits = grouped_splits(groups, num_folds=5, seed=3)
    assert len(splits) == 5
    all_val = [case for split in splits for case in split["val"]]
    assert sorted(all_val) == sorted(groups)
    for split in splits:
        assert split["val"] and set(split["train"]) | set(split["val"]) == set(groups)
        val_groups = {groups[c] for c in split["val"]}
        assert not val_groups & {groups[c] for c in split["train"]}
    with pytest.raises(ValueError, match="groups"):
        grouped_splits({"a": "g1", "b": "g2"}, num_folds=5)


def test_install_splits_copies_once_and_protects_other_splits(tmp_path: Path):
    dataset = tmp_path / "raw" / "Dataset002_B"
    dataset.mkdir(parents=True)
    assert install_splits(dataset, str(tmp_path / "pre")) is None  # nothing to copy
    write_splits(dataset, [{"train": ["a"], "val": ["b"]}])
    assert install_splits(dataset, None) is None
    copied = install_splits(dataset, str(tmp_path / "pre"))
    assert copied == tmp_path / "pre" / "Dataset002_B" / "splits_final.json"
    assert json.loads(copied.read_text()) == [{"train": ["a"], "val": ["b"]}]
    write_splits(dataset, [{"train": ["b"], "val": ["a"]}])
    with pytest.raises(FileExistsError, match="--overwrite"):
        install_splits(dataset, str(tmp_path / "pre"))
    assert install_splits(dataset, str(tmp_path / "pre"), overwrite=True) == copied


def test_convert_command_has_a_subcommand_per_dataset_with_documented_options(capsys):
    parser = argparse.ArgumentParser()
    convert_cli.add_parser(parser.add_subparsers())
    for dataset in ("brats2020", "acdc", "endovis2017", "neurips-cell"):
        with pytest.raises(SystemExit):
            parser.parse_args(["convert", dataset, "--help"])
        text = capsys.readouterr().out
        assert "--overwrite" in text and "--output" in text and "--dataset-id" in text
    args = parser.parse_args(["convert", "endovis2017", "in", "-d", "7", "--no-crop", "--test-input", "t"])
    assert (args.dataset, args.dataset_id, args.no_crop) == ("endovis2017", "7", True)
    assert args.test_input == Path("t")
    assert args.func is convert_cli.run

"""Tests for derma_nb.cli: the command line the main job hands to DVC."""
from __future__ import annotations

import shutil
from pathlib import Path

import derma_nb.cli as cli

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, monkeypatch, argv):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(argv) == 0
    assert len(calls) == 1
    return calls[0][2:]  # drop `python -m`


def test_run_without_overrides_is_dvc_repro(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    assert _run(tmp_path, monkeypatch, ["run"]) == ["dvc", "repro"]


def test_run_profile_is_named_experiment(tmp_path, monkeypatch):
    cmd = _run(tmp_path, monkeypatch, ["run", "--profile", "real", "-S", "data.dir=mydata",
                                       "-S", "train.phase2.epochs=3", "--", "-n", "short"])
    assert cmd[:3] == ["dvc", "exp", "run"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
    assert "model.arch=\"resnet18\"" in sets and "train.phase2.epochs=3" in sets and "data.dir=\"mydata\"" in sets
    assert "--" not in cmd and cmd[-2:] == ["-n", "short"]  # the separator is not passed to DVC

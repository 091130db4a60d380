"""Tests for derma_nb.cli: the command line the main job hands to DVC."""
from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import derma_nb.cli as cli
import derma_nb.notify as notify

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, monkeypatch, argv):
    if not (tmp_path / "params.yaml").exists():
        shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles", dirs_exist_ok=True)
    (tmp_path / "mydata").mkdir(exist_ok=True)
    (tmp_path / "mydata" / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(notify, "run_logged",
                        lambda cmd: calls.append(cmd) or notify.PipelineRun(cmd, time.time(), time.time(), rc=0))
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
    assert "model.arch=\"tf_efficientnet_lite0\"" in sets and "train.phase2.epochs=3" in sets and "data.dir=\"mydata\"" in sets
    assert "--" not in cmd and cmd[-2:] == ["-n", "short"]  # the separator is not passed to DVC


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed")
def test_run_profile_names_params_left_over_from_an_earlier_experiment(tmp_path, monkeypatch, caplog):
    "`dvc exp run` leaves its params in the workspace; the next `run --profile` says which ones it would inherit."
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for cmd in (["init", "-q"], ["add", "params.yaml"],
                ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "params"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True, capture_output=True)
    caplog.set_level(logging.WARNING, logger="derma_nb")
    argv = ["run", "--profile", "real", "-S", "data.dir=mydata"]
    _run(tmp_path, monkeypatch, argv)
    assert "differs from the committed one" not in caplog.text  # clean workspace: nothing to say

    text = (tmp_path / "params.yaml").read_text()
    assert "schedule: cosine" in text and "arch: tf_efficientnet_lite0" in text
    # what a previous experiment leaves behind: one key the profile does not set, one it does
    (tmp_path / "params.yaml").write_text(text.replace("schedule: cosine", "schedule: constant", 1)
                                          .replace("arch: tf_efficientnet_lite0", "arch: resnet34", 1))
    caplog.clear()
    cmd = _run(tmp_path, monkeypatch, argv)
    assert "1 key(s)" in caplog.text and "train.phase1.schedule=constant (committed: cosine)" in caplog.text
    assert "model.arch" not in caplog.text  # the profile sets it: not inherited
    assert cmd[:3] == ["dvc", "exp", "run"]  # a warning, not a refusal: editing params.yaml first is allowed


# ---------------------------------------------------------------------------------------------------------------
# a user's mistake is one line and exit code 2, never a traceback
# ---------------------------------------------------------------------------------------------------------------
def _cli(args, cwd):
    import sys

    return subprocess.run([sys.executable, "-m", "derma_nb.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


MISTAKES = [
    (["predict", "x.jpg", "--model", "missing.pt"], "missing.pt: model file not found"),
    (["predict", "x.jpg", "--model", "notes.txt"], "notes.txt: not a derma_nb model file"),
    (["prepare", "-S", "prepare.image_size=-3"], "prepare.image_size must be >= 16, got -3"),
    (["prepare", "-S", "train.phase2.lr=fast"], "train.phase2.lr must be a finite number, got 'fast'"),
    (["prepare", "--data", "no/such/folder"], "no/such/folder: dataset path does not exist"),
    (["run", "--profile", "nope"], "profiles/nope.yaml: no such profile"),
    (["export"], "artifacts/release/model.pt: model file not found"),
    (["predict", "x.jpg"], "artifacts/release/model.pt: model file not found; `derma-nb run` writes"),
    (["train"], "artifacts/prepared/images.npy: missing; run the prepare stage first"),
    # the patient context given to predict: read before any model is loaded, each bad value named
    (["predict", "x.jpg", "--site", "leg"], "--site: site 'leg' is not one of abdomen, acral, back"),
    (["predict", "x.jpg", "--age", "200"], "--age: age '200' is not a number of years between 0 and 120"),
    (["predict", "x.jpg", "--sex", "m"], "--sex: sex 'm' is not one of male, female"),
    (["predict", "x.jpg", "--metadata", "no.csv"], "no.csv: metadata file not found"),
    (["predict", "x.jpg", "--metadata", "notes.txt"], "notes.txt: needs a column image_id (or file)"),
    (["predict", "x.jpg", "--metadata", "notes.txt", "--age", "40"], "not both"),
]


@pytest.mark.parametrize("args,message", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_user_mistakes_are_one_line_not_a_traceback(tmp_path, args, message):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "notes.txt").write_text("not a model")
    r = _cli(args, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"derma-nb {args[0]}: error: ")

"""Tests for the experiments table: `dvc exp run` saves metrics with each experiment; the table reads them back."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from derma_nb.report import collect_experiments, experiments_table, write_experiments

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is needed")

# a stand-in for the train + evaluate stages: metrics derived from the params, in the pipeline's file layout
STAGE = r'''
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
lr, size = p["train"]["lr"], p["prepare"]["image_size"]
f1 = round(0.3 + lr * 10 + size / 1000, 4)
os.makedirs("metrics", exist_ok=True)
json.dump({"best": {"metric": "macro_f1", "value": f1 + 0.05}, "epochs_run": 3,
           "timings": {"phase1_seconds": 0.0, "phase2_seconds": 120.0}}, open("metrics/train.json", "w"))
json.dump({"accuracy": 0.6, "balanced_accuracy": 0.5, "macro_f1": f1, "mel_recall": 0.55, "macro_auc": 0.8,
           "ci": {"macro_f1": {"low": f1 - 0.05, "high": f1 + 0.05}}}, open("metrics/test.json", "w"))
'''


def sh(*cmd, cwd):
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "params.yaml").write_text("profile: real\nprepare:\n  image_size: 64\ntrain:\n  lr: 0.002\n")
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: {sys.executable} stage.py\n    deps: [stage.py]\n"
        "    params: [prepare.image_size, train.lr]\n    metrics:\n"
        "      - metrics/train.json: {cache: false}\n      - metrics/test.json: {cache: false}\n")
    (tmp_path / "README.md").write_text("# x\n<!-- results:experiments -->\nold\n<!-- /results:experiments -->\nend\n")
    sh("git", "init", "-q", cwd=tmp_path)
    sh("git", "config", "user.email", "t@t", cwd=tmp_path)
    sh("git", "config", "user.name", "t", cwd=tmp_path)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=tmp_path)
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "commit", "-qm", "init", cwd=tmp_path)
    for name, sets in (("base", []), ("big", ["-S", "prepare.image_size=96"]), ("fast", ["-S", "train.lr=0.004"])):
        sh(sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", name, *sets, cwd=tmp_path)
        sh("git", "checkout", "-q", "--", "params.yaml", cwd=tmp_path)
    return tmp_path


def test_experiments_table_from_dvc_experiments(repo, monkeypatch):
    exps = collect_experiments(repo)
    assert [e["name"] for e in exps] == ["base", "big", "fast"]
    by = {e["name"]: e for e in exps}
    assert by["big"]["params"]["prepare.image_size"] == 96 and by["fast"]["params"]["train.lr"] == 0.004
    assert by["big"]["test"]["macro_f1"] == pytest.approx(0.3 + 0.02 + 0.096)  # the experiment's own metrics file

    md = experiments_table(exps, base="base").splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md[2:]}
    assert "(base: real profile)" in rows["base"]
    assert "prepare.image_size=96" in rows["big"] and "train.lr" not in rows["big"]
    assert "train.lr=0.004" in rows["fast"] and "image_size" not in rows["fast"]
    assert "0.416 [0.366, 0.466]" in rows["big"] and "| 2.0 |" in rows["big"]  # macro F1 with CI; train minutes

    monkeypatch.chdir(repo)
    out = write_experiments(".", base="base")
    readme = (repo / "README.md").read_text()
    assert "old" not in readme and "prepare.image_size=96" in readme and readme.endswith("end\n")
    assert [e["name"] for e in json.loads(out.with_suffix(".json").read_text())] == ["base", "big", "fast"]

    # a second table of experiments (another recipe) under its own name: its own files and README block, via the CLI
    from derma_nb.cli import main

    (repo / "README.md").write_text(readme + "<!-- results:pretrained -->\n<!-- /results:pretrained -->\n")
    assert main(["results", "--experiments", "--base", "fast", "--name", "pretrained"]) == 0
    first = (repo / "results" / "pretrained.md").read_text().splitlines()[0]
    assert "`derma-nb results --experiments --base fast --name pretrained`" in first
    readme2 = (repo / "README.md").read_text()
    assert readme2.startswith(readme) and "(base: real profile)" in readme2.split("results:pretrained")[1]


def test_experiments_of_an_earlier_commit(repo):
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "notes.md").write_text("a later commit\n")
    sh("git", "add", "notes.md", cwd=repo)
    sh("git", "commit", "-qm", "later", cwd=repo)
    assert collect_experiments(repo) == []  # experiments hang off the commit they started from
    assert [e["name"] for e in collect_experiments(repo, rev=base)] == ["base", "big", "fast"]

    # a later experiment, off the new commit: one table of both commits' experiments, in the order they ran
    sh(sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "a-later", "-S", "train.lr=0.008", cwd=repo)
    sh("git", "checkout", "-q", "--", "params.yaml", cwd=repo)
    assert [e["name"] for e in collect_experiments(repo)] == ["a-later"]
    both = collect_experiments(repo, rev=[base, "HEAD"])
    assert [e["name"] for e in both] == ["base", "big", "fast", "a-later"]
    assert both[-1]["params"]["train.lr"] == 0.008
    out = write_experiments(repo, base="base", readme=repo / "README.md", out_dir=repo / "results", rev=[base, "HEAD"])
    assert f"--rev {base} --rev HEAD --base base" in out.read_text().splitlines()[0]
    assert "train.lr=0.008" in (repo / "README.md").read_text()


def test_experiments_table_needs_experiments():
    with pytest.raises(ValueError, match="no experiments"):
        experiments_table([])

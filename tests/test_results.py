"""The results tables: the experiments table reads back the metrics `dvc exp run` saves with each experiment; the
results page (results/README.md) and the README's headline hold what the generators make of the committed run files."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from derma_nb.results import (collect_experiments, experiments_table, headline_results, write_experiments,
                               write_results)

ROOT = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is needed")
PAGE = "# x\n<!-- results:experiments -->\nold\n<!-- /results:experiments -->\nend\n"

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
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text(PAGE)
    (tmp_path / "README.md").write_text(PAGE)  # the README holds no experiments table: it must stay as it is
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


@needs_git
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
    page = (repo / "results" / "README.md").read_text()
    assert "old" not in page and "prepare.image_size=96" in page and page.endswith("end\n")
    assert page.split("<!-- results:experiments -->\n", 1)[1].split("<!-- /results", 1)[0] == out.read_text()
    assert [e["name"] for e in json.loads(out.with_suffix(".json").read_text())] == ["base", "big", "fast"]
    assert (repo / "README.md").read_text() == PAGE  # the results page is the target, not the README

    # a second table of experiments (another recipe) under its own name: its own files and block, via the CLI
    from derma_nb.cli import main

    (repo / "results" / "README.md").write_text(page + "<!-- results:pretrained -->\n<!-- /results:pretrained -->\n")
    assert main(["results", "--experiments", "--base", "fast", "--name", "pretrained"]) == 0
    first = (repo / "results" / "pretrained.md").read_text().splitlines()[0]
    assert "`derma-nb results --experiments --base fast --name pretrained`" in first
    page2 = (repo / "results" / "README.md").read_text()
    assert page2.startswith(page) and "(base: real profile)" in page2.split("results:pretrained")[1]
    assert (repo / "README.md").read_text() == PAGE


@needs_git
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
    out = write_experiments(repo, base="base", page=repo / "results" / "README.md", out_dir=repo / "results",
                            rev=[base, "HEAD"])
    assert f"--rev {base} --rev HEAD --base base" in out.read_text().splitlines()[0]
    assert "train.lr=0.008" in (repo / "results" / "README.md").read_text()


def test_experiments_table_needs_experiments():
    with pytest.raises(ValueError, match="no experiments"):
        experiments_table([])


def _block(text: str, name: str) -> str:
    "What lies between a file's `<!-- results:NAME -->` markers (the generated comment line first)."
    start, end = f"<!-- results:{name} -->\n", f"<!-- /results:{name} -->"
    assert start in text and end in text, f"no results:{name} block"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_write_results_writes_the_results_page_and_the_readme_headline(tmp_path):
    "`derma-nb results` (write_results) on the committed sample run: the full table on the page, the headline in the README."
    page, readme = tmp_path / "page.md", tmp_path / "README.md"
    page.write_text("# Results\n<!-- results:demo -->\nold\n<!-- /results:demo -->\n")
    readme.write_text("# x\n<!-- results:demo-headline -->\nold\n<!-- /results:demo-headline -->\n"
                      "<!-- results:demo -->\nkept\n<!-- /results:demo -->\n")
    out = write_results(ROOT, "demo", page=page, readme=readme, out_dir=tmp_path / "results")
    assert out == tmp_path / "results" / "demo.md"
    full = _block(page.read_text(), "demo")
    assert full.split("\n", 1)[1] == out.read_text().split("\n", 1)[1]  # the page holds results/demo.md's table
    assert full.split("\n", 2)[1].startswith("| metric | Random forest (this run) |")
    head = _block(readme.read_text(), "demo-headline")
    record = json.loads(out.with_suffix(".json").read_text())
    assert head.split("\n", 1)[1] == headline_results(record)  # the headline is made from results/demo.json
    assert "`derma-nb results --run-dir <run> --name demo`" in head.split("\n", 1)[0]
    assert _block(readme.read_text(), "demo") == "kept\n"  # the full table goes to the page only


@pytest.mark.parametrize("name", ["real", "pretrained", "experiments"])
def test_results_page_holds_the_committed_tables(name):
    "Each block of results/README.md is the table `derma-nb results` wrote to results/NAME.md, with its command."
    block = _block((ROOT / "results" / "README.md").read_text(encoding="utf-8"), name)
    committed = (ROOT / "results" / f"{name}.md").read_text(encoding="utf-8")
    assert block.split("\n", 1)[1] == committed.split("\n", 1)[1]
    cmd = re.search(r"`(derma-nb results [^`]+)`", committed.splitlines()[0]).group(1)
    assert f"`{cmd}`" in block.splitlines()[0]


def test_readme_headline_is_generated_from_the_reference_run():
    "The README's headline table is what headline_results makes of results/real.json, nothing typed by hand."
    head = _block((ROOT / "README.md").read_text(encoding="utf-8"), "real-headline")
    first, table = head.split("\n", 1)
    assert "`derma-nb results --run-dir <run> --name real`" in first and "results/real.json" in first
    record = json.loads((ROOT / "results" / "real.json").read_text(encoding="utf-8"))
    assert table == headline_results(record)
    assert "+ patient context" in table and "image only" in table and "(lit.)" in table


def test_results_page_sections_open_with_a_dated_note():
    "Every section of results/README.md that holds a generated table opens with the date of what it reports."
    text = (ROOT / "results" / "README.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    with_tables = [s for s in sections if "<!-- results:" in s]
    assert len(with_tables) >= 5
    for s in with_tables:
        note = s.split("\n\n", 2)[1]
        assert re.match(r"\*\d{4}-\d{2}-\d{2}", note), f"section {s.splitlines()[0]!r} opens without a date"
        assert "**Tried:**" in note and "**Decided:**" in note, f"section {s.splitlines()[0]!r}: what was tried, decided"

"""The committed dvc.lock matches the committed code: every file a stage depends on in the repository (its notebook,
its derma_nb modules) has the md5 dvc.lock records, so a fresh clone's `dvc repro` reruns nothing for code reasons.
Refresh it by running the pipeline (`derma-nb run`) and committing dvc.lock with the code."""
import hashlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def code_deps() -> list[tuple[str, str, str]]:
    "(stage, path, md5 in dvc.lock) of every dependency of every stage that is a file of code in this repository."
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    return [(stage, d["path"], d["md5"]) for stage, s in lock["stages"].items() for d in s.get("deps", [])
            if d["path"].endswith((".py", ".ipynb")) and d["path"].startswith(("derma_nb/", "nbs/"))]


def test_dvc_lock_lists_the_code_of_every_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    locked = {(s, p) for s, p, _ in code_deps()}
    declared = {(s, d) for s, st in stages.items() for d in st["deps"] if d.startswith(("derma_nb/", "nbs/"))}
    assert locked == declared, f"dvc.lock is stale: run `derma-nb run` and commit dvc.lock ({declared ^ locked})"


@pytest.mark.parametrize("stage,path,md5", code_deps())
def test_dvc_lock_md5_matches_the_file(stage, path, md5):
    actual = hashlib.md5((ROOT / path).read_bytes()).hexdigest()
    assert actual == md5, f"{path} changed since dvc.lock was written (stage {stage}): run `derma-nb run`, commit dvc.lock"

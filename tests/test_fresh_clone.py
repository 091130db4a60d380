"""A fresh clone stays clean: `git clone`, the README's run command, then `git status --porcelain` is empty — the
run writes only ignored files (data/, artifacts/, reports/) and git-tracked files identical to the committed ones
(dvc.lock, metrics/, plots/: no wall times in them). dvc.lock records the md5 of every DVC out, so every out is
the same in two identical runs: wall times, log lines and papermill's clocks go to files that are not outs (dvc.yaml)."""
import os
import shutil
import subprocess

import pytest
from conftest import ROOT, tool_path
from test_pipeline import readme_commands, sh

pytestmark = pytest.mark.slow


def test_readme_run_in_a_fresh_clone_leaves_git_status_empty(tmp_path):
    if shutil.which("dvc", path=tool_path()) is None or shutil.which("papermill", path=tool_path()) is None:
        pytest.skip("dvc/papermill not installed")
    repo = tmp_path / "derma-nb"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, capture_output=True)
    env = {**os.environ, "PATH": tool_path(), "PYTHONPATH": str(repo), "DERMA_NB_TRACKING": "offline",
           "MPLBACKEND": "Agg", "DVC_NO_ANALYTICS": "1"}
    env.pop("DERMA_NB_RUN_ID", None)
    rc, out = sh(readme_commands()[1], repo, env, timeout=1500)
    assert rc == 0, out[-6000:]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    diff = subprocess.run(["git", "diff", "--stat"], cwd=repo, capture_output=True, text=True).stdout
    assert status == "", f"the run changed or added tracked files:\n{status}\n{diff}"

"""Shared pytest configuration and helpers for the end-to-end tests, and the one sample run they share."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "ham10000"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 30 s (deselect with -m 'not slow')")


def tool_path() -> str:
    "PATH with this Python environment's scripts (derma-nb, dvc, papermill) first."
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def copy_repo(dst: Path) -> dict:
    "Copy the working tree's tracked + unignored files to `dst`, commit them in a fresh git repo; return the env."
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    env = {**os.environ, "PATH": tool_path(), "PYTHONPATH": str(dst), "DERMA_NB_TRACKING": "offline",
           "MPLBACKEND": "Agg", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("DERMA_NB_RUN_ID", None)
    for c in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(c, cwd=dst, env=env, check=True, capture_output=True)
    return env


def readme_commands():
    "The README's Quick start commands (install, run, test)."
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def sh(cmd, cwd, env, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=env, shell=True, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    "The README's run command on the synthetic sample in a fresh copy of the repo: (repo, env, output), one per session."
    if shutil.which("dvc", path=tool_path()) is None or shutil.which("papermill", path=tool_path()) is None:
        pytest.skip("dvc/papermill not installed")
    repo = tmp_path_factory.mktemp("e2e") / "derma-nb"
    env = copy_repo(repo)
    assert not (repo / "data").exists()
    rc, out = sh(readme_commands()[1], repo, env, timeout=1500)
    assert rc == 0, out[-6000:]
    return repo, env, out

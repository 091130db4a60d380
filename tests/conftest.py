"""Shared pytest configuration and helpers for the end-to-end tests."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

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

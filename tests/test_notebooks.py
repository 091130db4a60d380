"The nbs/ notebooks run top to bottom on the synthetic sample (nbdev_test), and are in sync with derma_nb/."
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_notebook_runs(nb):
    local = Path(sys.executable).parent / "nbdev_test"  # the environment running pytest, even if not on PATH
    exe = str(local) if local.exists() else shutil.which("nbdev_test") or pytest.skip("nbdev not installed")
    # the examples' tempfile.mkdtemp() folders (models, samples, runs: ~400 MB over all notebooks) land in a
    # folder of this test's own, removed when it ends, instead of piling up in /tmp
    with tempfile.TemporaryDirectory(prefix=f"nbtest-{Path(nb).stem}-") as tmp:
        r = subprocess.run([exe, "--path", f"nbs/{nb}", "--do_print"], cwd=ROOT, capture_output=True, text=True,
                           timeout=900, env={**os.environ, "TMPDIR": tmp})
    assert r.returncode == 0, f"{nb} failed under nbdev_test:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"


def test_every_module_has_a_notebook():
    mods = {p.stem for p in (ROOT / "derma_nb").glob("*.py")} - {"__init__", "_modidx"}
    exported = set()
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        text = nb.read_text(encoding="utf-8")
        exported |= {m for m in mods if f"default_exp {m}" in text}
    assert mods == exported, f"modules without a notebook (hand-written?): {mods - exported}"

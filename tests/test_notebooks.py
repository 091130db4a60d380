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
    # the examples' scratch folders (models, samples, runs: ~400 MB over all notebooks) go to a temporary
    # directory of this test's own, which must be empty again when the notebook ends
    # (torch's compile cache, which torch keeps in the temporary directory on purpose, goes beside it)
    with tempfile.TemporaryDirectory(prefix=f"nbtest-{Path(nb).stem}-") as root:
        tmp, cache = Path(root, "tmp"), Path(root, "torchinductor")
        tmp.mkdir()
        r = subprocess.run([exe, "--path", f"nbs/{nb}", "--do_print"], cwd=ROOT, capture_output=True, text=True,
                           timeout=900, env={**os.environ, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(cache)})
        # .ses: onnxruntime's session id, one 51-byte file every onnxruntime session reuses
        left = sorted(p.name for p in tmp.iterdir() if p.name != ".ses")
    assert r.returncode == 0, f"{nb} failed under nbdev_test:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert not left, f"{nb} left {len(left)} scratch folder(s)/file(s) in the temporary directory: {left[:10]}"


def _code(nb: Path) -> list[str]:
    import json

    return ["".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"]


def test_notebook_examples_clean_up_their_scratch_folders():
    "Examples make temporary folders with scratch_dir (never a bare mkdtemp), and the last cell removes them."
    for nb in sorted((ROOT / "nbs").rglob("*.ipynb")):
        cells = [c for c in _code(nb) if not c.lstrip().startswith("#| export")]
        assert not any("mkdtemp(" in c for c in cells), f"{nb.name}: tempfile.mkdtemp() in an example: use scratch_dir()"
        if any("scratch_dir(" in c for c in cells):
            assert "remove_scratch()" in cells[-1], f"{nb.name}: uses scratch_dir(); its last cell must remove_scratch()"


def test_scratch_folders_are_removed_on_exit(tmp_path):
    "An interrupted notebook leaves nothing either: what remove_scratch() did not get to goes when Python exits."
    code = "from derma_nb.runtime import scratch_dir; (scratch_dir() / 'x.bin').write_bytes(b'0' * 1000)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert list(tmp_path.iterdir()) == []


def test_every_module_has_a_notebook():
    mods = {p.stem for p in (ROOT / "derma_nb").glob("*.py")} - {"__init__", "_modidx"}
    exported = set()
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        text = nb.read_text(encoding="utf-8")
        exported |= {m for m in mods if f"default_exp {m}" in text}
    assert mods == exported, f"modules without a notebook (hand-written?): {mods - exported}"

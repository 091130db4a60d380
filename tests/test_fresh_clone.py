"""A fresh clone stays clean: `git clone`, the README's run command, then `git status --porcelain` is empty — the
run writes only ignored files (data/, artifacts/, reports/) and git-tracked files identical to the committed ones
(dvc.lock, metrics/, plots/: no wall times in them). dvc.lock records the md5 of every DVC out, so every out is
the same in two identical runs: wall times, log lines and papermill's clocks go to files that are not outs (dvc.yaml).

One allowance: PyTorch's CPU kernels round differently on CPUs with other vector units (seen here: the committing
machine and an AVX-512-FP16 Xeon differ in the 8th digit of a training loss), and a near-tie in a training batch can
then flip. On such a machine the tracked numbers may move by that noise, and nothing else may: no other file, no
dependency or param hash in dvc.lock, no evaluated metric beyond 1e-6 relative or 1e-5 absolute (a thousandth of one
test image; the ONNX parity figure is itself such noise), no training-history figure beyond `HISTORY_TOL`."""
import csv
import io
import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT, tool_path
from test_pipeline import readme_commands, sh

pytestmark = pytest.mark.slow

OUTPUTS = ("metrics/", "plots/")
HISTORY_TOL = 0.01  # one training image of a sample batch flipping moves an epoch's train accuracy by ~0.002


def _numbers(obj, path=""):
    "Every leaf of a JSON value with its path."
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, obj


def _close(a, b, rel: float, abs_: float = 1e-9) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))
    return a == b


def float_noise_only(repo, path: str) -> list[str]:
    "What differs in `path` between HEAD and the run beyond floating-point noise (empty: noise only)."
    old = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True, text=True, check=True).stdout
    new = (repo / path).read_text()
    if path.endswith(".json"):
        a, b = dict(_numbers(json.loads(old))), dict(_numbers(json.loads(new)))
        return [f"{path}{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
                if not _close(a.get(k), b.get(k), 1e-6, 1e-5)]
    ra, rb = list(csv.reader(io.StringIO(old))), list(csv.reader(io.StringIO(new)))
    tol = HISTORY_TOL if path.endswith("history.csv") else 1e-6
    if len(ra) != len(rb) or ra[:1] != rb[:1]:
        return [f"{path}: {len(ra)} rows with header {ra[:1]} -> {len(rb)} rows with header {rb[:1]}"]
    bad = []
    for i, (x, y) in enumerate(zip(ra[1:], rb[1:]), 2):
        for h, u, v in zip(ra[0], x, y):
            try:
                same = _close(float(u), float(v), 0.0, tol)
            except ValueError:
                same = u == v
            if not same:
                bad.append(f"{path}: line {i} {h}: {u} -> {v}")
    return bad


def lock_changes_beyond_outs(repo) -> list[str]:
    "Stages of dvc.lock whose command, params or code/data dependencies differ from HEAD's (outs may differ)."
    old = yaml.safe_load(subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=repo, capture_output=True, text=True,
                                        check=True).stdout)["stages"]
    new = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    made = {o["path"] for st in [*old.values(), *new.values()] for o in st.get("outs", [])}  # outs feed later stages

    def own(st):
        return {"cmd": st.get("cmd"), "params": st.get("params"),
                "deps": [d for d in st.get("deps", []) if d["path"] not in made]}

    return sorted(s for s in old.keys() | new.keys() if own(old.get(s) or {}) != own(new.get(s) or {}))


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
    changed = [line[3:] for line in status.splitlines()]
    diff = subprocess.run(["git", "diff", "--stat"], cwd=repo, capture_output=True, text=True).stdout
    others = [f for f in changed if f != "dvc.lock" and not f.startswith(OUTPUTS)] + \
        [line for line in status.splitlines() if line.startswith("??")]
    assert not others, f"the run changed or added tracked files other than its outputs:\n{status}\n{diff}"
    assert not lock_changes_beyond_outs(repo), f"dvc.lock: code or params differ in {lock_changes_beyond_outs(repo)}"
    beyond = [d for f in changed if f.startswith(OUTPUTS) for d in float_noise_only(repo, f)]
    assert not beyond, "the run's tracked outputs differ from the committed ones beyond floating-point noise:\n" + \
        "\n".join(beyond[:30])


def test_float_noise_only_tells_noise_from_change(tmp_path):
    "The allowance above lets 1e-8 through and stops a changed metric, a changed row and a new key."
    repo = tmp_path / "r"
    (repo / "metrics").mkdir(parents=True)
    f = repo / "metrics" / "m.json"
    f.write_text(json.dumps({"acc": 0.9714285714285714, "ci": [0.9, 1.0], "name": "x"}))
    for c in (["git", "init", "-q"], ["git", "add", "-A"],
              ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(c, cwd=repo, check=True, capture_output=True)
    f.write_text(json.dumps({"acc": 0.97142857, "ci": [0.9, 1.0], "name": "x"}))
    assert float_noise_only(repo, "metrics/m.json") == []
    f.write_text(json.dumps({"acc": 0.96, "ci": [0.9, 1.0], "name": "x", "new": 1}))
    assert len(float_noise_only(repo, "metrics/m.json")) == 2

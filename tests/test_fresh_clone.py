"""A fresh clone stays clean on any x86-64 CPU with AVX2: `git clone`, the README's run command, then
`git status --porcelain` is empty. The run writes only ignored files (data/, artifacts/, reports/) and git-tracked
files byte-identical to the committed ones (dvc.lock, metrics/, plots/), whichever CPU wrote those: nothing tracked
holds a wall time, and params.yaml's `cpu_kernels: portable` holds PyTorch, oneDNN, MKL, NumPy and OpenBLAS to
kernels that compute the same bits on every such CPU (tests/test_cross_cpu.py checks that against an emulated CPU of
the other vendor). dvc.lock records the md5 of every DVC out — weights, ONNX file, report pages — so it is clean only
when all of them are identical.

When the test fails, its message says for each changed file whether only the last digits of numbers moved (the
arithmetic was not portable: a library computing outside the pinned kernels) or something a reader would see."""
import csv
import io
import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT, readme_commands, sh, tool_path

NOISE = 1e-5  # relative: a difference below it in every number of a file is last-digit noise, not a change


def _leaves(obj, path=""):
    "Every leaf of a JSON value with its path."
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, obj


def _cells(text: str, path: str):
    "A tracked file's values by position: JSON leaves, CSV cells, or dvc.lock's out hashes."
    if path.endswith(".json"):
        return dict(_leaves(json.loads(text)))
    if path == "dvc.lock":
        return {f"{s}: {o['path']}": o.get("md5") for s, st in yaml.safe_load(text)["stages"].items()
                for o in st.get("outs", [])}
    return {f"line {i} col {j}": v for i, row in enumerate(csv.reader(io.StringIO(text)), 1) for j, v in enumerate(row)}


def _noise(a, b) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return x == y or abs(x - y) <= NOISE * max(abs(x), abs(y))


def describe_changes(repo) -> list[str]:
    "One line per tracked file that differs from HEAD: noise in the last digits only, or what changed."
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    out = []
    for line in status.splitlines():
        path = line[3:]
        if line.startswith("??"):
            out.append(f"{path}: new file")
            continue
        old = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True, text=True).stdout
        try:
            a, b = _cells(old, path), _cells((repo / path).read_text(), path)
        except (ValueError, KeyError, TypeError, OSError, yaml.YAMLError):
            out.append(f"{path}: changed")
            continue
        diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        if path == "dvc.lock":
            out.append(f"dvc.lock: other md5 for {', '.join(diff)}" if diff else "dvc.lock: changed outside the outs")
        elif diff and all(_noise(a.get(k), b.get(k)) for k in diff):
            out.append(f"{path}: last digits only, in {len(diff)} numbers (first: {diff[0]} {a[diff[0]]!r} -> "
                       f"{b[diff[0]]!r}): the arithmetic was not portable")
        else:
            real = [k for k in diff if not _noise(a.get(k), b.get(k))]
            out.append(f"{path}: {', '.join(f'{k} {a.get(k)!r} -> {b.get(k)!r}' for k in real[:3])}")
    return out


@pytest.mark.slow
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
    changes = describe_changes(repo)
    assert not changes, "the run changed the clone's tracked files:\n" + "\n".join(changes)


def test_changes_are_found_and_told_apart(tmp_path):
    "An unchanged file passes; a number moved in its 8th digit is named as noise; a changed metric as what it is."
    repo = tmp_path / "r"
    (repo / "metrics").mkdir(parents=True)
    f = repo / "metrics" / "m.json"
    f.write_text(json.dumps({"acc": 0.9714285714285714, "ci": [0.9, 1.0], "name": "x"}))
    for c in (["git", "init", "-q"], ["git", "add", "-A"],
              ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(c, cwd=repo, check=True, capture_output=True)
    assert describe_changes(repo) == []
    f.write_text(json.dumps({"acc": 0.97142857, "ci": [0.9, 1.0], "name": "x"}))
    (noise,) = describe_changes(repo)
    assert "last digits only, in 1 numbers" in noise and ".acc" in noise
    f.write_text(json.dumps({"acc": 0.96, "ci": [0.9, 1.0], "name": "x", "new": 1}))
    (real,) = describe_changes(repo)
    assert ".acc 0.9714285714285714 -> 0.96" in real and ".new None -> 1" in real
    (repo / "plots").mkdir()
    (repo / "plots" / "h.csv").write_text("a\n1\n")
    assert "plots/: new file" in describe_changes(repo)

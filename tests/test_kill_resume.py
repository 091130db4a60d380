"""`derma-nb train` killed with SIGKILL at any point resumes and ends exactly where an uninterrupted run ends.

Real kills of a real process group: each kill point is a moment seen in the run's log lines or checkpoint files; the
run is then started again (after deleting `train.out` where DVC would) and its metrics/train.json and
plots/history.csv are compared with an uninterrupted run's (timings left out)."""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, tool_path
from derma_nb.cache import prepare_dataset
from derma_nb.config import CLASSES
from derma_nb.sample import make_synthetic_sample

pytestmark = pytest.mark.slow

PARAMS = {
    "seed": 0, "device": "cpu",
    "prepare": {"image_size": 32, "out": "prepared"},
    "model": {"arch": "resnet18", "weights": "none"},
    "train": {"phase1": {"epochs": 3, "lr": 1e-4},
              "phase2": {"epochs": 3, "lr": 1e-3, "unfreeze": 1, "augment": True},
              "batch_size": 16, "eval_batch_size": 64, "out": "model", "checkpoints": "checkpoints"},
}
TIMING_COLUMNS = ["seconds", "images_per_s"]
RUN_LIMIT_S = 300


@dataclass
class KillPoint:
    "When to kill: after a log line containing `after_line`, then (optionally) once `then_file` is rewritten."
    name: str
    after_line: str
    then_file: str | None = None
    delete_out: bool = False  # DVC deletes a stage's outputs (train.out) before rerunning it


KILL_POINTS = [
    KillPoint("phase 1, after epoch 1 is reported", "phase1 epoch 1/"),
    KillPoint("phase 1, between epochs 1 and 2", "phase1 epoch 1/", then_file="last.pt"),
    KillPoint("phase 2's first batch", "phase 2 starts from", delete_out=True),
    KillPoint("phase 2 epoch 1: best.pt written, last.pt not yet", "phase2 epoch 1/"),
    KillPoint("between phase 2 epochs 1 and 2", "phase2 epoch 1/", then_file="last.pt"),
    KillPoint("final save (after the last epoch's last.pt)", "phase2 epoch 3/", then_file="last.pt",
              delete_out=True),
]


def _env() -> dict:
    return {**os.environ, "PATH": tool_path(), "PYTHONPATH": str(ROOT), "DERMA_NB_TRACKING": "off",
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "2"}


def _start(cwd: Path) -> tuple[subprocess.Popen, queue.Queue]:
    "`derma-nb train` in its own process group; its stderr lines arrive on a queue (None at the end)."
    proc = subprocess.Popen(["derma-nb", "train"], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns if p.exists() else 0


def run_to_end(cwd: Path) -> str:
    "Run `derma-nb train` to completion; its stderr."
    proc, lines = _start(cwd)
    out = []
    while (line := lines.get(timeout=RUN_LIMIT_S)) is not None:
        out.append(line)
    assert proc.wait(timeout=60) == 0, "".join(out)
    return "".join(out)


def run_and_kill(cwd: Path, kp: KillPoint) -> str:
    "Start `derma-nb train`, SIGKILL its process group at the kill point; the log up to the kill."
    proc, lines = _start(cwd)
    out, watched, armed = [], cwd / PARAMS["train"]["checkpoints"] / (kp.then_file or "-"), None
    deadline = time.monotonic() + RUN_LIMIT_S
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.002)
            except queue.Empty:
                line = ""
            if line is None:
                pytest.fail(f"train ended before the kill point {kp.name!r}:\n{''.join(out)}")
            out.append(line)
            if armed is None and kp.after_line in line:
                if kp.then_file is None:
                    break
                armed = _mtime(watched)
            if armed is not None and _mtime(watched) != armed:
                break
        else:
            pytest.fail(f"kill point {kp.name!r} not reached in {RUN_LIMIT_S} s:\n{''.join(out)}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return "".join(out)


def outcome(cwd: Path) -> tuple[dict, pd.DataFrame]:
    "metrics/train.json and plots/history.csv (the timings are in reports/timings/train.json)."
    m = json.loads((cwd / "metrics" / "train.json").read_text())
    assert "timings" not in m and (cwd / "reports" / "timings" / "train.json").exists()
    hist = pd.read_csv(cwd / "plots" / "history.csv")
    assert not set(TIMING_COLUMNS) & set(hist.columns)
    return m, hist


def resumed_from(log: str) -> str:
    "What the restarted run says it resumed from."
    for line in log.splitlines():
        if line.startswith("resuming from"):
            return line.split(": ", 1)[1]
    return "fresh start (no checkpoint of this run)"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    "A tiny synthetic dataset prepared at 32 px, and params.yaml for a 3 + 3 epoch CPU run."
    root = tmp_path_factory.mktemp("kill")
    data = make_synthetic_sample(root / "data", lesions={c: 10 for c in CLASSES}, width=64, height=48, seed=3)
    prepare_dataset(data, root / "prepared", image_size=32, workers=1)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def trial_dir(workdir: Path, name: str, params: dict | None = None) -> Path:
    d = workdir / name
    d.mkdir()
    if params is None:
        shutil.copy(workdir / "params.yaml", d / "params.yaml")
    else:
        (d / "params.yaml").write_text(yaml.safe_dump(params))
    (d / "prepared").symlink_to(workdir / "prepared", target_is_directory=True)
    return d


def test_training_resumes_from_any_kill_point_to_the_same_result(workdir):
    t_start = time.monotonic()
    ref_dir = trial_dir(workdir, "uninterrupted")
    run_to_end(ref_dir)
    ref_metrics, ref_history = outcome(ref_dir)
    assert ref_metrics["epochs_run"] == 6
    p1, p2 = ref_history[ref_history.phase == 1], ref_history[ref_history.phase == 2]
    # the run this test needs: phase 2's first epoch beats phase 1 (so it rewrites best.pt phase 2 started from)
    assert p2.val_macro_f1.iloc[0] > p1.val_macro_f1.max(), ref_history

    rows, failures = [], []
    for i, kp in enumerate(KILL_POINTS):
        d = trial_dir(workdir, f"kill{i}")
        killed_log = run_and_kill(d, kp)
        if kp.delete_out:
            shutil.rmtree(d / PARAMS["train"]["out"], ignore_errors=True)
        log = run_to_end(d)
        metrics, history = outcome(d)
        same = metrics == ref_metrics and history.equals(ref_history)
        rows.append((kp.name, "yes" if kp.delete_out else "no", resumed_from(log), "yes" if same else "NO"))
        if not same:
            failures.append(f"{kp.name}: best {metrics['best']} vs {ref_metrics['best']}\n"
                            f"{history.compare(ref_history) if history.shape == ref_history.shape else history}")
        assert (d / PARAMS["train"]["out"] / "best.pt").exists()

    widths = [max(len(r[k]) for r in rows + [("kill point", "train.out deleted", "resumed from", "same")])
              for k in range(4)]
    print(f"\n{'kill point':<{widths[0]}} | {'train.out deleted':<{widths[1]}} | {'resumed from':<{widths[2]}} | same")
    for r in rows:
        print(" | ".join(f"{c:<{w}}" for c, w in zip(r, widths)))
    print(f"({len(KILL_POINTS)} kill points in {time.monotonic() - t_start:.0f} s)")
    assert not failures, "\n".join(failures)


def test_an_ensemble_killed_during_member_2_resumes_to_the_same_result(workdir):
    "Two members (train.members: 2): killed between member 2's first and second epoch, the rerun finds member 1 done."
    params = {**PARAMS, "train": {**PARAMS["train"], "members": 2}}
    ref_dir = trial_dir(workdir, "ensemble-uninterrupted", params)
    run_to_end(ref_dir)
    ref_metrics, ref_history = outcome(ref_dir)
    assert ref_metrics["ensemble"]["trained"] == 2 and sorted(set(ref_history.member)) == [1, 2]
    assert len(ref_metrics["ensemble"]["validation"]) == 4  # k = 1, 2, each averaged two ways

    d = trial_dir(workdir, "ensemble-killed", params)
    killed = run_and_kill(d, KillPoint("member 2, between epochs 1 and 2", "ensemble member 2 of 2",
                                       then_file="member2/last.pt"))
    assert "phase1 epoch 1/" in killed.split("ensemble member 2 of 2")[1]
    log = run_to_end(d)
    assert "member1/last.pt: phase 2, 3 epochs done (finished)" in log  # member 1 is not trained again
    assert "member2/last.pt: phase 1, 1 epochs done" in log
    metrics, history = outcome(d)
    assert metrics == ref_metrics, (metrics, ref_metrics)
    pd.testing.assert_frame_equal(history, ref_history)

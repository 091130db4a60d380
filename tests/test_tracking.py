"ClearML tracking: offline sessions hold what a stage reported, failures are recorded, outages fall back, leaks are caught."
import base64
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

import derma_nb.tracking as tracking
from clearml_session import read_offline_session
from derma_nb.runtime import sha256_file
from derma_nb.tracking import StageLogger, import_session, redact_url, resolve_mode, stage_task

SECRET = "S3cr3tValue0123456789abcdefXYZ"
ACCESS = "AKfakeAccessKey0123456789"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    "A scratch HOME and ClearML config, no ClearML/tracking variables from the outside, the tmp dir as cwd."
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for k in list(os.environ):  # the project's clearml.conf configures ClearML, nothing from outside
        if k.startswith(("CLEARML_API", "CLEARML_WEB", "CLEARML_FILES", "TRAINS_", "CLEARML_PROC", "CLEARML_CACHE",
                         "CLEARML_CONFIG")) or k == "DERMA_NB_TRACKING":
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    tracking._warned.clear()
    yield home


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report_everything(lg: StageLogger, weights: Path):
    for epoch in range(3):
        lg.scalars({"train_loss": 1.0 / (epoch + 1), "val_loss": 2.0 / (epoch + 1), "val_macro_f1": 0.1 * epoch,
                    "phase": "head"}, iteration=epoch)
    lg.scalars({"lr": 1e-3}, iteration=0, title="optim")
    lg.value("test_macro_f1", 0.5)
    lg.table("per_class", pd.DataFrame({"class": ["mel", "nv"], "recall": [0.4, 0.9]}))
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [3, 2, 1])
    lg.figure("loss_curve", fig)
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.imshow([[1, 2], [3, 4]])  # plotly conversion would drop it: stored as a PNG
    lg.figure("confusion", fig)
    plt.close(fig)
    lg.artifact("history", pd.DataFrame({"epoch": [0, 1, 2]}))
    lg.artifact("summary", {"best_epoch": 2})
    lg.model(weights, "resnet18-best", tags=["best"])
    lg.tags("extra-tag")
    lg.properties(commit="abc123", device="cpu")
    lg.text("hello from the stage")


def test_offline_session_holds_what_the_stage_reported(tmp_path):
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights" * 10)
    params = {"train": {"lr": 0.001, "epochs": 3, "arch": "resnet18", "sizes": [1, 2]}, "seed": 7}
    with stage_task("train", params, tags=["profile:sample", "data:synthetic", "debug"], run_id="r123",
                    out_dir="reports/clearml") as lg:
        assert lg.mode == "offline" and lg.task is not None
        report_everything(lg, weights)
    z = tmp_path / "reports" / "clearml" / "train.zip"
    assert z.is_file() and lg.session_zip == Path("reports/clearml/train.zip")
    s = read_offline_session(z)
    assert s["name"] == "train" and s["project"] == "derma-nb" and s["type"] == "training"
    assert s["status"] == "completed" and s["error"] is None
    assert s["params"] == {"train/lr": 0.001, "train/epochs": 3, "train/arch": "resnet18", "train/sizes": [1, 2],
                           "seed": 7}
    assert params == {"train": {"lr": 0.001, "epochs": 3, "arch": "resnet18", "sizes": [1, 2]}, "seed": 7}
    assert s["scalars"]["loss"]["train"] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert s["scalars"]["loss"]["val"] == [(0, 2.0), (1, 1.0), (2, 2 / 3)]
    assert [v for _, v in s["scalars"]["macro_f1"]["val"]] == pytest.approx([0.0, 0.1, 0.2])
    assert "phase" not in s["scalars"] and s["scalars"]["optim"]["lr"] == [(0, 0.001)]
    assert s["values"] == {"test_macro_f1": 0.5}
    assert s["tables"] == ["per_class"] and {"loss_curve", "confusion"} <= set(s["plots"])
    assert any(f.endswith(".png") and "/confusion/" in f for f in s["files"])
    assert {"history", "summary"} <= set(s["artifacts"]) and s["artifacts"]["history"]["file"] in s["files"]
    # the model by reference: its URI and sha256 as task properties, the weights not copied into the session
    assert s["properties"]["model resnet18-best"] == weights.resolve().as_uri()
    assert s["properties"]["model resnet18-best sha256"] == sha256_file(weights)
    assert s["properties"]["model resnet18-best tags"] == "best"
    assert not any(f.startswith("models/") for f in s["files"]) and z.stat().st_size < 200_000
    assert {"profile:sample", "data:synthetic", "debug", "run:r123", "extra-tag"} <= set(s["tags"])
    assert s["properties"]["commit"] == "abc123" and any("hello from the stage" in m for m in s["log"])
    # the working copy is gone; nothing written to HOME; no ClearML variables left for child processes
    assert not (tmp_path / "reports" / "clearml" / ".sessions").exists()
    # ClearML keeps its own last-task note in ~/.clearml/.session.json; nothing of the session goes to HOME
    assert [p.name for p in Path(os.environ["HOME"]).rglob("*") if p.is_file()] in ([], [".session.json"])
    assert not [k for k in os.environ if k.startswith(("CLEARML_PROC", "TRAINS_PROC", "CLEARML_CACHE"))]


def test_failed_stage_is_closed_as_failed_and_reraised(tmp_path):
    err = RuntimeError("disk full while writing best.pt")
    with pytest.raises(RuntimeError) as ei:
        with stage_task("train", {"lr": 0.1}, out_dir="out") as lg:
            lg.scalar("loss", "train", 0.9, 0)
            raise err
    assert ei.value is err
    s = read_offline_session(tmp_path / "out" / "train.zip")
    assert s["status"] == "failed" and "failed" in s["tags"]
    assert s["error"] == "RuntimeError: disk full while writing best.pt" and "disk full" in s["comment"]
    assert s["scalars"]["loss"]["train"] == [(0, 0.9)]  # what was reported before the failure is kept
    assert any("disk full" in m for m in s["log"])


def test_off_mode_writes_nothing_and_accepts_every_call(tmp_path):
    with stage_task("train", {"a": 1}, mode="off", out_dir="out") as lg:
        assert lg.task is None and lg.mode == "off"
        report_everything(lg, tmp_path / "missing.pt")
    assert not (tmp_path / "out").exists() and lg.session_zip is None


def test_env_overrides_the_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMA_NB_TRACKING", "off")
    with stage_task("eda", {}, mode="offline", out_dir="out") as lg:
        assert lg.mode == "off"
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("DERMA_NB_TRACKING", "offline")
    with stage_task("eda", {}, mode="off", out_dir="out") as lg:
        assert lg.mode == "offline"
    assert (tmp_path / "out" / "eda.zip").is_file()
    monkeypatch.setenv("DERMA_NB_TRACKING", "cloud")
    with pytest.raises(ValueError, match="DERMA_NB_TRACKING"):
        resolve_mode("offline")


def fake_server(monkeypatch, port):
    for k, p in (("CLEARML_API_HOST", port), ("CLEARML_WEB_HOST", port + 1), ("CLEARML_FILES_HOST", port + 2)):
        monkeypatch.setenv(k, f"http://127.0.0.1:{p}")
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", SECRET)


def test_unreachable_server_warns_once_and_continues_offline(tmp_path, monkeypatch, caplog):
    port = closed_port()
    fake_server(monkeypatch, port)
    with caplog.at_level(logging.INFO, logger="derma_nb"):
        with stage_task("baseline", {"C": 1.0}, mode="server", out_dir="out") as lg:
            lg.value("acc", 0.5)
        with stage_task("evaluate", {"C": 1.0}, mode="server", out_dir="out") as lg2:
            pass
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert f"127.0.0.1:{port}" in msg and "unreachable" in msg and "out/baseline.zip" in msg
    assert lg.mode == lg2.mode == "offline"
    text = caplog.text
    assert SECRET not in text and ACCESS not in text
    s = read_offline_session(tmp_path / "out" / "baseline.zip")
    assert s["name"] == "baseline" and s["values"] == {"acc": 0.5} and s["params"] == {"C": 1.0}
    assert (tmp_path / "out" / "evaluate.zip").is_file()


def test_server_init_failure_falls_back_offline(tmp_path, monkeypatch, caplog):
    fake_server(monkeypatch, closed_port())
    real = tracking._init_task

    def init(stage, project, tags, offline, task_type):
        if not offline:
            raise ConnectionError(f"login failed for {ACCESS}")
        return real(stage, project, tags, offline, task_type)

    monkeypatch.setattr(tracking, "reachable", lambda url, timeout=2.0: True)
    monkeypatch.setattr(tracking, "_init_task", init)
    with caplog.at_level(logging.WARNING, logger="derma_nb"):
        with stage_task("train", {}, mode="server", out_dir="out") as lg:
            lg.scalar("loss", "train", 1.0, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "continuing offline" in warnings[0] and ACCESS not in warnings[0]
    assert read_offline_session(tmp_path / "out" / "train.zip")["scalars"] == {"loss": {"train": [(0, 1.0)]}}


def test_redact_url_drops_credentials():
    assert redact_url("https://user:pa55@clearml.example.org:8008/v2?x=1") == "https://clearml.example.org:8008"


def test_import_without_clearml_and_off_mode_works():
    code = ("import sys; sys.modules['clearml'] = None\n"
            "from derma_nb.tracking import stage_task\n"
            "with stage_task('x', {}, mode='off') as lg: lg.scalar('a', 'b', 1.0, 0)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_without_clearml_the_stage_runs_untracked(tmp_path, monkeypatch, caplog):
    def missing():
        raise ImportError("No module named 'clearml'")

    monkeypatch.setattr(tracking, "_open_task", lambda *a, **k: missing())
    with caplog.at_level(logging.WARNING, logger="derma_nb"):
        with stage_task("prepare", {"a": 1}, mode="offline", out_dir="out") as lg:
            lg.scalar("x", "y", 1.0, 0)
    assert lg.mode == "off" and lg.task is None
    assert [r.getMessage() for r in caplog.records if "untracked" in r.getMessage()]


def test_tracking_leaves_the_random_state_alone(tmp_path):
    import random

    import numpy as np
    import torch

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    for mode in ("off", "offline"):
        random.seed(5), np.random.seed(5), torch.manual_seed(5)
        expected = draws()
        random.seed(5), np.random.seed(5), torch.manual_seed(5)
        with stage_task("train", {}, mode=mode, out_dir="out"):
            assert draws() == expected, mode  # ClearML's Task.init reseeds with 1337 unless told not to


def test_the_project_config_makes_a_stage_cheap(tmp_path):
    "report_use_subprocess: false comes from clearml.conf (ClearML's own setting): closing takes well under 5 s."
    import time

    t0 = time.perf_counter()
    with stage_task("train", {"a": 1}, out_dir="out") as lg:
        lg.scalar("x", "y", 1.0, 0)
    assert time.perf_counter() - t0 < 5
    assert "report_use_subprocess: false" in tracking.project_conf().read_text()

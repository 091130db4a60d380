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
from derma_nb.tracking import (StageLogger, import_session, portable_session, public_export, read_offline_session,
                               redact_url, resolve_mode, scan_for_leaks, stage_task)

SECRET = "S3cr3tValue0123456789abcdefXYZ"
ACCESS = "AKfakeAccessKey0123456789"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    "A scratch HOME and ClearML config, no ClearML/tracking variables from the outside, the tmp dir as cwd."
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(home / "clearml.conf"))  # absent: ClearML defaults only
    for k in list(os.environ):
        if k.startswith(("CLEARML_API", "CLEARML_WEB", "CLEARML_FILES", "TRAINS_", "CLEARML_PROC", "CLEARML_CACHE")) \
                or k == "DERMA_NB_TRACKING":
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
    assert s["models"][0]["name"] == "resnet18-best" and s["models"][0]["tags"] == ["best"]
    assert f"models/{s['models'][0]['file']}" in s["files"]
    assert {"profile:sample", "data:synthetic", "debug", "run:r123", "extra-tag"} <= set(s["tags"])
    assert s["properties"]["commit"] == "abc123" and any("hello from the stage" in m for m in s["log"])
    # the working copy is gone; nothing written to HOME; no ClearML variables left for child processes
    assert not (tmp_path / "reports" / "clearml" / ".sessions").exists()
    assert not (Path(os.environ["HOME"]) / ".clearml").exists()
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


def test_portable_session_points_model_weights_into_the_extracted_folder(tmp_path):
    w = tmp_path / "best.pt"
    w.write_bytes(b"1234")
    with stage_task("export", {}, out_dir="out") as lg:
        lg.model(w, "onnx-model")
    d = portable_session(tmp_path / "out" / "export.zip", tmp_path / "extracted")
    f = json.loads((d / "task.json").read_text())["offline_output_models"][0]["weights"]["weights_filename"]
    assert Path(f).read_bytes() == b"1234" and Path(f).is_relative_to(d)
    assert callable(import_session)


def test_import_without_clearml_and_off_mode_works():
    code = ("import sys; sys.modules['clearml'] = None\n"
            "from derma_nb.tracking import stage_task\n"
            "with stage_task('x', {}, mode='off') as lg: lg.scalar('a', 'b', 1.0, 0)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.fixture
def planted(tmp_path, monkeypatch):
    "A reports folder with a server URL, a key from the environment, absolute paths and an embedded image."
    monkeypatch.setenv("CLEARML_API_HOST", "https://clearml.internal.example:8008")
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", SECRET)
    rep = tmp_path / "reports"
    (tmp_path / "metrics").mkdir()
    (tmp_path / "plots").mkdir()
    rep.mkdir()
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
    (rep / "index.html").write_text(
        "<html><body>\n"
        f"<p>Model: {tmp_path / 'artifacts' / 'model' / 'best.pt'}</p>\n"
        "<p>Scratch: /home/alice/derma/cache.npy and C:\\Users\\alice\\derma</p>\n"
        "<p>Tracked on <a href='https://clearml.internal.example:8008/projects/1'>ClearML</a>, see app.clear.ml</p>\n"
        f"<p>debug: credentials {SECRET}</p>\n"
        f'<img alt="lesion" src="data:image/png;base64,{png}">\n'
        "</body></html>\n")
    (rep / "train.html").write_text(f'<img src="data:image/jpeg;base64,{png}">')  # a stage report: not exported
    (tmp_path / "metrics" / "test.json").write_text(json.dumps({"macro_f1": 0.5, "data": "/tmp/derma-x/data"}))
    (tmp_path / "plots" / "roc.csv").write_text("fpr,tpr\n0,0\n1,1\n")
    return tmp_path


def test_leak_scan_flags_planted_leaks(planted):
    found = scan_for_leaks(planted / "reports", root=planted)
    kinds = {(f["file"], f["kind"]) for f in found}
    assert {("index.html", "absolute_path"), ("index.html", "clearml_host"), ("index.html", "secret"),
            ("index.html", "embedded_image"), ("train.html", "embedded_image")} <= kinds
    assert all(SECRET not in f["excerpt"] and "base64," not in f["excerpt"] for f in found)
    assert any(f["kind"] == "absolute_path" and f["line"] == 2 for f in found)
    assert scan_for_leaks(planted / "metrics")[0]["kind"] == "absolute_path"
    (planted / "plots" / "x.png").write_bytes(b"\x89PNG")
    assert [f["kind"] for f in scan_for_leaks(planted / "plots")] == ["image_file"]


def test_public_export_is_clean(planted):
    out = public_export(planted / "reports", planted / "public", root=planted)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("[!.]*") if p.is_file()) == [
        "index.html", "metrics/test.json", "plots/roc.csv"]
    assert scan_for_leaks(out, root=planted) == []
    html = (out / "index.html").read_text()
    assert "artifacts/model/best.pt" in html and "[image removed for public sharing]" in html
    assert SECRET not in html and "8008" not in html and "alice" not in html
    assert json.loads((out / "metrics" / "test.json").read_text())["macro_f1"] == 0.5


def test_public_export_raises_on_what_it_cannot_clean(planted):
    (planted / "plots" / "cam.png").write_bytes(b"\x89PNG")
    with pytest.raises(tracking.LeakError, match="image_file"):
        public_export(planted / "reports", planted / "public", files=("index.html", "plots/*.png"), root=planted)


def test_public_export_replaces_its_own_output_but_never_a_foreign_folder(planted):
    out = public_export(planted / "reports", planted / "public", root=planted)
    (out / "stale.json").write_text("{}")
    public_export(planted / "reports", out, root=planted)
    assert not (out / "stale.json").exists()
    (planted / "mine").mkdir()
    (planted / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by public_export"):
        public_export(planted / "reports", planted / "mine", root=planted)
    assert (planted / "mine" / "notes.txt").read_text() == "keep me"


def test_without_clearml_the_stage_runs_untracked(tmp_path, monkeypatch, caplog):
    def missing():
        raise ImportError("No module named 'clearml'")

    monkeypatch.setattr(tracking, "_import_clearml", missing)
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

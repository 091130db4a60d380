"""Run notifications: reports/summary.md after every `derma-nb run`, and the webhook post — against loopback servers.

The webhook URLs carry a secret-looking path (`SECRET`); every test checks it appears in no output and no file.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import copy_repo, tool_path

import derma_nb.cli as cli
import derma_nb.notify as notify

ROOT = Path(__file__).resolve().parents[1]
SECRET = "T0KEN-s3cr3t-9f8e7d"
STAGES = ["prepare", "eda", "baseline", "train", "decide", "evaluate", "explain", "export", "report"]


class Webhook:
    "A loopback webhook: answers `statuses` in turn (the last one forever), records every JSON body it gets."

    def __init__(self, statuses=(204,)):
        self.statuses, self.bodies = list(statuses), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0])
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/webhooks/42/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hooks = []

    def make(statuses=(204,)):
        hooks.append(Webhook(statuses))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def closed_port_url() -> str:
    with socket.socket() as s:  # bound, then closed: nobody listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/api/webhooks/42/{SECRET}"


def assert_no_secret(*texts):
    for t in texts:
        assert SECRET not in t and "/api/webhooks/42" not in t, t[-2000:]


def fake_dvc(rc: int, lines: list[str]) -> list[str]:
    "A command that prints DVC-like lines (a little apart, so stages take time) and exits with `rc`."
    code = f"import sys, time\nfor l in {lines!r}:\n    print(l, flush=True); time.sleep(0.05)\nsys.exit({rc})"
    return [sys.executable, "-c", code]


def successful_run_dir(tmp_path: Path) -> Path:
    "A folder holding what a successful sample run leaves: dvc.yaml, the decision, test metrics with CIs, the marker."
    root = tmp_path / "repo"
    (root / "reports").mkdir(parents=True)
    (root / "metrics").mkdir()
    (root / "data").mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "data/SYNTHETIC.md").write_text("# SYNTHETIC sample")
    test = {"n": 74, "balanced_accuracy": 0.9714, "macro_f1": 0.982, "mel_recall": 1.0,
            "ci": {"balanced_accuracy": {"value": 0.9714, "low": 0.9286, "high": 1.0},
                   "macro_f1": {"value": 0.982, "low": 0.9486, "high": 1.0},
                   "mel_recall": {"value": 1.0, "low": 1.0, "high": 1.0}}}
    (root / "metrics/test.json").write_text(json.dumps(test))
    (root / "reports/promotion.json").write_text(json.dumps(
        {"decision": "promoted", "arch": "tf_efficientnet_lite0", "reason": "all gates passed",
         "metrics": {k: test[k] for k in ("balanced_accuracy", "macro_f1", "mel_recall")}}))
    return root


def test_success_summary_is_written_and_posted_with_decision_metrics_and_stage_times(tmp_path, webhook, monkeypatch,
                                                                                        capfd):
    root, hook = successful_run_dir(tmp_path), webhook()
    monkeypatch.setenv(notify.WEBHOOK_ENV, hook.url)
    lines = [x for s in STAGES for x in (f"Running stage '{s}':", f"> python -m derma_nb.stage {s}",
                                         "Updating lock file 'dvc.lock'")]
    run = notify.run_logged(fake_dvc(0, lines))
    assert run.rc == 0 and all(run.stages[s]["status"] == "ran" and run.stages[s]["seconds"] > 0.03 for s in STAGES)

    out = notify.notify_run(run, None, root)
    text = out.read_text()
    assert out == root / "reports/summary.md"
    assert text.startswith("# derma-nb run: succeeded — model PROMOTED") and "SYNTHETIC sample" in text
    assert "all gates passed" in text and "74 images" in text
    assert "| Balanced accuracy | 0.971 [0.929, 1.000] |" in text and "| Macro F1 | 0.982 [0.949, 1.000] |" in text
    for s in STAGES:
        assert f"| {s} | ran | " in text
    assert len(hook.bodies) == 1 and hook.bodies[0] == {"content": text, "text": text}
    assert_no_secret(text, *capfd.readouterr())


def test_failed_run_reports_only_this_runs_decision_and_the_failing_cell(tmp_path):
    "After a failure, a promotion.json older than the run is not reported, and the executed notebook is named."
    root = successful_run_dir(tmp_path)
    (root / "reports/train.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "error", "ename": "WeightsUnavailable", "evalue": "resnet18: no weights", "traceback": []}]}]}))
    os.utime(root / "reports/promotion.json", (1, 1))
    run = notify.run_logged(fake_dvc(1, ["Stage 'prepare' didn't change, skipping", "Running stage 'train':",
                                         "ERROR: failed to reproduce 'train': failed to run: python -m "
                                         "derma_nb.stage train, exited with 1"]))
    text = notify.summary_text(run, root)
    assert text.startswith("# derma-nb run: FAILED at stage `train`")
    assert "stage **train** failed: `WeightsUnavailable: resnet18: no weights`" in text
    assert "`reports/train.ipynb`" in text and "failed to reproduce 'train'" in text
    assert "none from this run" in text and "PROMOTED" not in text
    assert "| prepare | up to date | – |" in text and "| train | **failed** |" in text
    assert "| decide | not run | – |" in text


def test_long_summary_is_cut_for_discord():
    body = notify.webhook_body("x\n" * 3000)
    assert len(body["content"]) <= notify.DISCORD_LIMIT and body["content"].endswith("reports/summary.md)")


def test_environment_wins_over_params(monkeypatch):
    monkeypatch.setenv(notify.WEBHOOK_ENV, "https://env.example/a")
    assert notify.webhook_url("https://param.example/b") == "https://env.example/a"
    monkeypatch.setenv(notify.WEBHOOK_ENV, "")
    assert notify.webhook_url("https://param.example/b") == "https://param.example/b"


def test_notify_params_never_reach_dvc(tmp_path, monkeypatch):
    "-S notify.* is the CLI's own: plain `dvc repro`, not an experiment that would store the URL in its commit."
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(notify, "run_logged",
                        lambda cmd: calls.append(cmd) or notify.PipelineRun(cmd, time.time(), time.time(), rc=0))
    monkeypatch.setattr(notify, "post_summary", lambda text, url, *a: calls.append(url) or True)
    assert cli.main(["run", "-S", f"notify.webhook_url=https://hooks.example/{SECRET}"]) == 0
    assert calls[0][2:] == ["dvc", "repro"]
    assert calls[1] == f"https://hooks.example/{SECRET}"  # the param is used, by the CLI only
    assert (tmp_path / "reports/summary.md").exists()


# ---------------------------------------------------------------------------------------------------------------
# through `derma-nb run` in a subprocess


def cli_run(cwd: Path, *args: str, env_extra: dict | None = None, timeout: int = 300):
    env = {**copy_env(), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "derma_nb.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def copy_env() -> dict:
    env = {**os.environ, "PATH": tool_path(), "PYTHONPATH": str(ROOT), "DERMA_NB_TRACKING": "off",
           "MPLBACKEND": "Agg", "DVC_NO_ANALYTICS": "1"}
    env.pop(notify.WEBHOOK_ENV, None)
    return env


@pytest.fixture
def no_dvc_repo(tmp_path):
    "A folder with params and data but no DVC project: `dvc repro` fails at once, before any stage."
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    return tmp_path


def test_unreachable_webhook_keeps_the_pipelines_exit_code_with_one_warning(no_dvc_repo):
    dvc_rc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=no_dvc_repo, env=copy_env(),
                            capture_output=True).returncode
    assert dvc_rc != 0
    t0 = time.time()
    r = cli_run(no_dvc_repo, "-v", "run", env_extra={notify.WEBHOOK_ENV: closed_port_url()})
    assert r.returncode == dvc_rc, r.stderr
    assert time.time() - t0 < 60  # connection refused: a few quick retries, no long waits
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if "webhook" in line]
    assert len(warnings) == 1 and warnings[0].startswith("notify: the webhook could not be reached"), warnings
    text = (no_dvc_repo / "reports/summary.md").read_text()
    assert text.startswith(f"# derma-nb run: FAILED (dvc exited with code {dvc_rc})") and "Last lines" in text
    assert_no_secret(r.stdout, r.stderr, text)


def test_webhook_answering_500_then_200_is_retried(no_dvc_repo, webhook):
    hook = webhook([500, 200])
    params = (no_dvc_repo / "params.yaml").read_text().replace('webhook_url: ""', f'webhook_url: "{hook.url}"')
    (no_dvc_repo / "params.yaml").write_text(params)  # the params route this time
    r = cli_run(no_dvc_repo, "run")
    assert r.returncode != 0
    assert len(hook.bodies) == 2 and hook.bodies[1]["content"] == (no_dvc_repo / "reports/summary.md").read_text()
    assert "notify: summary posted to the webhook (HTTP 200)" in r.stderr and "could not" not in r.stderr
    assert_no_secret(r.stdout, r.stderr, hook.bodies[1]["content"])


def test_a_bad_webhook_param_is_refused_without_showing_it(no_dvc_repo):
    r = cli_run(no_dvc_repo, "run", "-S", f"notify.webhook_url=hooks.example/{SECRET}")
    assert r.returncode == 2 and "notify.webhook_url must be empty or an http(s):// URL" in r.stderr
    text = (no_dvc_repo / "reports/summary.md").read_text()
    assert text.startswith("# derma-nb run: FAILED before the pipeline started") and "ParamsError" in text
    assert_no_secret(r.stdout, r.stderr, text)


@pytest.mark.slow
def test_planted_stage_failure_end_to_end(tmp_path, webhook):
    "A real `derma-nb run` whose prepare stage fails (metadata but no images): DVC's exit code, summary + post say why."
    if shutil.which("dvc", path=tool_path()) is None or shutil.which("papermill", path=tool_path()) is None:
        pytest.skip("dvc/papermill not installed")
    repo = tmp_path / "derma-nb"
    env = copy_repo(repo)
    (repo / "data").mkdir()
    (repo / "data/HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,mel\n")
    hook = webhook()
    r = subprocess.run([sys.executable, "-m", "derma_nb.cli", "run"], cwd=repo, capture_output=True, text=True,
                       env={**env, "DERMA_NB_TRACKING": "off", notify.WEBHOOK_ENV: hook.url}, timeout=300)
    assert r.returncode != 0 and f"dvc finished with exit code {r.returncode} in" in r.stderr, r.stderr[-3000:]
    text = (repo / "reports/summary.md").read_text()
    assert text.startswith("# derma-nb run: FAILED at stage `prepare`"), text
    assert "stage **prepare** failed: `DataError: " in text and "no images found" in text
    assert "`reports/prepare.ipynb`" in text and "failed to reproduce 'prepare'" in text
    assert "| prepare | **failed** |" in text and "| train | not run | – |" in text
    assert len(hook.bodies) == 1 and hook.bodies[0]["content"] == text
    assert_no_secret(r.stdout, r.stderr, text)
    # the summary is git-ignored and no DVC out: git sees nothing new, and DVC does not mention it
    assert "summary" not in subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=repo, env=env,
                                           capture_output=True, text=True).stdout
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert "summary.md" not in status.stdout + status.stderr

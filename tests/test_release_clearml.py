"""A release in ClearML server mode, against a loopback fake of the ClearML API server (tests/clearml_server.py): the
ONNX model is published to the model registry with the release tags and the run's tasks are tagged; an unreachable
server, a failed call or offline mode publish nothing and the record says why; a release that fails after publishing
takes the publish back; no credential reaches the record, the bundle or the logs."""
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

import derma_nb.tracking as tracking
from clearml_server import FakeClearML
from derma_nb.cli import main

SECRET = "S3cr3tValue0123456789abcdefXYZ"
ACCESS = "AKfakeAccessKey0123456789"
RUN_TASKS = [{"id": "t-train", "name": "train", "tags": ["run:abc", "debug"], "project": "p0"},
             {"id": "t-export", "name": "export", "tags": ["run:abc"], "project": "p0"},
             {"id": "t-other", "name": "train", "tags": ["run:zzz"], "project": "p0"}]


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    "The files of a promoted run on real data (stand-ins: a release hashes them, never loads them), committed in git."
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for k in list(os.environ):  # ClearML is configured by each test, nothing from outside
        if k.startswith(("CLEARML_", "TRAINS_")) or k == "DERMA_NB_TRACKING":
            monkeypatch.delenv(k)
    for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, "t@t" if "EMAIL" in k else "t")
    tracking._warned.clear()
    root = tmp_path / "run"
    files = {"artifacts/release/model.pt": "weights", "artifacts/export/model.onnx": "onnx",
             "artifacts/export/model.onnx.json": "{}", "reports/model_card.md": "# Card\n\n## Model\n",
             "metrics/test.json": json.dumps({"n": 74, "macro_f1": 0.9, "ci": {"macro_f1": {"low": 0.8, "high": 1.0}}}),
             "reports/promotion.json": json.dumps({"decision": "promoted", "run_id": "abc", "arch": "lite0"}),
             "artifacts/prepared/manifest.json": json.dumps({"synthetic": False, "dataset_sha256": "d" * 64}),
             "dvc.lock": "schema: '2.0'\n", "params.yaml": "seed: 0\n", ".gitignore": "/artifacts\n/reports\n"}
    for f, text in files.items():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(text)
    for c in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "run"]):
        git(root, *c)
    monkeypatch.chdir(root)
    return root


def server_env(monkeypatch, url, secret=SECRET):
    "Server mode against `url`, the credentials in the environment (as the project's clearml.conf asks)."
    monkeypatch.setenv("DERMA_NB_TRACKING", "server")
    monkeypatch.setenv("CLEARML_API_HOST", url)
    monkeypatch.setenv("CLEARML_WEB_HOST", url)
    monkeypatch.setenv("CLEARML_FILES_HOST", url)
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", secret)


def release(capfd, caplog, *argv):
    "`derma-nb release ARGV` in the current folder: (exit code, everything it printed or logged)."
    with caplog.at_level(logging.INFO):
        rc = main(["release", *argv])
    out = capfd.readouterr()
    return rc, out.out + out.err + caplog.text


def record(repo, version="v1.0.0"):
    return json.loads((repo / f"releases/{version}.json").read_text())


def no_secret(repo, text):
    "No credential in what was printed or logged, in the records or in the bundles."
    files = [p.read_text() for p in (repo / "releases").glob("*.json")] + [
        p.read_text() for p in (repo / "reports/release").rglob("*.json")]
    return not any(s in t for s in (SECRET, ACCESS) for t in [text, *files])


def clearml_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "ClearML" in r.getMessage()]


def test_server_mode_publishes_the_model_and_tags_the_run_tasks(repo, monkeypatch, capfd, caplog):
    with FakeClearML(ACCESS, SECRET, tasks=RUN_TASKS) as srv:
        server_env(monkeypatch, srv.url)
        rc, said = release(capfd, caplog, "--version", "1.0.0", "--reviewer", "Dr A", "--note", "pages read",
                           "--stage", "prod")
    assert rc == 0, said
    tags = ["release:v1.0.0", "stage:prod"]
    # what the server was asked: a login with the keys (the fake checks them; a process that ran ClearML offline
    # before logs its old sessions in too), then, with the token, the model registered, the run's tasks tagged and
    # the model published
    assert srv.calls[0]["endpoint"] == "auth.login"
    assert all(c["auth"] == ("Basic" if c["endpoint"] == "auth.login" else "Bearer") for c in srv.calls)
    assert [e for e in srv.endpoints() if e in ("models.create", "tasks.edit", "models.set_ready")] == [
        "models.create", "tasks.edit", "tasks.edit", "models.set_ready"]
    (create,) = srv.bodies("models.create")
    assert create["uri"] == (repo / "artifacts/export/model.onnx").resolve().as_uri()
    assert create["name"] == "lite0 v1.0.0" and create["tags"] == tags and create["framework"] == "ONNX"
    assert create["project"] == "p0" and create["task"] == "t-export" and create["ready"] is False
    assert "sha256" in create["comment"] and "Dr A" in create["comment"]
    (model_id, model), = srv.models.items()
    assert model["ready"] and srv.bodies("models.set_ready") == [{"model": model_id, "publish_task": False,
                                                                   "method": "get"}]
    assert srv.tasks["t-train"]["tags"] == ["run:abc", "debug", *tags]
    assert srv.tasks["t-export"]["tags"] == ["run:abc", *tags] and srv.tasks["t-other"]["tags"] == ["run:zzz"]
    # what the record says: what was published and on which tasks (no server address: the record is in git)
    c = record(repo)["clearml"]
    assert "127.0.0.1" not in json.dumps(record(repo))
    assert c == {"published": True, "mode": "server", "project": "derma-nb", "model_id": model_id,
                 "name": "lite0 v1.0.0", "model": "artifacts/export/model.onnx", "tags": tags,
                 "tasks": [{"id": "t-train", "name": "train", "added": tags},
                           {"id": "t-export", "name": "export", "added": tags}]}
    assert json.loads((repo / "reports/release/v1.0.0/release.json").read_text())["clearml"] == c
    assert {"model@v1.0.0", "model#prod#1"} <= set(git(repo, "tag").split())
    assert not clearml_warnings(caplog) and f"published as model {model_id}" in said
    assert no_secret(repo, said)

    rc, said = release(capfd, caplog, "--show", "1.0.0")
    assert rc == 0 and (f"ClearML: published as model {model_id} (release:v1.0.0, stage:prod), "
                        "2 task(s) of the run tagged") in said


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_releases_unpublished_with_one_warning(repo, monkeypatch, capfd, caplog):
    port = closed_port()
    server_env(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("DERMA_NB_TRACKING")  # server mode from params.yaml this time
    (repo / "params.yaml").write_text("seed: 0\ntracking:\n  mode: server\n")
    rc, said = release(capfd, caplog, "--version", "1.0.0", "--reviewer", "Dr A", "--note", "pages read")
    assert rc == 0, said
    c = record(repo)["clearml"]
    assert c["published"] is False and c["mode"] == "server"
    assert c["why"] == "the ClearML server did not answer"
    assert c["would_publish"] == {"model": "artifacts/export/model.onnx", "name": "lite0 v1.0.0",
                                  "tags": ["release:v1.0.0"]}
    (warning,) = clearml_warnings(caplog)
    assert "v1.0.0 not published" in warning and f"server http://127.0.0.1:{port} did not answer" in warning
    assert "model@v1.0.0" in git(repo, "tag").split()  # released all the same
    rc, said = release(capfd, caplog, "--show", "1.0.0")
    assert "ClearML: not published (the ClearML server did not answer); release:v1.0.0 would be" in said
    assert no_secret(repo, said)


def test_offline_mode_contacts_no_server(repo, monkeypatch, capfd, caplog):
    with FakeClearML(ACCESS, SECRET, tasks=RUN_TASKS) as srv:
        server_env(monkeypatch, srv.url)
        monkeypatch.delenv("DERMA_NB_TRACKING")  # params.yaml's tracking.mode: offline by default
        rc, said = release(capfd, caplog, "--version", "1.0.0", "--reviewer", "Dr A", "--note", "pages read")
    assert rc == 0, said
    assert srv.calls == []
    c = record(repo)["clearml"]
    assert c == {"published": False, "mode": "offline", "why": "tracking mode offline",
                 "would_publish": {"model": "artifacts/export/model.onnx", "name": "lite0 v1.0.0",
                                   "tags": ["release:v1.0.0"]}}
    assert not clearml_warnings(caplog) and "v1.0.0 not published to the model registry: tracking mode offline" in said


def test_a_call_that_fails_takes_the_publish_back_and_the_release_says_so(repo, monkeypatch, capfd, caplog):
    with FakeClearML(ACCESS, SECRET, tasks=RUN_TASKS, fail={"models.set_ready"}) as srv:
        server_env(monkeypatch, srv.url)
        rc, said = release(capfd, caplog, "--version", "1.0.0", "--reviewer", "Dr A", "--note", "pages read")
    assert rc == 0, said
    c = record(repo)["clearml"]
    assert c["published"] is False and "failed while publishing" in c["why"] and "models.set_ready" in c["why"]
    assert c["why"].endswith("nothing of it was left there")
    assert srv.models == {} and len(srv.bodies("models.delete")) == 1  # the draft model is gone, the tags taken off
    assert {t["id"]: t["tags"] for t in srv.tasks.values()} == {t["id"]: t["tags"] for t in RUN_TASKS}
    assert len(clearml_warnings(caplog)) == 1 and "model@v1.0.0" in git(repo, "tag").split()
    assert no_secret(repo, said)


def test_refused_credentials_publish_nothing_and_quote_no_secret(repo, monkeypatch, capfd, caplog):
    with FakeClearML(ACCESS, "another secret", tasks=RUN_TASKS) as srv:
        server_env(monkeypatch, srv.url)
        rc, said = release(capfd, caplog, "--version", "1.0.0", "--reviewer", "Dr A", "--note", "pages read")
    assert rc == 0, said
    assert set(srv.endpoints()) == {"auth.login"}
    c = record(repo)["clearml"]
    assert c["published"] is False and c["why"].startswith("ClearML unavailable (LoginError") and srv.url not in c["why"]
    assert len(clearml_warnings(caplog)) == 1 and no_secret(repo, said)


def test_a_release_that_fails_after_publishing_takes_the_publish_back(repo, monkeypatch, capfd, caplog):
    "GTO cannot tag (the tag exists, made by hand; the version check is bypassed to reach GTO): nothing is kept."
    import derma_nb.bundle as bundle

    head = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "model@v2.0.0", "-m", "by hand")
    monkeypatch.setattr(bundle, "release_checks", lambda root, version, force=False: [])
    with FakeClearML(ACCESS, SECRET, tasks=RUN_TASKS) as srv:
        server_env(monkeypatch, srv.url)
        rc, said = release(capfd, caplog, "--version", "2.0.0", "--reviewer", "Dr A", "--note", "pages read")
    assert rc == 2 and "v2.0.0 not released (nothing kept):" in said and "Traceback" not in said
    assert srv.bodies("models.set_ready") and srv.bodies("models.delete")  # published, then taken back
    assert srv.models == {}
    assert {t["id"]: t["tags"] for t in srv.tasks.values()} == {t["id"]: t["tags"] for t in RUN_TASKS}
    assert git(repo, "rev-parse", "HEAD") == head and not (repo / "releases/v2.0.0.json").exists()
    assert not (repo / "reports/release/v2.0.0").exists() and no_secret(repo, said)


def test_a_bad_tracking_mode_is_one_clear_error(repo, monkeypatch, capfd, caplog):
    monkeypatch.setenv("DERMA_NB_TRACKING", "cloud")
    rc, said = release(capfd, caplog, "--version", "1.0.0", "--reviewer", "Dr A", "--note", "pages read")
    assert rc == 2 and "derma-nb release: error: tracking mode 'cloud' is not one of" in said
    assert "Traceback" not in said and not (repo / "releases").exists()


def test_without_clearml_installed_a_server_mode_release_says_so(repo):
    code = ("import sys; sys.modules['clearml'] = None\n"
            "from derma_nb.bundle import release\n"
            "c = release('.', '1.0.0', 'Dr A', 'pages read')['clearml']\n"
            "print(c['published'], c['why'])")
    env = {**os.environ, "DERMA_NB_TRACKING": "server", "CLEARML_API_HOST": f"http://127.0.0.1:{closed_port()}"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("False ClearML unavailable (ModuleNotFoundError") and "Traceback" not in r.stderr

"""The release boundary on the sample run: a reviewer's sign-off as a git record + GTO tag + bundle, refusals that leave
nothing behind, and serving that says whether its model is released, unreviewed or rejected."""
import hashlib
import json
import shutil
import subprocess

import pytest

from derma_nb.cli import main

pytestmark = pytest.mark.slow


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def released(run, tmp_path_factory):
    "A copy of the sample run's repository (the first test commits its outputs and releases it): (repo, env)."
    src, env, _ = run
    repo = tmp_path_factory.mktemp("release") / "derma-nb"
    shutil.copytree(src, repo, symlinks=True)
    return repo, env


def release_cli(repo, monkeypatch, capsys, *argv):
    "`derma-nb ARGV` in `repo`: (exit code, stdout, stderr)."
    monkeypatch.chdir(repo)
    for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, "t@t" if "EMAIL" in k else "t")
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error(err, want):
    "One `derma-nb release: error:` line, naming `want`, and no traceback."
    lines = [line for line in err.splitlines() if line.startswith("derma-nb release: error:")]
    return len(lines) == 1 and want in lines[0] and "Traceback" not in err


def nothing_left(repo, version):
    "No record, tag or bundle of `version`, and git's working tree as it was."
    assert not (repo / f"releases/{version}.json").exists()
    assert f"model@{version}" not in git(repo, "tag").split()
    assert not (repo / f"reports/release/{version}").exists()


def test_release_refuses_synthetic_then_releases_with_force(released, monkeypatch, capsys):
    repo, _ = released
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the sample run", "--allow-empty")
    head = git(repo, "rev-parse", "HEAD")
    rc, out, err = release_cli(repo, monkeypatch, capsys, "release", "--version", "1.0.0", "--reviewer", "Dr A",
                               "--note", "pages read")
    assert rc == 2 and one_error(err, "SYNTHETIC") and "--force" in err
    assert git(repo, "rev-parse", "HEAD") == head
    nothing_left(repo, "v1.0.0")

    rc, out, err = release_cli(repo, monkeypatch, capsys, "release", "--version", "1.0.0", "--reviewer", "Dr A",
                               "--note", "pages read", "--caveat", "pipeline test only", "--stage", "prod", "--force")
    assert rc == 0, err
    assert "released v1.0.0 (prod)" in out
    assert {"model@v1.0.0", "model#prod#1"} <= set(git(repo, "tag").split())
    assert git(repo, "cat-file", "-t", "model@v1.0.0") == "tag"  # annotated
    assert git(repo, "rev-list", "-n1", "model@v1.0.0") == git(repo, "rev-parse", "HEAD")
    assert git(repo, "show", "--name-only", "--format=", "HEAD") == "releases/v1.0.0.json"
    rec = json.loads((repo / "releases/v1.0.0.json").read_text())
    assert rec["reviewer"] == "Dr A" and rec["caveats"] == ["pipeline test only"] and rec["stage"] == "prod"
    assert rec["data"]["synthetic"] and any("SYNTHETIC" in r for r in rec["forced"])
    assert rec["git_commit"] == head and rec["run_id"] and len(rec["onnx"]["sha256"]) == 64
    assert rec["test_metrics"]["macro_f1"]["low"] is not None and rec["clearml"]["published"] is False
    bundle = repo / "reports/release/v1.0.0"
    assert {p.name for p in bundle.iterdir()} >= {"model.onnx", "model.onnx.json", "model_card.md", "model_card.html",
                                                  "release.json", "public", "model.int8.ort", "model.int8.ort.json"}
    mobile = bundle / "model.int8.ort"  # the int8 model for phones, named in the record, calibrated on training images
    assert rec["mobile"]["sha256"] == hashlib.sha256(mobile.read_bytes()).hexdigest()
    assert rec["mobile"]["bytes"] < (bundle / "model.onnx").stat().st_size / 3
    assert "training images" in rec["mobile"]["calibration"]
    assert json.loads((bundle / "release.json").read_text())["mobile"] == rec["mobile"]
    card = (bundle / "model_card.md").read_text()
    assert "Released v1.0.0 (prod)" in card and "Dr A" in card and "pipeline test only" in card
    assert "Not reviewed." in (repo / "reports/model_card.md").read_text()  # the pipeline's own card

    rc, out, _ = release_cli(repo, monkeypatch, capsys, "releases")
    assert rc == 0 and "v1.0.0" in out and "prod" in out and "SYNTHETIC" in out
    rc, out, _ = release_cli(repo, monkeypatch, capsys, "release", "--show", "v1.0.0")
    assert rc == 0 and "signed off by Dr A" in out and "macro F1" in out


def test_health_says_released_and_a_changed_byte_is_unreviewed(released, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from derma_nb.release import UNREVIEWED, model_release_status
    from derma_nb.serve import create_app

    repo, _ = released
    if not (repo / "releases/v1.0.0.json").exists():
        pytest.skip("needs the release made by the test above")
    monkeypatch.chdir(repo)
    onnx = repo / "artifacts/export/model.onnx"
    with TestClient(create_app(onnx, cam_model=None)) as client:
        h = client.get("/health").json()
    assert h["release"] == "released v1.0.0 (prod), signed off by Dr A"
    changed = repo / "changed.onnx"
    changed.write_bytes(onnx.read_bytes() + b"\0")
    assert model_release_status(changed) == UNREVIEWED == "UNREVIEWED candidate"


@pytest.mark.parametrize("case", ["no run", "same version twice", "dirty dvc.lock", "not semver"])
def test_bad_release_is_one_clear_error_and_leaves_nothing(released, case, monkeypatch, capsys, tmp_path):
    repo, _ = released
    version, argv = "2.0.0", ["--reviewer", "Dr A", "--note", "n", "--force"]
    if case == "no run":
        repo = tmp_path / "empty"
        repo.mkdir()
        git(repo, "init", "-q")
        want = "no run to release: missing model"
    elif case == "same version twice":
        if not (repo / "releases/v1.0.0.json").exists():
            pytest.skip("needs the release made by the first test")
        version, want = "1.0.0", "v1.0.0 is already released"
    elif case == "dirty dvc.lock":
        with open(repo / "dvc.lock", "a") as f:
            f.write("# changed\n")
        want = "dvc.lock has uncommitted changes"
    else:
        version, want = "1.0", "'1.0' is not a semantic version"
    tags, head = git(repo, "tag"), git(repo, "rev-parse", "HEAD") if case != "no run" else None
    try:
        rc, out, err = release_cli(repo, monkeypatch, capsys, "release", "--version", version, *argv)
    finally:
        if case == "dirty dvc.lock":
            git(repo, "checkout", "--", "dvc.lock")
    assert rc == 2 and one_error(err, want), err
    assert git(repo, "tag") == tags
    if head:
        assert git(repo, "rev-parse", "HEAD") == head
    if case != "same version twice":
        nothing_left(repo, "v" + version.lstrip("v"))


def test_a_rejected_model_is_refused_unless_allowed(run, tmp_path, monkeypatch, capsys):
    "predict and evaluate --data refuse a model whose run the gates rejected, and use it with --allow-rejected."
    from derma_nb.sample import make_synthetic_sample

    src, _, _ = run
    repo = tmp_path / "rejected"
    (repo / "artifacts/release").mkdir(parents=True)
    (repo / "reports").mkdir()
    shutil.copy2(src / "artifacts/release/model.pt", repo / "artifacts/release/model.pt")
    shutil.copy2(src / "params.yaml", repo / "params.yaml")
    (repo / "reports/promotion.json").write_text(json.dumps({"decision": "rejected"}))
    git(repo, "init", "-q")
    data = make_synthetic_sample(tmp_path / "clinic", lesions={c: 2 for c in ("nv", "mel", "bkl")})
    image = next((data / "images").glob("*.jpg"))
    model = str(repo / "artifacts/release/model.pt")
    for argv in (["predict", str(image), "--model", model],
                 ["evaluate", "--data", str(data), "--model", model, "--n-boot", "50", "--name", "clinic"]):
        rc, out, err = release_cli(repo, monkeypatch, capsys, *argv)
        assert rc == 2 and "REJECTED by the gates" in err and "--allow-rejected" in err and "Traceback" not in err
        rc, out, err = release_cli(repo, monkeypatch, capsys, *argv, "--allow-rejected")
        assert rc == 0, err
        said = out if argv[0] == "predict" else (repo / "reports/external/clinic.md").read_text()
        assert "REJECTED by the gates" in said  # the model line says what it is

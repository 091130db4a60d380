"Leak scan and public export: planted leaks are found, the public export is clean, foreign folders are safe."
import base64
import json

import pytest

from derma_nb.public import LeakError, public_export, scan_for_leaks

SECRET = "S3cr3tValue0123456789abcdefXYZ"


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
    with pytest.raises(LeakError, match="image_file"):
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

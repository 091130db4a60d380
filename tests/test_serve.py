"""`derma-nb serve` as a user meets it: a real uvicorn process on 127.0.0.1, and the page driven in headless Chromium.

The in-process checks (routes, bad uploads, micro-batching) are the examples in nbs/25_serve.ipynb.
"""
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    "A small released model (ResNet-18, 64 px, decisions for 1 view, synthetic) and its ONNX export."
    from derma_nb.export import export_checkpoint
    from derma_nb.model import build_model, save_model
    from derma_nb.runtime import seed_everything

    seed_everything(0)
    tmp = tmp_path_factory.mktemp("serve")
    decision = {"views": 1, "temperature": 1.0, "mel": {"threshold": 0.15, "sensitivity": 0.9,
                                                         "target_sensitivity": 0.85},
                "conformal": {"alpha": 0.1, "classwise": False, "qhat": 0.9, "n": 50}}
    pt = save_model(tmp / "model.pt", build_model("resnet18", "none").eval(), image_size=64, decision=decision,
                    data={"synthetic": True}, release={"run_id": "test"})
    onnx = export_checkpoint(pt, tmp / "model.onnx")
    image = tmp / "lesion.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(image)
    (tmp / "card.html").write_text("<html><body><h1>Model card</h1></body></html>")
    return {"pt": pt, "onnx": onnx, "image": image, "card": tmp / "card.html", "tmp": tmp}


@pytest.fixture(scope="module")
def server(served_model):
    "`python -m derma_nb.cli serve` in its own process on a free loopback port; stopped after the module."
    port = free_port()
    m = served_model
    cmd = [sys.executable, "-c", "import sys; from derma_nb.serve import serve; "
           f"serve({str(m['onnx'])!r}, port={port}, cam_model={str(m['pt'])!r}, card={str(m['card'])!r})"]
    proc = subprocess.Popen(cmd, cwd=m["tmp"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/health", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read()
    else:
        proc.kill()
        pytest.fail("the server did not answer /health within 30 s")
    yield url
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    assert "Traceback" not in out, out


def test_uvicorn_process_serves_predictions_and_errors(server, served_model):
    h = requests.get(server + "/health").json()
    assert (h["status"], h["format"], h["data"], h["views"]) == ("ok", "onnx", "SYNTHETIC", 1)
    assert h["sha256"] == __import__("hashlib").sha256(served_model["onnx"].read_bytes()).hexdigest()
    with open(served_model["image"], "rb") as f:
        r = requests.post(server + "/predict", files={"file": ("lesion.jpg", f, "image/jpeg")})
    assert r.status_code == 200, r.text
    j = r.json()
    assert abs(sum(j["probabilities"].values()) - 1) < 1e-3 and j["top_class"] in j["prediction_set"]
    assert isinstance(j["melanoma_suspected"], bool) and j["synthetic_model"] and "not a diagnosis" in j["notice"]
    # the same probabilities as `derma-nb predict` on the same file (rounded to 4 decimals in both)
    out = subprocess.run([sys.executable, "-m", "derma_nb.cli", "predict", str(served_model["image"]), "--model",
                          str(served_model["onnx"]), "--format", "json"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    cli = json.loads(out)["images"][0]
    assert {c: cli[f"prob_{c}"] for c in j["probabilities"]} == j["probabilities"]
    # bad uploads: a 4xx with one sentence, and the server keeps serving
    huge = b"\xff\xd8" + b"0" * (21 * 2**20)
    bad = {415: ("notes.txt", b"not an image", "text/plain"), 400: ("empty.jpg", b"", "image/jpeg"),
           422: ("fake.jpg", b"\xff\xd8 truncated", "image/jpeg"), 413: ("huge.jpg", huge, "image/jpeg")}
    for code, f in bad.items():
        r = requests.post(server + "/predict", files={"file": f})
        assert r.status_code == code and list(r.json()) == ["error"] and r.json()["error"], (code, r.text)
    assert requests.post(server + "/predict", data={"x": "1"}).status_code == 422  # no file field
    assert requests.get(server + "/model-card").text.startswith("<html>")
    assert requests.get(server + "/docs").ok and "/predict" in requests.get(server + "/openapi.json").json()["paths"]
    assert requests.get(server + "/health").json()["requests"] == 1  # only the good upload reached the model


def test_cam_overlay_and_its_absence(server, served_model, tmp_path):
    with open(served_model["image"], "rb") as f:
        j = requests.post(server + "/predict?cam=1", files={"file": ("l.jpg", f, "image/jpeg")}).json()
    png = base64.b64decode(j["cam"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == (64, 64) and j["cam_note"] is None
    # without the checkpoint: the prediction still comes, with a note saying why there is no overlay
    from fastapi.testclient import TestClient
    from derma_nb.serve import create_app

    with TestClient(create_app(served_model["onnx"], cam_model=tmp_path / "missing.pt")) as c:
        j = c.post("/predict?cam=1", files={"file": ("l.jpg", served_model["image"].read_bytes(), "image/jpeg")}).json()
    assert j["cam"] is None and "PyTorch checkpoint" in j["cam_note"] and j["top_class"]


class Chromium:
    "Headless Chromium driven over the DevTools protocol (websocket-client, in the lock)."

    def __init__(self, tmp: Path):
        import websocket

        port = free_port()
        self.proc = subprocess.Popen([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                                      f"--remote-debugging-port={port}", f"--user-data-dir={tmp}",
                                      "--window-size=1100,1000", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=1).json()
                ws = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                break
            except (requests.ConnectionError, StopIteration):
                time.sleep(0.2)
        else:
            self.close()
            pytest.fail("chromium did not open its DevTools port")
        self.ws, self.n = websocket.create_connection(ws, timeout=30, suppress_origin=True), 0

    def __call__(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expr: str):
        return self("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_uploads_an_image_and_shows_the_result(server, served_model, tmp_path):
    b = Chromium(tmp_path / "profile")
    try:
        b("Page.enable")
        b("Page.navigate", url=server + "/")
        for _ in range(100):
            if b.js("document.readyState") == "complete" and b.js("!!document.getElementById('file')"):
                break
            time.sleep(0.1)
        assert "not a diagnosis" in b.js("document.querySelector('.notice').textContent")
        assert "SYNTHETIC" in b.js("document.querySelector('.warn').textContent")
        node = b("DOM.querySelector", nodeId=b("DOM.getDocument")["root"]["nodeId"], selector="#file")["nodeId"]
        b("DOM.setFileInputFiles", nodeId=node, files=[str(served_model["image"])])
        b.js("document.querySelector('button[type=submit]').click()")
        for _ in range(300):
            if b.js("document.getElementById('result').style.display") == "block":
                break
            assert "error" not in (b.js("document.getElementById('status').className") or "")
            time.sleep(0.1)
        else:
            pytest.fail("no result on the page: " + str(b.js("document.getElementById('status').textContent")))
        top = b.js("document.getElementById('top').textContent")
        assert top.startswith("Most likely: ") and "%" in top
        assert b.js("document.querySelectorAll('#probs tbody tr').length") == 7
        assert b.js("document.getElementById('overlay').naturalWidth") == 64  # the Grad-CAM PNG decoded
        assert b.js("document.getElementById('set').textContent").startswith("Prediction set")
        shot = os.environ.get("DERMA_NB_PAGE_SHOT")  # where to keep a screenshot to look at
        if shot:
            b("Emulation.setDeviceMetricsOverride", width=1100, height=900, deviceScaleFactor=1, mobile=False)
            Path(shot).write_bytes(base64.b64decode(b("Page.captureScreenshot", format="png")["data"]))
    finally:
        b.close()


def test_serve_bench_measures_two_models_side_by_side(served_model, tmp_path):
    "benchmarks/serve_bench.py: one server per model, a row per model and client count, the model alone beside them."
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    other = tmp_path / "copy" / "model.onnx"
    other.parent.mkdir()
    shutil.copy(served_model["onnx"], other)
    shutil.copy(str(served_model["onnx"]) + ".json", str(other) + ".json")
    out = tmp_path / "serve"
    bench.main(["--model", str(served_model["onnx"]), str(other), "--clients", "1", "2", "--requests", "12",
                "--image", str(served_model["image"]), "--out", str(out)])
    r = json.loads(out.with_suffix(".json").read_text())
    assert [(Path(s["model"]).parent.name, s["clients"]) for s in r["serve"]] == [
        (served_model["onnx"].parent.name, 1), (served_model["onnx"].parent.name, 2), ("copy", 1), ("copy", 2)]
    assert all(s["requests"] == 12 and 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] and s["rps"] > 0 and s["views"] == 1
               for s in r["serve"])
    assert [Path(m["model"]).parent.name for m in r["model_alone"]] == [served_model["onnx"].parent.name, "copy"]
    assert all(0 < m["predict_p50_ms"] <= m["decode_and_predict_p50_ms"] for m in r["model_alone"])
    md = out.with_suffix(".md").read_text()
    assert md.count("| copy/model.onnx (") == 3 and "| model | views | clients |" in md

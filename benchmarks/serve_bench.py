"""Latency and throughput of `derma-nb serve` on loopback: p50/p95/p99 and requests/s at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_bench.py --model artifacts/export/model.onnx          # the pipeline's export
    python benchmarks/serve_bench.py --model M.onnx --views 1 8 --image lesion.jpg --out reports/benchmarks_serve
    python benchmarks/serve_bench.py --model ensemble.onnx single.onnx --views 1 --clients 1   # side by side

The server runs in its own process (uvicorn, as `derma-nb serve` starts it, Grad-CAM off); the clients are threads in
this process, each with one keep-alive connection, posting the same JPEG as multipart form data, as a browser does.
Beside it, in the same run: the model alone (ONNX Runtime, one image, the same views) through `Predictor`, which is
the floor the HTTP path adds to. Both share this machine's cores with the clients: the figures are end to end.
"""
import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ham10000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_image(tmp: Path) -> Path:
    "A real HAM10000 JPEG when the shared copy is here, else a random 600x450 JPEG (the HAM10000 original size)."
    found = sorted((SHARED / "images").glob("*.jpg"))[:1] if (SHARED / "images").is_dir() else []
    if found:
        return found[0]
    from PIL import Image

    path = tmp / "lesion.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (450, 600, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def multipart(image: Path) -> tuple[bytes, str]:
    boundary = "derma-nb-bench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(model: str, views: int | None, port: int, max_batch: int) -> subprocess.Popen:
    code = ("from derma_nb.serve import serve; "
            f"serve({model!r}, port={port}, views={views!r}, cam_model=None, max_batch={max_batch})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            sys.exit(f"the server exited: {proc.stderr.read()}")
    proc.kill()
    sys.exit("the server did not answer /health within 60 s")


def load(port: int, body: bytes, ctype: str, clients: int, n: int) -> dict:
    "`n` requests from `clients` threads with keep-alive connections: latency percentiles (ms) and requests/s."
    lat, lock, left, errors = [], threading.Lock(), [n], []

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            c.request("POST", "/predict", body, {"Content-Type": ctype})
            r = c.getresponse()
            r.read()
            dt = time.perf_counter() - t0
            with lock:
                (lat.append(dt) if r.status == 200 else errors.append(r.status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    if errors:
        sys.exit(f"{len(errors)} requests failed: statuses {sorted(set(errors))}")
    ms = 1000 * np.array(lat)
    return {"clients": clients, "requests": n, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "rps": n / wall}


def model_alone(model: str, views: int | None, image: Path, repeat: int = 200) -> dict:
    "The same model in this process: decode + `Predictor.predict_arrays` of one image, and the ONNX call alone."
    from derma_nb.predict import Predictor

    pred = Predictor(model, views=views)
    data = image.read_bytes()
    from derma_nb.data import decode_for_model

    x = decode_for_model(data, pred.image_size, pred.resize, str(image))[None]
    t_full, t_model = [], []
    for k in range(repeat + 10):
        t0 = time.perf_counter()
        x = decode_for_model(data, pred.image_size, pred.resize, str(image))[None]
        t1 = time.perf_counter()
        pred.predict_arrays(x)
        t2 = time.perf_counter()
        if k >= 10:
            t_full.append(t2 - t0)
            t_model.append(t2 - t1)
    return {"views": pred.views, "decode_and_predict_p50_ms": 1000 * statistics.median(t_full),
            "predict_p50_ms": 1000 * statistics.median(t_model)}


def model_name(path: str) -> str:
    "A model's file with the folder above it (`export/model.onnx`), and its size."
    p = Path(path)
    return f"{p.parent.name}/{p.name} ({p.stat().st_size / 1e6:.1f} MB)"


def table(rows: list[dict]) -> str:
    out = ["| model | views | clients | requests | p50 ms | p95 ms | p99 ms | requests/s |",
           "|---|---|---|---|---|---|---|---|"]
    out += [f"| {model_name(r['model'])} | {r['views']} | {r['clients']} | {r['requests']} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.0f} |" for r in rows]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["artifacts/export/model.onnx"],
                    help="one or more exported models, measured one after another in this run")
    ap.add_argument("--views", type=int, nargs="+", default=[None], help="test-time views (default: the model's)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--out", help="write OUT.md and OUT.json (e.g. reports/benchmarks_serve)")
    a = ap.parse_args(argv)
    import tempfile

    image = a.image or default_image(Path(tempfile.mkdtemp()))
    body, ctype = multipart(image)
    rows, alone = [], []
    for model, views in ((m, v) for m in a.model for v in a.views):
        port = free_port()
        proc = start_server(model, views, port, a.max_batch)
        try:
            load(port, body, ctype, 4, 40)  # warm-up: sessions, threads, connections
            for c in a.clients:
                r = {"model": model, "views": views, **load(port, body, ctype, c, a.requests)}
                c_ = http.client.HTTPConnection("127.0.0.1", port)
                c_.request("GET", "/health")
                h = json.loads(c_.getresponse().read())
                r["views"] = h["views"]
                rows.append(r)
                print(f"{model_name(model)}, views {r['views']}, {c:>2} clients: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f}, "
                      f"p99 {r['p99_ms']:.1f}, {r['rps']:.0f} requests/s", flush=True)
        finally:
            proc.terminate()
            proc.wait()
        alone.append({"model": model, **model_alone(model, views, image)})
        print(f"{model_name(model)} alone, {alone[-1]['views']} view(s), one image: predict p50 {alone[-1]['predict_p50_ms']:.1f} ms, "
              f"decode + predict {alone[-1]['decode_and_predict_p50_ms']:.1f} ms", flush=True)
    import onnxruntime

    env = {"models": a.model, "image": f"{image.name} ({image.stat().st_size} bytes)", "cpus": os.cpu_count(),
           "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
           "command": "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:])}
    md = "\n".join([f"# derma-nb serve on loopback\n", f"`{env['command']}`; {env['cpus']} CPUs, onnxruntime "
                    f"{env['onnxruntime']}, image {env['image']}.\n", table(rows), "",
                    "The model alone in the same run (one image, no HTTP):\n",
                    "| model | views | predict p50 ms | decode + predict p50 ms |", "|---|---|---|---|",
                    *[f"| {model_name(r['model'])} | {r['views']} | {r['predict_p50_ms']:.1f} | "
                      f"{r['decode_and_predict_p50_ms']:.1f} |"
                      for r in alone]])
    print("\n" + md)
    if a.out:
        Path(a.out + ".md").write_text(md + "\n")
        Path(a.out + ".json").write_text(json.dumps({"env": env, "serve": rows, "model_alone": alone}, indent=2))
        print(f"wrote {a.out}.md and {a.out}.json")


if __name__ == "__main__":
    main()

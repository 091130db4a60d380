"""The int8 mobile model beside the fp32 ONNX model of a run, on that run's test split.

    python benchmarks/mobile_bench.py                       # this checkout's run (artifacts/export, artifacts/prepared)
    python benchmarks/mobile_bench.py --run ../realrun      # another run's folder, e.g. the `real` profile's

Makes the mobile model (`derma_nb.mobile.mobile_model`: static int8, calibrated on training images only, `.ort`) into
RUN/artifacts/mobile/, then measures both through `Predictor` with their stored views and decisions: file size,
batch-1 latency on this machine's threads, agreement of the decided class, and test balanced accuracy, macro F1 and
melanoma recall with lesion-bootstrap 95% intervals (image only). Writes reports/benchmarks_mobile.{json,md}.
"""
import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:
        return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT), help="a run's folder (artifacts/export/model.onnx, artifacts/prepared)")
    ap.add_argument("--out", default=str(ROOT / "reports"), help="folder for benchmarks_mobile.json / .md")
    ap.add_argument("--calls", type=int, default=100, help="single-image calls timed per model")
    args = ap.parse_args(argv)
    import onnxruntime
    import torch

    from derma_nb.cache import load_prepared
    from derma_nb.mobile import compare_models, mobile_model

    run = Path(args.run).resolve()
    fp32 = run / "artifacts/export/model.onnx"
    prep = load_prepared(run / "artifacts/prepared")
    t0 = time.perf_counter()
    mob = mobile_model(fp32, prep, run / "artifacts/mobile")
    made = time.perf_counter() - t0
    table = compare_models({"fp32 ONNX": fp32, "int8 mobile (.ort)": mob}, prep, calls=args.calls)
    side = json.loads((run / "artifacts/mobile" / (mob.name + ".json")).read_text())
    import yaml

    profile = (yaml.safe_load((run / "params.yaml").read_text()) or {}).get("profile", "?")
    info = {"run": f"a {profile} profile run (derma-nb run --profile {profile})", "data": "SYNTHETIC sample" if prep.manifest.get("synthetic") else "real HAM10000",
            "test images": len(prep.rows("test")), "image size": f"{prep.images.shape[1]} px",
            "cpu": f"{cpu_name()} ({os.cpu_count()} cores)", "threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "quantization": side["quantization"]["method"],
            "calibration": side["quantization"]["calibration"], "made in": f"{made:.0f} s",
            "command": "python benchmarks/mobile_bench.py" + (" --run RUN_FOLDER" if run != ROOT else ""),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks_mobile.json").write_text(json.dumps({"info": info, "models": table.to_dict("records")},
                                                           indent=2) + "\n")

    def ci(r, k):
        return f"{r[k]:.3f} [{r[k + '_low']:.3f}, {r[k + '_high']:.3f}]" if r[k] is not None else "–"
    md = ["# derma-nb mobile model vs fp32 ONNX", "", "| | |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in info.items()]
    md += ["", "| model | file | MB | views | batch-1 latency p50 (ms) | decided class agrees with fp32 | "
               "balanced accuracy | macro F1 | melanoma recall |", "|---|---|---:|---:|---:|---:|---|---|---|"]
    md += [f"| {r['model']} | `{r['file']}` | {r['MB']} | {r['views']} | {r['latency_ms_p50']} | {r['agreement']:.3f} | "
           f"{ci(r, 'balanced_accuracy')} | {ci(r, 'macro_f1')} | {ci(r, 'mel_recall')} |" for r in table.to_dict("records")]
    (out / "benchmarks_mobile.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out / 'benchmarks_mobile.md'}")


if __name__ == "__main__":
    main()

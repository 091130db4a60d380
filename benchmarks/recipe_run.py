"""Run a profile's recipe end to end on a bare PyTorch machine (a rented GPU box, say): no DVC, papermill or ClearML.

    python benchmarks/recipe_run.py --profile full --data PATH/TO/ham10000 [--set train.phase2.epochs=10 ...]
    python benchmarks/recipe_run.py --table recipe_runs/recipe_*.json     # a Markdown table of runs

The same library calls the stage notebooks make, in the same order: prepare (decode once into the cache), the
two-phase fit, the decisions fitted on the validation split (temperature, melanoma threshold, conformal q̂), then the
test split with 95% CIs (Wilson / lesion bootstrap). It prints what a GPU run is judged on: seconds and images/s per
phase, seconds per epoch, total wall time, peak GPU memory, and the test metrics, and writes all of it to
OUT/recipe_<name>.json (and the validation and test logits, every view, to OUT/recipe_<name>_logits.npz, for
seed ensembles or prior corrections afterwards). `--train-seed N` reseeds training only, on the same split.
Profiles come from profiles/NAME.yaml; `--set` overrides any dotted key, as `-S` does for DVC.
The pipeline (`derma-nb run --profile ...`) remains the way to get the reports; this is for timing a profile where
the pipeline's tools are not installed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_recipe(profile: str | None, data: str, out: Path, sets: dict, name: str, train_seed: int | None = None) -> dict:
    from derma_nb.cache import load_prepared, prepare_dataset
    from derma_nb.cli import profile_sets
    from derma_nb.config import load_params
    from derma_nb.decide import decide
    from derma_nb.display import ci_text
    from derma_nb.inference import predict_logits
    from derma_nb.metrics import HEADLINE, bootstrap_ci, classification_metrics
    from derma_nb.model import load_model
    from derma_nb.runtime import pick_device, seed_everything
    from derma_nb.train import train_model

    work = out / name
    prof = profile_sets(profile, ROOT / "profiles") if profile else {}
    overrides = {**prof, "data.dir": data,
                 "prepare.out": str(work / "prepared"), "train.out": str(work / "model"),
                 "train.checkpoints": str(work / "checkpoints"), **sets}
    p = load_params(ROOT / "params.yaml", overrides)
    seed_info, split_seed = seed_everything(p.seed), p.seed  # the split and the bootstrap follow `seed`
    dev = pick_device(p.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    sp = p.prepare.split
    prepare_dataset(p.data.dir, p.prepare.out, p.prepare.image_size, p.prepare.resize, (sp.train, sp.val, sp.test),
                    p.seed, p.data.lenient, p.prepare.workers)
    t_prepare = time.perf_counter() - t0

    if train_seed is not None:  # another training seed on the same split (the split follows `seed`)
        p = dataclasses.replace(p, seed=train_seed)
        seed_info = {"split": seed_info, "train": seed_everything(train_seed)}
    t0 = time.perf_counter()
    res = train_model(p, dev, metrics_dir=work / "metrics", plots_dir=work / "plots",
                      timings_path=work / "timings_train.json", resume=False)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()  # the decide stage: validation only
    prep = load_prepared(p.prepare.out)
    model, meta = load_model(res.best_path)
    dp, bs = p.decide, p.train.eval_batch_size
    val_logits = predict_logits(model, prep.images, prep.rows("val"), bs, dev, views=dp.views).numpy()
    d = decide(val_logits, prep.labels("val"), dp.views, dp.calibrate, dp.mel_sensitivity, dp.conformal_alpha,
               dp.conformal_classwise)
    t_decide = time.perf_counter() - t0

    t0 = time.perf_counter()  # the evaluate stage's headline: test split, lesion bootstrap
    rows = prep.rows("test")
    test_t = prep.table.loc[rows]
    y, groups = test_t.label.to_numpy(), test_t.group.to_numpy()
    test_logits = predict_logits(model, prep.images, rows, bs, dev, views=d.views).numpy()
    probs = d.probs(test_logits)
    np.savez_compressed(out / f"recipe_{name}_logits.npz", val=val_logits, test=test_logits, y_val=prep.labels("val"),
                        y_test=y, test_groups=groups.astype(str))  # for ensembles / prior corrections afterwards
    m = classification_metrics(y, probs, mel_specificity=p.evaluate.mel_specificity)
    ci = bootstrap_ci(y, probs, groups, metrics=tuple(HEADLINE), n_boot=p.evaluate.n_boot, seed=split_seed)
    t_eval = time.perf_counter() - t0

    tm = res.timings
    h = res.history
    epochs = [{"phase": int(r.phase), "epoch": int(r.epoch), "seconds": round(float(r.seconds), 2),
               "images_per_s": None if r.images_per_s != r.images_per_s else round(float(r.images_per_s), 1),
               "val_balanced_accuracy": round(float(r.val_balanced_accuracy), 4)} for r in h.itertuples()]
    return {
        "name": name, "profile": profile, "overrides": sets, "train_seed": train_seed,
        "profile_params": {k: v for k, v in prof.items() if k != "data.dir"},  # the profile as it was at this run
        "device": str(dev),
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "seed": seed_info, "image_size": p.prepare.image_size, "arch": p.model.arch,
        "images": {s: len(prep.rows(s)) for s in ("train", "val", "test")},
        "seconds": {"prepare": round(t_prepare, 1), "train": round(t_train, 1), "decide": round(t_decide, 1),
                    "evaluate": round(t_eval, 1), "total": round(time.perf_counter() - t_all, 1)},
        "train_timings": tm, "epochs": epochs,
        "best": {k: res.best[k] for k in ("metric", "value", "phase", "epoch")},
        "best_val": res.best["val"],
        "decision": {"views": d.views, "temperature": d.temperature, "mel_threshold": d.mel.get("threshold"),
                     "qhat": d.conformal.get("qhat")},
        "test": {k: {"value": m[k], "ci": ci_text(ci.get(k))} for k in HEADLINE},
        "peak_gpu_memory_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def summary_lines(r: dict) -> list[str]:
    "The figures a GPU run is judged on, as printed lines."
    tm, s = r["train_timings"], r["seconds"]
    per_phase = {ph: [e["seconds"] for e in r["epochs"] if e["phase"] == ph] for ph in (1, 2)}
    lines = [f"{r['name']}: {r['arch']} at {r['image_size']} px on {r['device']} ({r['device_name']}), "
             f"torch {r['torch']}; images train/val/test {r['images']['train']}/{r['images']['val']}/"
             f"{r['images']['test']}",
             f"  wall time: prepare {s['prepare']} s, train {s['train']} s, decide {s['decide']} s, evaluate "
             f"{s['evaluate']} s, total {s['total']} s"]
    for ph in (1, 2):
        secs = per_phase[ph]
        if secs:
            lines.append(f"  phase {ph}: {len(secs)} epochs, {tm.get(f'phase{ph}_seconds')} s, "
                         f"{tm.get(f'phase{ph}_images_per_s')} train img/s (median epoch), "
                         f"{float(np.median(secs)):.2f} s per epoch (median)")
    extra = {"features_seconds": "phase-1 features computed once",
             "cache_seconds": "frozen trunk loaded (train.trunk_cache)" if tm.get("cache_loaded") else
             "frozen trunk cached once"}
    lines += [f"  {what}: {tm[k]} s" for k, what in extra.items() if tm.get(k)]
    b = r["best"]
    lines.append(f"  best epoch: phase {b['phase']} epoch {b['epoch']}, val {b['metric']} {b['value']:.4f}; "
                 f"decision: {r['decision']['views']} views, T {r['decision']['temperature']:.3f}")
    lines += [f"  test {k}: {v['ci']}" for k, v in r["test"].items()]
    if r["peak_gpu_memory_GiB"] is not None:
        lines.append(f"  peak GPU memory (torch allocator): {r['peak_gpu_memory_GiB']} GiB")
    return lines


def _changes(r: dict) -> str:
    "A run's overrides of its profile, as Markdown code (prepare.workers is the machine's, not the recipe's)."
    return ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items() if k != "prepare.workers")


def runs_table(paths: list[str]) -> str:
    "A Markdown table of recipe runs (their JSON files): what changed, time, the chosen epoch, test metrics with CIs."
    rs = [json.loads(Path(f).read_text()) for f in paths]
    head = ["run", "profile + overrides", "device", "px", "total s", "phase 1 img/s", "phase 2 img/s",
            "s/epoch (phase 2)", "best (val)", "bal. acc.", "macro F1", "mel recall", "macro AUC", "peak GPU GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        tm, ph2 = r["train_timings"], [e["seconds"] for e in r["epochs"] if e["phase"] == 2]
        over = _changes(r)
        if r.get("train_seed") is not None:
            over = ", ".join(filter(None, [over, f"training seed {r['train_seed']}"]))
        over = over or "as profiled"
        b = r["best"]
        cells = [r["name"], f"{r['profile'] or 'params.yaml'}: {over}", r["device_name"], r["image_size"], r["seconds"]["total"],
                 tm.get("phase1_images_per_s"), tm.get("phase2_images_per_s"),
                 f"{float(np.median(ph2)):.2f}" if ph2 else "–", f"{b['metric']} {b['value']:.3f} (phase {b['phase']} "
                 f"epoch {b['epoch']})", *(r["test"][k]["ci"] for k in ("balanced_accuracy", "macro_f1", "mel_recall",
                                                                         "macro_auc")),
                 r["peak_gpu_memory_GiB"] if r["peak_gpu_memory_GiB"] is not None else "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def spread_table(paths: list[str]) -> str:
    "Runs that differ only in the training seed, grouped: mean ± SD over the seeds of the validation and test figures."
    groups: dict[str, list[dict]] = {}
    for f in paths:
        r = json.loads(Path(f).read_text())
        over = _changes(r) or "as profiled"
        groups.setdefault(f"{r['profile'] or 'params.yaml'}: {over}", []).append(r)

    def ms(xs) -> str:
        return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    head = ["setting", "training seeds", "best val (selection metric)", "test bal. acc.", "test macro F1",
            "test mel recall", "test macro AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, rs in groups.items():
        seeds = [r.get("train_seed") if r.get("train_seed") is not None else r["seed"]["seed"] for r in rs]
        cells = [setting, ", ".join(map(str, seeds)), ms([r["best"]["value"] for r in rs]),
                 *(ms([r["test"][k]["value"] for r in rs]) for k in ("balanced_accuracy", "macro_f1", "mel_recall",
                                                                     "macro_auc"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help="profiles/NAME.yaml (e.g. full, real); none = params.yaml as it is")
    ap.add_argument("--data", help="the HAM10000 folder (metadata CSV + images)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print a Markdown table of earlier runs and exit")
    ap.add_argument("--spread", nargs="+", metavar="JSON", help="print mean ± SD over training seeds per setting and exit")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted param")
    ap.add_argument("--name", help="name of this run (default: the profile)")
    ap.add_argument("--train-seed", type=int, help="seed for training only; the split keeps `seed` (for seed spread)")
    ap.add_argument("--out", default="recipe_runs", help="folder for the prepared cache, the model and the JSON")
    args = ap.parse_args(argv)
    if args.table:
        return print(runs_table(args.table), end="")
    if args.spread:
        return print(spread_table(args.spread), end="")
    if not args.data:
        ap.error("--data is required to run a recipe")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    name = args.name or args.profile or "params"
    out = Path(args.out)
    from derma_nb.cli import overrides
    from derma_nb.config import ParamsError

    try:
        sets = overrides(args.set)  # parsed as `derma-nb run -S` parses them
    except ParamsError as e:
        raise SystemExit(f"--set: expected KEY=VALUE ({e})") from None
    r = run_recipe(args.profile, args.data, out, sets, name, args.train_seed)
    (out / f"recipe_{name}.json").write_text(json.dumps(r, indent=1, default=str))
    print("\n".join(summary_lines(r)), flush=True)


if __name__ == "__main__":
    main()

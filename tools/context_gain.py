"""What the patient context (age, sex, body site) adds to models whose validation and test logits are stored — the GPU
seeds of `benchmarks/recipe_run.py` — with the pipeline's own decide stage: the same `decide` call with and without
the context (ratios counted on the training split, weight fitted and kept or dropped on validation, then τ, the
melanoma threshold and q̂), both reported on the test split. An analysis of stored predictions; the pipeline applies
the same in its decide stage.

    python tools/context_gain.py reports/gpu/recipe_real_lr1e3_logits.npz [...] [--data ../shared/data/ham10000]

The logits' rows are the prepared split's validation and test rows in order (recipe_run.py writes them so); the split
is recomputed from the data folder with the pipeline's defaults (seed 0, 0.8/0.1/0.1, known duplicates grouped).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("balanced_accuracy", "macro_f1", "mel_recall", "macro_auc")


def gains(logits_file: str | Path, prep, params) -> list[dict]:
    "Test metrics of the image-only and the patient-context decisions fitted on one file's validation logits."
    from derma_nb.context import fit_context
    from derma_nb.decide import class_prior, decide
    from derma_nb.metrics import classification_metrics

    d, dp = np.load(logits_file), params.decide
    val_t, test_t = prep.table.loc[prep.rows("val")], prep.table.loc[prep.rows("test")]
    if not (np.array_equal(d["y_val"], val_t.label) and np.array_equal(d["y_test"], test_t.label)):
        raise SystemExit(f"{logits_file}: its labels are not this split's validation/test labels, in order")
    args = dict(views=len(d["val"]), prior=class_prior(prep.labels("train")), tau=dp.prior_tau,
                max_f1_drop=dp.prior_max_f1_drop, mel_sensitivity=dp.mel_sensitivity, alpha=dp.conformal_alpha)
    context = fit_context(prep.table.loc[prep.rows("train")], prep.labels("train"), dp.context_age_edges)
    rows = []
    for name, extra in (("image only", {}), ("image + context", {"context": context, "table": val_t,
                                                                 "groups": prep.groups("val")})):
        dec = decide(d["val"], d["y_val"], **args, **extra)
        probs = dec.probs(d["test"], test_t)
        m = classification_metrics(d["y_test"], probs, y_pred=dec.predict(probs))
        rows.append({"file": Path(logits_file).name, "decision": name, "weight": dec.context.get("weight", 0.0),
                     "tau": dec.tau, **{k: m[k] for k in KEYS}})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logits", nargs="+", help="recipe_run.py's *_logits.npz files")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ham10000"), help="the HAM10000 folder")
    args = ap.parse_args(argv)
    from derma_nb.cache import prepare_dataset
    from derma_nb.config import load_params

    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:  # the split and metadata only: the images at the smallest size
        prep = prepare_dataset(args.data, tmp, image_size=16)
        rows = [r for f in args.logits for r in gains(f, prep, params)]
    print("| file | decision | weight | τ | " + " | ".join(KEYS) + " |\n" + "|---" * (4 + len(KEYS)) + "|")
    for r in rows:
        print(f"| {r['file']} | {r['decision']} | {r['weight']:.3f} | {r['tau']:g} | "
              + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |")
    for k in KEYS:
        delta = [b[k] - a[k] for a, b in zip(rows[::2], rows[1::2])]
        print(f"{k}: context minus image only, mean over {len(delta)} model(s): {np.mean(delta):+.3f} "
              f"({', '.join(f'{x:+.3f}' for x in delta)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

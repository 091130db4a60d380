"""How far a validation-fitted prior correction moves a finished run's balanced accuracy and macro F1, under three
rules for choosing τ on validation: best balanced accuracy, best macro F1, and the pipeline's own (`decide.prior_tau:
fit`: best balanced accuracy with macro F1 within `decide.prior_max_f1_drop` of τ = 0's). An analysis of stored
predictions; the pipeline applies its rule in the decide stage.

    python tools/prior_shift.py [--run-dir DIR]      # DIR: a checkout where `derma-nb run` finished (default .)
    python tools/prior_shift.py --logits reports/gpu/recipe_X_logits.npz [...]   # recipe_run.py runs (averaged)

The released model's calibrated probabilities (its stored decision: temperature, test-time views) on the validation
and test splits, then logit adjustment: predict argmax_c log p_c − τ·log prior_c, with prior the training split's class
frequencies. τ = 0 is the plain argmax the pipeline reports; τ = 1 undoes the training prior fully. τ is chosen on
**validation** (once for balanced accuracy, once for macro F1) and reported on test, with the τ grid as a table.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scores(y, pred) -> dict:
    "The pipeline's balanced accuracy and macro F1 (`label_metrics`) of predicted labels, and melanoma recall."
    from sklearn.metrics import recall_score

    from derma_nb.config import CLASSES
    from derma_nb.metrics import label_metrics

    m = label_metrics(y, np.eye(len(CLASSES))[pred])
    return {"balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "mel_recall": recall_score(y, pred, labels=[CLASSES.index("mel")], average="macro", zero_division=0)}


def adjusted(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    "Predictions after logit adjustment by τ·log prior (the pipeline's `derma_nb.decide.prior_corrected`)."
    from derma_nb.decide import prior_corrected

    return prior_corrected(probs, prior, tau)


def from_run(run_dir: str) -> tuple[dict, np.ndarray, str]:
    "Calibrated val/test probabilities of a finished pipeline run's released model, and its training prior."
    os.chdir(run_dir)
    from derma_nb.cache import load_prepared
    from derma_nb.config import load_params
    from derma_nb.decide import RELEASE_MODEL, Decision
    from derma_nb.inference import predict_logits
    from derma_nb.model import load_model

    p = load_params("params.yaml")
    prep = load_prepared(p.prepare.out)
    model, meta = load_model(RELEASE_MODEL)
    d = Decision(**meta["decision"])
    prior = np.bincount(prep.labels("train"), minlength=len(meta["classes"])) / len(prep.rows("train"))
    split = {s: (d.probs(predict_logits(model, prep.images, prep.rows(s), p.train.eval_batch_size, "cpu",
                                        views=d.views).numpy()), prep.labels(s)) for s in ("val", "test")}
    return split, prior, f"{meta['arch']}, {d.views} view(s), T {d.temperature:.3f}; training prior "


def from_logits(files: list[str]) -> tuple[dict, np.ndarray, str]:
    """Val/test probabilities from `benchmarks/recipe_run.py` logit files, each calibrated by its own decision fitted on
    validation, averaged over the files (several training seeds: an ensemble). The prior is the validation split's
    class frequencies (the split is stratified by diagnosis, so it is the training prior to within rounding)."""
    from derma_nb.config import CLASSES
    from derma_nb.decide import decide

    zs = [np.load(f) for f in files]
    y = {s: zs[0][f"y_{s}"] for s in ("val", "test")}
    if any((z["y_val"] != y["val"]).any() or (z["y_test"] != y["test"]).any() for z in zs):
        raise SystemExit("--logits: the files come from different splits (their labels differ)")
    ds = [decide(z["val"], y["val"], len(z["val"])) for z in zs]
    split = {s: (np.mean([d.probs(z[s]) for d, z in zip(ds, zs)], 0), y[s]) for s in ("val", "test")}
    prior = np.bincount(y["val"], minlength=len(CLASSES)) / len(y["val"])
    return split, prior, f"{len(files)} model(s) averaged ({', '.join(Path(f).stem for f in files)}); validation prior "


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=".", help="checkout of a finished run (artifacts/, params.yaml)")
    ap.add_argument("--logits", nargs="+", metavar="NPZ", help="recipe_run.py logit files instead (several: averaged)")
    ap.add_argument("--max-f1-drop", type=float, default=0.02, help="the pipeline rule's macro-F1 floor below τ = 0's")
    args = ap.parse_args(argv)
    from derma_nb.config import CLASSES

    split, prior, header = from_logits(args.logits) if args.logits else from_run(args.run_dir)
    grid = np.round(np.linspace(0, 1.5, 31), 2)
    rows = [(t, scores(split["val"][1], adjusted(split["val"][0], prior, t)),
             scores(split["test"][1], adjusted(split["test"][0], prior, t))) for t in grid]
    print(header + ", ".join(f"{c} {q:.3f}" for c, q in zip(CLASSES, prior)))
    print("| τ | val bal. acc. | val macro F1 | test bal. acc. | test macro F1 | test mel recall |\n|---|---|---|---|---|---|")
    for t, v, te in rows:
        if t in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5):
            print(f"| {t:.2f} | {v['balanced_accuracy']:.3f} | {v['macro_f1']:.3f} | {te['balanced_accuracy']:.3f} | "
                  f"{te['macro_f1']:.3f} | {te['mel_recall']:.3f} |")
    for metric in ("balanced_accuracy", "macro_f1"):
        t, v, te = max(rows, key=lambda r: (r[1][metric], -r[0]))  # ties: the smaller correction
        print(f"τ chosen on validation {metric}: {t:.2f} (val {v[metric]:.3f}) -> test balanced accuracy "
              f"{te['balanced_accuracy']:.3f}, macro F1 {te['macro_f1']:.3f}, melanoma recall {te['mel_recall']:.3f}")
    from derma_nb.decide import fit_prior_tau

    fit = fit_prior_tau(split["val"][0], split["val"][1], prior, args.max_f1_drop)
    te = scores(split["test"][1], adjusted(split["test"][0], prior, fit["tau"]))
    print(f"τ chosen by the pipeline's rule (macro F1 within {args.max_f1_drop:g} of τ = 0's on validation): "
          f"{fit['tau']:.2f} -> test balanced accuracy {te['balanced_accuracy']:.3f}, macro F1 {te['macro_f1']:.3f}, "
          f"melanoma recall {te['mel_recall']:.3f}")


if __name__ == "__main__":
    main()

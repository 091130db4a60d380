"""The pipeline's arithmetic in miniature, printed as one hash per step: run under the portable CPU arithmetic on two
CPUs (or on this one and an emulated one), it must print the same hashes.

Each step is the library code a stage runs: the sample's images decoded and resized (prepare), the random forest
(baseline), the two training phases with the pretrained EfficientNet-Lite0 — phase 1 on features computed once,
phase 2 on augmented images through the unfrozen last stage with the fused AdamW (train) — the decisions fitted on
validation logits (decide: temperature, prior correction, melanoma threshold, conformal q̂), the lesion bootstrap
(evaluate) and a Grad-CAM map and its overlay (explain).

    python tests/arithmetic_probe.py OUT_DIR [portable|native]
"""
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a).tobytes())
    return h.hexdigest()[:16]


def main(out: Path, mode: str) -> dict:
    from derma_nb.runtime import cpu_arithmetic, seed_everything

    arithmetic = cpu_arithmetic(mode)
    import torch

    from derma_nb.baseline import fit_random_forest, image_features, predict_proba_full
    from derma_nb.cache import prepare_dataset
    from derma_nb.config import CLASSES, PhaseParams, TrainParams
    from derma_nb.decide import class_prior, decide
    from derma_nb.explain import gradcam, overlay
    from derma_nb.inference import predict_logits
    from derma_nb.metrics import bootstrap_ci
    from derma_nb.model import build_model
    from derma_nb.sample import make_synthetic_sample
    from derma_nb.train import two_phase_fit

    hashes = {}
    data = make_synthetic_sample(out / "data", lesions={c: 6 for c in CLASSES}, width=64, height=48)
    prep = prepare_dataset(data, out / "prep", image_size=32, workers=1)
    hashes["prepare"] = digest(prep.images[:])
    tr, va = prep.rows("train"), prep.rows("val")
    rf, _ = fit_random_forest(image_features(prep.images, size=8, rows=tr), prep.labels("train"), n_estimators=20)
    hashes["baseline"] = digest(predict_proba_full(rf, image_features(prep.images, size=8, rows=va)))
    seed_everything(0)
    model = build_model("tf_efficientnet_lite0", "imagenet")
    cfg = TrainParams(batch_size=16, eval_batch_size=32, phase1=PhaseParams(epochs=2, lr=3e-3),
                      phase2=PhaseParams(epochs=1, lr=1e-3, unfreeze=1, augment=True))
    res = two_phase_fit(model, prep, cfg, out / "model", seed=0, fused_optimizer=mode == "portable")
    hashes["train_weights"] = digest(*model.state_dict().values())
    hashes["train_history"] = digest(res.history.drop(columns=["seconds", "images_per_s"]).to_numpy(float))
    logits = predict_logits(model, prep.images, va, 32, "cpu").numpy()
    hashes["val_logits"] = digest(logits)
    y = prep.labels("val")
    d = decide(logits, y, prior=class_prior(prep.labels("train")), tau="fit")
    hashes["decide"] = hashlib.sha256(json.dumps(asdict(d), sort_keys=True).encode()).hexdigest()[:16]
    probs = d.probs(logits)
    ci = bootstrap_ci(y, probs, prep.groups("val"), n_boot=50, seed=0)
    hashes["evaluate"] = hashlib.sha256(json.dumps(ci, sort_keys=True).encode()).hexdigest()[:16]
    cam = gradcam(model, prep.images[va[:2]])
    hashes["explain"] = digest(cam, overlay(prep.images[va[0]], cam[0]))
    return {"arithmetic": arithmetic, "hashes": hashes}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "portable")))

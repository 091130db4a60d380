"""Tests for derma_nb.baseline: features, determinism, the class-weight switch, synthetic and real-data accuracy."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from derma_nb.baseline import evaluate_baseline, fit_random_forest, image_features, predict_proba_full
from derma_nb.config import CLASSES
from derma_nb.cache import prepare_dataset
from derma_nb.sample import make_synthetic_sample

REAL = Path(__file__).resolve().parents[2] / "shared/data/ham10000"
real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real HAM10000 subset not present at {REAL}")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    "The small synthetic sample prepared at 32 px, with its features."
    tmp = tmp_path_factory.mktemp("baseline")
    src = make_synthetic_sample(tmp / "data", lesions={c: 8 for c in CLASSES}, width=64, height=48)
    prep = prepare_dataset(src, tmp / "prepared", image_size=32)
    return prep, image_features(prep.images)


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------
def test_feature_shape_and_range():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)
    X = image_features(imgs, size=28, hist_bins=16)
    assert X.shape == (10, 28 * 28 * 3 + 3 * 16) and X.dtype == np.float32
    assert X.min() >= 0 and X.max() <= 1
    hist = X[:, -48:].reshape(10, 3, 16)
    np.testing.assert_allclose(hist.sum(2), 1, rtol=1e-6)
    assert image_features(imgs, size=28, hist_bins=0).shape == (10, 2352)
    assert image_features(imgs, size=None, hist_bins=8).shape == (10, 24)
    with pytest.raises(ValueError, match="no features"):
        image_features(imgs, size=None, hist_bins=0)
    with pytest.raises(ValueError, match="uint8"):
        image_features(imgs.astype(np.float32))


def test_features_by_hand():
    # a constant image: every thumbnail pixel equals the colour, each channel's histogram is one-hot in its bin
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[..., :] = (0, 128, 255)
    X = image_features(img, size=4, hist_bins=4)
    np.testing.assert_allclose(X[0, :48].reshape(4, 4, 3), np.broadcast_to([0, 128 / 255, 1], (4, 4, 3)), atol=1e-6)
    np.testing.assert_array_equal(X[0, 48:].reshape(3, 4), [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    # pixels are the antialiased torch resize, in H, W, RGB order
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    want = F.interpolate(torch.from_numpy(imgs).permute(0, 3, 1, 2).float(), size=(8, 8), mode="bilinear",
                         antialias=True).permute(0, 2, 3, 1).reshape(3, -1).numpy() / 255
    np.testing.assert_allclose(image_features(imgs, size=8, hist_bins=0), want, atol=1e-6)
    # a cache already at the target size is used as is
    np.testing.assert_allclose(image_features(imgs, size=32, hist_bins=0), imgs.reshape(3, -1) / 255, atol=1e-7)


def test_chunked_equals_unchunked(tmp_path):
    rng = np.random.default_rng(2)
    arr = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(37, 48, 48, 3))
    arr[:] = rng.integers(0, 256, arr.shape, dtype=np.uint8)
    arr.flush()
    mm = np.load(tmp_path / "images.npy", mmap_mode="r")
    full = image_features(mm, chunk_size=1000)
    assert np.array_equal(image_features(mm, chunk_size=5), full)
    assert np.array_equal(image_features(mm, chunk_size=1), full)
    rows = np.array([30, 2, 2, 17, 0])  # unsorted with a repeat: order is kept
    assert np.array_equal(image_features(mm, rows=rows, chunk_size=2), full[rows])


# ---------------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------------
def test_same_seed_same_model(synthetic):
    prep, X = synthetic
    tr, te = prep.rows("train"), prep.rows("test")
    a, _ = fit_random_forest(X[tr], prep.labels("train"), n_estimators=50, seed=3)
    b, _ = fit_random_forest(X[tr], prep.labels("train"), n_estimators=50, seed=3, n_jobs=1)
    c, _ = fit_random_forest(X[tr], prep.labels("train"), n_estimators=50, seed=4)
    pa, pb, pc = (predict_proba_full(m, X) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)
    ma = evaluate_baseline(a, X[te], prep.labels("test"), prep.table.lesion_id[te], n_boot=100)
    mb = evaluate_baseline(b, X[te], prep.labels("test"), prep.table.lesion_id[te], n_boot=100)
    assert ma == mb


def test_class_weight_changes_model():
    rng = np.random.default_rng(5)
    y = rng.choice(7, 400, p=[0.03, 0.05, 0.1, 0.02, 0.1, 0.67, 0.03])  # HAM10000-like imbalance
    X = rng.normal(0, 1, (400, 20)) + y[:, None] * 0.15
    bal, _ = fit_random_forest(X, y, n_estimators=30, class_weight="balanced")
    none, _ = fit_random_forest(X, y, n_estimators=30, class_weight=None)
    assert bal.class_weight == "balanced" and none.class_weight is None
    assert not np.allclose(predict_proba_full(bal, X), predict_proba_full(none, X))
    with pytest.raises(ValueError, match="class_weight"):
        fit_random_forest(X, y, class_weight="inverse")


def test_missing_training_class_gets_zero_probability():
    rng = np.random.default_rng(6)
    y = rng.choice([0, 1, 2, 4, 5], 100)
    X = rng.normal(0, 1, (100, 5)) + y[:, None]
    m, secs = fit_random_forest(X, y, n_estimators=10)
    p = predict_proba_full(m, X)
    assert p.shape == (100, 7) and secs > 0
    assert (p[:, [3, 6]] == 0).all()
    np.testing.assert_allclose(p.sum(1), 1)


def test_synthetic_beats_chance(synthetic):
    prep, X = synthetic
    tr, te = prep.rows("train"), prep.rows("test")
    model, _ = fit_random_forest(X[tr], prep.labels("train"), n_estimators=100)
    m = evaluate_baseline(model, X[te], prep.labels("test"), prep.table.lesion_id[te], n_boot=200)
    print(f"synthetic test split: {len(te)} images, acc {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}")
    assert m["accuracy"] >= 0.5  # chance is 1/7; the classes are drawn differently, a forest sees it
    assert m["ci"]["accuracy"]["low"] <= m["accuracy"] <= m["ci"]["accuracy"]["high"]


# ---------------------------------------------------------------------------------------------------------------
# Real HAM10000 (skipped when ../shared/data/ham10000 is absent)
# ---------------------------------------------------------------------------------------------------------------
@real
@pytest.mark.slow
@pytest.mark.realdata
def test_real_data_baseline(tmp_path):
    prep = prepare_dataset(REAL, tmp_path / "prepared", image_size=32)
    tr, te = prep.rows("train"), prep.rows("test")
    assert set(prep.table.lesion_id[tr]).isdisjoint(prep.table.lesion_id[te])
    X = image_features(prep.images)
    print(f"\nHAM10000 subset: {len(tr)} train / {len(te)} test images, features {X.shape[1]} "
          "(28x28x3 pixels + 3x16 histogram bins, from the 32 px cache); 100 trees")
    results = {}
    for cw in ("balanced", None):
        cpu0 = time.process_time()
        model, secs = fit_random_forest(X[tr], prep.labels("train"), n_estimators=100, class_weight=cw)
        cpu = time.process_time() - cpu0
        m = evaluate_baseline(model, X[te], prep.labels("test"), prep.table.lesion_id[te].to_numpy(), n_boot=1000)
        ci = m["ci"]
        print(f"class_weight={cw!s:8s} acc {m['accuracy']:.3f} [{ci['accuracy']['low']:.3f}, "
              f"{ci['accuracy']['high']:.3f}]  weighted F1 {m['weighted_f1']:.3f}  macro F1 {m['macro_f1']:.3f}  "
              f"balanced acc {m['balanced_accuracy']:.3f}  mel recall {m['mel_recall']:.3f}  "
              f"macro AUC {m['macro_auc']:.3f}  fit {secs:.1f} s wall / {cpu:.1f} s CPU")
        results[cw] = m
    for m in results.values():
        assert m["accuracy"] > 0.6
    # balancing trades accuracy for the rare classes: it must not lose on balanced accuracy or melanoma recall
    assert results["balanced"]["balanced_accuracy"] > results[None]["balanced_accuracy"]
    assert results["balanced"]["mel_recall"] > results[None]["mel_recall"]

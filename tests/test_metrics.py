"""Tests for derma_nb.metrics: every metric against scikit-learn, calibration by hand, the lesion-level bootstrap
(and the report tables of derma_nb.display)."""
from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)

from derma_nb.config import CLASSES
from derma_nb.display import headline_table, per_class_table
from derma_nb.figures import plot_confusion, plot_history, plot_reliability, plot_roc
from derma_nb.figures import confusion_long, roc_points
from derma_nb.metrics import (BOOT_METRICS, HEADLINE, bootstrap_ci, classification_metrics, expected_calibration_error,
                              label_metrics, sensitivity_at_specificity)

K = len(CLASSES)
MEL = CLASSES.index("mel")


def random_predictions(n=600, seed=0, boost=1.2, classes=range(K)):
    "Labels drawn from `classes` and softmax probabilities that favour the true class."
    rng = np.random.default_rng(seed)
    y = rng.choice(list(classes), n)
    logits = rng.normal(0, 1, (n, K))
    logits[np.arange(n), y] += boost
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def onehot_probs(pred, conf):
    "Probability rows whose argmax is `pred` with top probability `conf`, the rest spread evenly."
    pred, conf = np.asarray(pred), np.asarray(conf, dtype=float)
    p = np.repeat(((1 - conf) / (K - 1))[:, None], K, 1)
    p[np.arange(len(pred)), pred] = conf
    return p


# ---------------------------------------------------------------------------------------------------------------
# classification_metrics == scikit-learn
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    y, p = random_predictions(seed=seed)
    pred = p.argmax(1)
    m = classification_metrics(y, p)
    assert m["n"] == len(y) and m["classes"] == list(CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=range(K))
    for k, c in enumerate(CLASSES):
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(prec[k], abs=1e-12)
        assert pc["recall"] == pytest.approx(rec[k], abs=1e-12)
        assert pc["f1"] == pytest.approx(f1[k], abs=1e-12)
        assert pc["support"] == sup[k]
        assert pc["auc"] == pytest.approx(roc_auc_score(y == k, p[:, k]), abs=1e-12)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["auc_classes"] == K
    assert m["mel_recall"] == pytest.approx(rec[MEL], abs=1e-12)
    cm = confusion_matrix(y, pred, labels=range(K))
    assert m["confusion"] == cm.tolist()
    np.testing.assert_allclose(m["confusion_normalized"], cm / cm.sum(1, keepdims=True))
    json.dumps(m, allow_nan=False)  # strict JSON, plain python types


def test_metrics_are_plain_python():
    y, p = random_predictions(n=100)
    m = classification_metrics(y, p)

    def walk(o):
        if isinstance(o, dict):
            assert all(isinstance(k, str) for k in o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        else:
            assert o is None or type(o) in (int, float, str, bool), (o, type(o))

    walk(m)


def test_input_validation():
    y, p = random_predictions(n=20)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y, p[:, :6])
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y[:10], p)
    with pytest.raises(ValueError, match="0..6"):
        classification_metrics(np.r_[y[:-1], 7], p)


# ---------------------------------------------------------------------------------------------------------------
# Melanoma sensitivity at a fixed specificity
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [0.5, 0.8, 0.9, 0.95])
def test_mel_sensitivity_at_specificity_matches_roc_curve(spec):
    y, p = random_predictions(n=800, seed=3, boost=0.8)
    op = classification_metrics(y, p, mel_specificity=spec)["mel_at_specificity"]
    fpr, tpr, thr = roc_curve(y == MEL, p[:, MEL], drop_intermediate=False)
    ok = 1 - fpr >= spec
    assert op["target_specificity"] == spec
    assert op["sensitivity"] == pytest.approx(tpr[ok].max())
    assert op["specificity"] >= spec
    # the reported threshold really gives that operating point
    flagged = p[:, MEL] >= op["threshold"]
    pos = y == MEL
    assert flagged[pos].mean() == pytest.approx(op["sensitivity"])
    assert 1 - flagged[~pos].mean() == pytest.approx(op["specificity"])


def test_sensitivity_at_specificity_toy():
    # negatives 0.1..0.4, positives 0.3, 0.5, 0.6: threshold 0.5 catches 2/3 with no false alarm, 0.4 adds a false
    # alarm (specificity 0.75) but no melanoma, 0.3 catches all three at specificity 0.5
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.3, 0.5, 0.6])
    op = sensitivity_at_specificity(y, s, 0.75)
    assert op == {"target_specificity": 0.75, "sensitivity": pytest.approx(2 / 3), "specificity": 1.0, "threshold": 0.5}
    assert sensitivity_at_specificity(y, s, 0.5)["sensitivity"] == 1.0
    assert sensitivity_at_specificity(y, s, 0.0)["sensitivity"] == 1.0
    assert sensitivity_at_specificity(np.zeros(5), np.arange(5), 0.8)["sensitivity"] is None


# ---------------------------------------------------------------------------------------------------------------
# Expected calibration error
# ---------------------------------------------------------------------------------------------------------------
def test_ece_perfectly_calibrated_is_zero():
    # 10 predictions at 0.7 with 7 right, 10 at 1.0 all right, 5 at 0.4 with 2 right: every bin's accuracy = confidence
    pred = np.zeros(25, int)
    conf = np.r_[np.full(10, 0.7), np.full(10, 1.0), np.full(5, 0.4)]
    y = np.r_[np.zeros(7), np.ones(3), np.zeros(10), np.zeros(2), np.ones(3)].astype(int)
    ece, curve = expected_calibration_error(y, onehot_probs(pred, conf))
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert sum(curve["count"]) == 25 and len(curve["bin_center"]) == 15
    assert classification_metrics(y, onehot_probs(pred, conf))["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident_by_hand():
    # bin A: 10 at confidence 0.95, 5 right (gap 0.45); bin B: 10 at 0.55, 5 right (gap 0.05)
    # ECE = 10/20 * 0.45 + 10/20 * 0.05 = 0.25
    pred = np.zeros(20, int)
    conf = np.r_[np.full(10, 0.95), np.full(10, 0.55)]
    y = np.r_[np.zeros(5), np.ones(5), np.zeros(5), np.ones(5)].astype(int)
    ece, curve = expected_calibration_error(y, onehot_probs(pred, conf))
    assert ece == pytest.approx(0.25)
    filled = [i for i, c in enumerate(curve["count"]) if c]
    assert [curve["count"][i] for i in filled] == [10, 10]
    assert [curve["accuracy"][i] for i in filled] == [0.5, 0.5]
    assert [curve["confidence"][i] for i in filled] == pytest.approx([0.55, 0.95])
    assert all(curve["accuracy"][i] is None for i in range(15) if i not in filled)


# ---------------------------------------------------------------------------------------------------------------
# Missing classes
# ---------------------------------------------------------------------------------------------------------------
def test_missing_class_is_handled():
    present = [0, 1, 2, 4, 5]  # no df (3), no vasc (6) in y_true; the model may still predict them
    y, p = random_predictions(n=300, seed=4, classes=present)
    pred = p.argmax(1)
    with np.errstate(all="ignore"):
        m = classification_metrics(y, p)
    assert m["per_class"]["df"]["auc"] is None and m["per_class"]["vasc"]["auc"] is None
    assert m["per_class"]["df"]["support"] == 0 and m["per_class"]["df"]["recall"] is None
    assert m["auc_classes"] == 5
    assert m["macro_auc"] == pytest.approx(np.mean([roc_auc_score(y == k, p[:, k]) for k in present]))
    with pytest.warns(UserWarning):  # sklearn warns about predicted-but-absent classes; the value is the same
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    json.dumps(m, allow_nan=False)
    ci = bootstrap_ci(y, p, np.arange(len(y)), metrics=BOOT_METRICS, n_boot=50)
    assert ci["macro_auc"]["value"] == pytest.approx(m["macro_auc"])
    assert per_class_table(m).loc["df", "auc"] != per_class_table(m).loc["df", "auc"]  # NaN in the table

    no_mel = [0, 1, 2, 5]
    y2, p2 = random_predictions(n=200, seed=5, classes=no_mel)
    with np.errstate(all="ignore"):
        m2 = classification_metrics(y2, p2)
    assert m2["mel_recall"] is None and m2["mel_at_specificity"]["sensitivity"] is None
    ci2 = bootstrap_ci(y2, p2, None, n_boot=20)
    assert ci2["mel_recall"] == {"value": None, "low": None, "high": None,
                                 "note": "undefined: no melanomas in this split"}  # a dash with the reason
    headline_table(m2, ci2)


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------------------
def test_bootstrap_point_estimates_match_sklearn():
    y, p = random_predictions(n=500, seed=6)
    groups = np.repeat(np.arange(250), 2)
    ci = bootstrap_ci(y, p, groups, metrics=BOOT_METRICS, n_boot=200)
    m = classification_metrics(y, p)
    for k in ("accuracy", "balanced_accuracy", "weighted_f1", "macro_f1", "mel_recall", "macro_auc"):
        assert ci[k]["value"] == pytest.approx(m[k], abs=1e-12), k
        assert ci[k]["low"] <= ci[k]["value"] <= ci[k]["high"], k
    assert ci["mel_auc"]["value"] == pytest.approx(m["per_class"]["mel"]["auc"], abs=1e-12)


def test_bootstrap_resample_equals_sklearn_on_resampled_data():
    # the weighted (vectorized) metrics of one resample == sklearn on the explicitly resampled images, ties included
    from derma_nb.metrics import _scalar_metrics

    rng = np.random.default_rng(7)
    y, p = random_predictions(n=200, seed=7)
    p = np.round(p, 2)  # create tied scores
    idx = rng.integers(0, 200, 200)
    w = np.bincount(idx, minlength=200).astype(float)[None]
    got = _scalar_metrics(w, y, p.argmax(1), p, BOOT_METRICS, MEL)
    yr, pr = y[idx], p[idx]
    with np.errstate(all="ignore"):
        want = classification_metrics(yr, pr)
    for k in ("accuracy", "balanced_accuracy", "weighted_f1", "macro_f1", "mel_recall", "macro_auc"):
        assert got[k][0] == pytest.approx(want[k], abs=1e-12), k
    assert got["mel_auc"][0] == pytest.approx(roc_auc_score(yr == MEL, pr[:, MEL]), abs=1e-12)


def test_bootstrap_seeded_and_contains_estimate():
    y, p = random_predictions(n=400, seed=8)
    groups = np.arange(400) // 3
    a = bootstrap_ci(y, p, groups, n_boot=300, seed=1)
    b = bootstrap_ci(y, p, groups, n_boot=300, seed=1)
    c = bootstrap_ci(y, p, groups, n_boot=300, seed=2)
    assert a == b
    assert a != c
    for v in a.values():
        assert v["low"] <= v["value"] <= v["high"] and v["low"] < v["high"]
    assert set(a) == {"accuracy", "balanced_accuracy", "weighted_f1", "macro_f1", "mel_recall", "macro_auc"}
    with pytest.raises(ValueError, match="unknown bootstrap metric"):
        bootstrap_ci(y, p, groups, metrics=("accuracy", "nope"))
    with pytest.raises(ValueError, match="missing values"):
        bootstrap_ci(y, p, np.r_[groups[:-1], np.nan])
    with pytest.raises(ValueError, match="entries"):
        bootstrap_ci(y, p, groups[:-1])


def test_bootstrap_resamples_lesions_not_images():
    # one lesion photographed 100 times, all wrong, next to 100 single-image lesions, all right:
    # by image the 200 images look independent; by lesion there are only 101 units and the big one swings accuracy
    n_single = 100
    y = np.zeros(n_single + 100, int)
    pred = np.r_[np.zeros(n_single, int), np.ones(100, int)]
    p = onehot_probs(pred, np.full(len(y), 0.9))
    lesion = np.r_[np.arange(n_single), np.full(100, n_single)]
    by_lesion = bootstrap_ci(y, p, lesion, metrics=("accuracy",), n_boot=1000, seed=0)["accuracy"]
    by_image = bootstrap_ci(y, p, None, metrics=("accuracy",), n_boot=1000, seed=0)["accuracy"]
    assert by_lesion["value"] == by_image["value"] == 0.5
    assert (by_lesion["high"] - by_lesion["low"]) > 3 * (by_image["high"] - by_image["low"])
    # all images of a lesion come along: with one lesion per class group, accuracy takes only a few values
    two = bootstrap_ci(y, p, np.r_[np.zeros(n_single, int), np.ones(100, int)], metrics=("accuracy",), n_boot=200)
    assert two["accuracy"]["low"] in (0.0, 0.5, 1.0) and two["accuracy"]["high"] in (0.0, 0.5, 1.0)


def test_bootstrap_is_fast():
    y, p = random_predictions(n=1000, seed=9)
    groups = np.arange(1000) * 3 // 4
    t0 = time.perf_counter()
    bootstrap_ci(y, p, groups, n_boot=1000)
    assert time.perf_counter() - t0 < 5.0


# ---------------------------------------------------------------------------------------------------------------
# Tables, plots and plot data
# ---------------------------------------------------------------------------------------------------------------
def test_tables():
    y, p = random_predictions(n=300, seed=10)
    m = classification_metrics(y, p)
    ci = bootstrap_ci(y, p, None, n_boot=100)
    h = headline_table(m, ci)
    assert h.loc["Accuracy", "value"] == m["accuracy"] and h.loc["Accuracy", "ci_low"] == ci["accuracy"]["low"]
    assert math.isnan(h.loc["Melanoma ROC-AUC", "ci_low"])  # not bootstrapped here
    assert list(h.columns) == ["value", "ci_low", "ci_high"]
    assert headline_table(m).ci_low.isna().all()
    t = per_class_table(m)
    assert list(t.index) == list(CLASSES) and t.support.sum() == len(y)
    assert list(t.columns) == ["precision", "recall", "f1", "auc", "support"]


def test_plots_return_figures():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    y, p = random_predictions(n=200, seed=11)
    m = classification_metrics(y, p)
    history = pd.DataFrame({"phase": ["head", "head", "layer4", "layer4"], "epoch": [1, 2, 1, 2],
                            "train_loss": [1.0, 0.8, 0.7, 0.6], "val_loss": [1.1, 0.9, 0.8, 0.8],
                            "val_accuracy": [0.5, 0.6, 0.7, 0.7], "val_balanced_accuracy": [0.4, 0.5, 0.6, 0.65],
                            "val_macro_f1": [0.2, 0.3, 0.4, 0.45]})
    figs = [plot_confusion(m["confusion"], CLASSES, normalize=True),
            plot_confusion(np.array(m["confusion"]), CLASSES, normalize=False),
            plot_roc(y, p, CLASSES), plot_reliability(m["reliability"]), plot_history(history)]
    for f in figs:
        assert isinstance(f, Figure)
        buf = io.BytesIO()
        f.savefig(buf, format="png")  # renders without pyplot
        assert buf.getvalue()[:4] == b"\x89PNG"
        plt.close(f)
    assert len(plot_history(history).axes) == 5


def test_plot_data():
    y, p = random_predictions(n=150, seed=12)
    cl = confusion_long(y, p.argmax(1))
    assert list(cl.columns) == ["actual", "predicted"] and len(cl) == 150
    assert set(cl.actual) <= set(CLASSES)
    assert (cl.actual == np.array(CLASSES)[y]).all()
    rp = roc_points(y, p)
    assert list(rp.columns) == ["class", "fpr", "tpr"] and set(rp["class"]) == set(CLASSES)
    for c, g in rp.groupby("class"):
        fpr, tpr, _ = roc_curve(y == CLASSES.index(c), p[:, CLASSES.index(c)])
        np.testing.assert_allclose(g.fpr, fpr)
        np.testing.assert_allclose(g.tpr, tpr)


def test_training_and_evaluation_use_the_same_metric_names():
    "The per-epoch metrics and the evaluation metrics share names (and values) for what both compute."
    y, p = random_predictions()
    quick, full = label_metrics(y, p), classification_metrics(y, p)
    assert set(quick) <= set(full) and set(quick) <= set(HEADLINE)
    for k, v in quick.items():
        assert v == pytest.approx(full[k], abs=1e-12), k

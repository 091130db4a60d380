"""Decisions fitted on validation (derma_nb.decide, the patient context from derma_nb.context): the properties they
promise, checked over many random draws."""
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from derma_nb.config import CLASSES
from derma_nb.context import context_log_ratio, context_temperature, fit_context
from derma_nb.decide import (Decision, calibrated_probs, class_prior, conformal_quantile, decide, describe, fit_prior_tau,
                             fit_temperature, mel_threshold, nll, prediction_sets, prior_corrected)
from derma_nb.metrics import label_metrics

K, MEL = len(CLASSES), CLASSES.index("mel")


def draw(n, seed, scale=3.0, shift=2.0, weights=None):
    "Labels and logits of a model `scale` times overconfident (softmax(shift·z) would be calibrated)."
    rng = np.random.default_rng(seed)
    y = rng.choice(K, n, p=weights)
    z = rng.normal(0, 1, (n, K))
    z[np.arange(n), y] += shift
    return y, scale * shift * z


def test_temperature_lowers_validation_and_test_nll_and_keeps_the_top_class():
    for seed in range(5):
        y, logits = draw(3000, seed)
        T = fit_temperature(logits[:1500], y[:1500])
        assert abs(T - 3.0) < 0.4
        for part in (slice(0, 1500), slice(1500, None)):
            assert nll(calibrated_probs(logits[part], T), y[part]) < nll(calibrated_probs(logits[part]), y[part])
        np.testing.assert_array_equal(calibrated_probs(logits, T).argmax(1), logits.argmax(1))


def test_underconfident_model_gets_a_temperature_below_one():
    y, logits = draw(2000, 0, scale=0.3)
    assert fit_temperature(logits, y) < 0.5


@pytest.mark.parametrize("classwise", [False, True])
def test_conformal_coverage_holds_on_exchangeable_draws(classwise):
    "Average coverage over 100 calibration/test draws is at least 1 - alpha (minus sampling noise)."
    alpha, cover, per_class = 0.1, [], []
    weights = np.array([0.05, 0.05, 0.1, 0.02, 0.1, 0.65, 0.03])  # HAM10000-like imbalance
    for seed in range(100):
        y, logits = draw(1200, seed, scale=1.0, shift=1.0, weights=weights)
        p = calibrated_probs(logits)
        q = conformal_quantile(p[:600], y[:600], alpha, classwise=classwise)
        sets = prediction_sets(p[600:], q)
        hit = sets[np.arange(600), y[600:]]
        cover.append(hit.mean())
        per_class.append([hit[y[600:] == k].mean() if (y[600:] == k).any() else np.nan for k in range(K)])
    assert np.mean(cover) >= 1 - alpha - 0.01, np.mean(cover)
    worst = np.nanmean(per_class, 0).min()
    if classwise:  # class-conditional: every class covered
        assert worst >= 1 - alpha - 0.03, np.nanmean(per_class, 0)
    else:  # marginal only: the rare, hard classes fall short — what the evaluation report shows
        assert worst < 1 - alpha, np.nanmean(per_class, 0)


def test_too_few_calibration_images_give_the_full_set():
    p = calibrated_probs(np.zeros((5, K)))
    q = conformal_quantile(p, np.zeros(5, int), alpha=0.05)  # needs ceil(6 * 0.95) = 6 > 5 scores
    assert q["qhat"] == 1.0 and prediction_sets(p, q).all()


@pytest.mark.parametrize("n_mel", [1, 7, 40, 111])
@pytest.mark.parametrize("target", [0.5, 0.85, 0.95])
def test_melanoma_threshold_reaches_the_target_on_validation_and_is_the_highest_that_does(n_mel, target):
    rng = np.random.default_rng(n_mel)
    is_mel = np.r_[np.ones(n_mel, bool), np.zeros(300, bool)]
    score = rng.uniform(size=len(is_mel)) + 0.3 * is_mel
    op = mel_threshold(score, is_mel, target)
    assert op["sensitivity"] >= target
    higher = np.nextafter(op["threshold"], 2)
    assert (score[is_mel] >= higher).mean() < target, "any higher threshold misses the target"


def test_decide_stores_a_round_trippable_record_and_describe_uses_it():
    from dataclasses import asdict

    y, logits = draw(1500, 3)
    d = decide(np.stack([logits, logits]), y, views=2, mel_sensitivity=0.9, alpha=0.2)
    assert Decision(**asdict(d)) == d and d.views == 2 and d.mel["sensitivity"] >= 0.9
    row = describe(d.probs(logits[:1])[0], d)
    assert row["top_class"] == row["prediction_set"][0]
    assert row["melanoma_suspected"] == (d.probs(logits[:1])[0, MEL] >= d.mel["threshold"])
    no_cal = decide(logits[None], y, calibrate=False)
    assert no_cal.temperature == 1.0


HAM_SHARES = np.array([0.033, 0.051, 0.11, 0.011, 0.111, 0.67, 0.014])


def test_prior_correction_fitted_on_validation_raises_held_out_balanced_accuracy():
    "On a HAM10000-skewed population with calibrated probabilities, the fitted tau helps on data it never saw."
    for seed in range(5):
        y, logits = draw(6000, seed, scale=1.0, shift=1.5, weights=HAM_SHARES / HAM_SHARES.sum())
        p = calibrated_probs(logits + np.log(HAM_SHARES))  # the exact posterior of this population
        prior = class_prior(y[:3000])
        fit = fit_prior_tau(p[:3000], y[:3000], prior)
        bal = lambda t: label_metrics(y[3000:], np.eye(K)[prior_corrected(p[3000:], prior, t)])["balanced_accuracy"]
        assert fit["tau"] > 0 and bal(fit["tau"]) > bal(0.0) + 0.02, (seed, fit["tau"])


def test_the_macro_f1_floor_binds_and_a_balanced_population_keeps_tau_near_zero():
    y, logits = draw(3000, 0, scale=1.0, shift=1.5)  # classes equally frequent
    p = calibrated_probs(logits)
    skewed = list(HAM_SHARES / HAM_SHARES.sum())  # a wrong prior: correcting for it only hurts
    fit = fit_prior_tau(p, y, skewed, max_f1_drop=0.0)
    base = fit["grid"][0]["macro_f1"]
    assert all(r["macro_f1"] >= base - 1e-12 for r in fit["grid"] if r["tau"] == fit["tau"])
    assert fit["tau"] <= 0.2
    strict = fit_prior_tau(p, y, skewed, max_f1_drop=0.0)
    loose = fit_prior_tau(p, y, skewed, max_f1_drop=1.0)  # no floor: the best balanced accuracy anywhere
    assert loose["grid"][int(round(loose["tau"] * 10))]["balanced_accuracy"] >= \
        strict["grid"][int(round(strict["tau"] * 10))]["balanced_accuracy"]


def test_decide_with_tau_stores_prior_and_predict_and_sets_follow_it():
    y, logits = draw(4000, 3, scale=2.0, shift=1.5, weights=HAM_SHARES / HAM_SHARES.sum())
    logits = logits + 2.0 * np.log(HAM_SHARES)  # twice the population's posterior logits: overconfident, skewed
    prior = class_prior(y[:2000])
    d = decide(logits[None, :2000], y[:2000], prior=prior, tau="fit")
    assert d.prior == prior and d.prior_fit["tau"] == d.tau > 0
    p = d.probs(logits[2000:])
    np.testing.assert_array_equal(d.predict(p), prior_corrected(p, prior, d.tau))
    assert d.sets(p)[np.arange(len(p)), d.predict(p)].all()  # every set holds its predicted class
    fixed = decide(logits[None, :2000], y[:2000], prior=prior, tau=0.5)
    assert fixed.tau == 0.5 and fixed.prior_fit == {}
    off = decide(logits[None, :2000], y[:2000], prior=prior)
    assert off.tau == 0.0 and off.prior == [] and (off.predict(p) == p.argmax(1)).all()


# ---------------------------------------------------------------------------------------------------------------
# the patient context: likelihood ratios from the training split, a weight from validation, kept only when real
# ---------------------------------------------------------------------------------------------------------------
def context_draw(n, seed, informative=True):
    "HAM10000-like labels, weak image logits with the prior, and a site that tells `bcc` (face) from `nv` (back) when informative."
    rng, shares = np.random.default_rng(seed), np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
    y = rng.choice(K, n, p=shares)
    z = rng.normal(0, 1, (n, K)) + np.log(shares)  # calibrated for this population: the prior is in the image scores
    z[np.arange(n), y] += 1.0
    face = np.where(y == 1, 0.7, np.where(y == 5, 0.1, 0.4)) if informative else np.full(n, 0.3)
    table = pd.DataFrame({"age": rng.integers(5, 90, n).astype(float), "sex": rng.choice(["male", "female"], n),
                          "localization": np.where(rng.random(n) < face, "face", "back")})
    return y, z, table


def test_context_weight_is_rarely_kept_for_a_context_that_says_nothing():
    "The lesion-bootstrap guard: over 20 draws of an uninformative context, at most 3 weights kept (5% nominal)."
    kept = 0
    for seed in range(20):
        y, z, table = context_draw(1600, seed, informative=False)
        ctx = fit_context(table[:800], y[:800])
        d = decide(z[800:][None], y[800:], context=ctx, table=table[800:], groups=np.arange(800) // 2, seed=seed)
        kept += d.uses_context
    assert kept <= 3, kept


def test_an_informative_context_is_kept_and_helps_on_held_out_images():
    for seed in range(3):
        y, z, table = context_draw(3000, seed)
        ctx = fit_context(table[:1500], y[:1500])
        d = decide(z[1500:2250][None], y[1500:2250], context=ctx, table=table[1500:2250], groups=np.arange(750))
        assert d.uses_context and 0 < d.context["weight"] <= 2
        held, t = z[2250:], table[2250:]
        assert nll(d.probs(held, t), y[2250:]) < nll(d.probs(held), y[2250:])


def test_the_combination_temperature_is_fitted_once_and_is_the_weight_s_own():
    "With the melanoma floor, decide stores the temperature the floor fitted for its weight: context_temperature's."
    y, z, table = context_draw(3000, 0)
    ctx, v = fit_context(table[:1500], y[:1500]), slice(1500, 2250)
    ratio = context_log_ratio(ctx, table[v])
    for drop in (None, 0.0, 1.0):  # no floor, a floor that may lower the weight, one that never does
        d = decide(z[v][None], y[v], context=ctx, table=table[v], groups=np.arange(750), max_mel_drop=drop)
        assert d.uses_context
        probs = calibrated_probs(z[v][None], d.temperature)
        assert d.context["temperature"] == context_temperature(probs, y[v], ratio, d.context["weight"])
        if drop is not None:
            assert d.context["fit"]["mel_floor"]["temperature"] == d.context["temperature"]


def test_context_ratios_are_likelihood_ratios_and_unknowns_add_nothing():
    y, z, table = context_draw(2000, 0)
    ctx = fit_context(table, y)
    prior = class_prior(y)
    for f, vals in ctx["fields"].items():
        for v, r in vals.items():  # p(value) = Σ_k π_k p(value | k): the ratios average to 1 under the prior
            assert abs(np.dot(prior, np.exp(r)) - 1) < 1e-5, (f, v)
    unknown = pd.DataFrame({"age": [np.nan], "sex": ["unknown"], "localization": [""]})
    np.testing.assert_array_equal(context_log_ratio(ctx, unknown), np.zeros((1, K)))


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real data not found at {SHARED_DATA}")
def test_context_on_real_ham10000_says_what_dermatologists_know():
    "Counted on the real training split: the face for keratoses and carcinomas, the legs for dermatofibroma, age."
    from derma_nb.split import lesion_split

    meta = pd.read_csv(SHARED_DATA / "HAM10000_metadata.csv")
    train = meta[(lesion_split(meta, seed=0) == "train").to_numpy()]
    ctx = fit_context(train, train.dx.map(CLASSES.index).to_numpy())
    ratio = lambda f, v, c: float(np.exp(ctx["fields"][f][v][CLASSES.index(c)]))  # noqa: E731
    assert ratio("localization", "face", "akiec") > 2 and ratio("localization", "face", "bcc") > 2
    assert ratio("localization", "face", "nv") < 0.5
    assert ratio("localization", "lower extremity", "df") > 2
    assert ratio("age", "≥ 80", "bcc") > 2 and ratio("age", "≥ 80", "nv") < 0.5
    assert ratio("age", "20–29", "nv") > 1 > ratio("age", "20–29", "bcc")
    assert "acral" not in ctx["fields"]["localization"]  # a handful of training images: no evidence

"Two-phase training: what is frozen stays frozen, resume is exact, the same seed gives the same run."
import numpy as np
import pandas as pd
import pytest
import torch

from derma_nb.cache import prepare_dataset
from derma_nb.config import CLASSES, PhaseParams, TrainParams
from derma_nb.inference import predict_probs
from derma_nb.runtime import seed_everything
from derma_nb.model import build_model, load_model
from derma_nb.sample import make_synthetic_sample
from derma_nb.train import class_weights, two_phase_fit


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    data = make_synthetic_sample(tmp / "data", lesions={c: 8 for c in CLASSES}, width=64, height=48, seed=3)
    return prepare_dataset(data, tmp / "prep", image_size=32)


def cfg(e1=2, e2=2, **kw):
    return TrainParams(phase1=PhaseParams(epochs=e1, lr=3e-3), batch_size=16, **kw,
                       phase2=PhaseParams(epochs=e2, lr=1e-3, unfreeze=1, augment=True))


class Interrupted(Exception):
    "What a kill does to the loop: it stops after the epoch's checkpoint is written."


def stop_after(n):
    "An on_epoch callback that interrupts the run after `n` epochs (the checkpoint of epoch n is on disk)."
    def cb(row):
        if row["step"] == n:
            raise Interrupted
    return cb


def fresh(seed=0):
    seed_everything(seed)
    return build_model("resnet18")


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_phase1_changes_only_the_head_and_phase2_only_layer4_and_head(prep, tmp_path):
    m = fresh()
    s0 = snapshot(m)
    two_phase_fit(m, prep, cfg(2, 0), tmp_path / "a")
    s1 = snapshot(m)
    changed = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    assert changed == {"head.weight", "head.bias"}, changed  # BatchNorm running stats of the backbone included
    two_phase_fit(m, prep, cfg(0, 1), tmp_path / "b")
    s2 = snapshot(m)
    changed2 = {k for k in s1 if not torch.equal(s1[k], s2[k])}
    assert any(k.startswith("body.layer4.") and k.endswith("weight") for k in changed2)
    assert all(k.startswith(("body.layer4.", "head.")) for k in changed2), changed2


def test_phase1_from_features_equals_phase1_through_backbone(prep, tmp_path):
    a, b = fresh(), fresh()
    ra = two_phase_fit(a, prep, cfg(2, 0), tmp_path / "a")
    rb = two_phase_fit(b, prep, cfg(2, 0, features_phase1=False), tmp_path / "b")
    assert torch.allclose(a.head.weight, b.head.weight, atol=1e-4)
    assert np.allclose(ra.history.val_macro_f1, rb.history.val_macro_f1)


def test_same_seed_same_metrics(prep, tmp_path):
    r1 = two_phase_fit(fresh(), prep, cfg(), tmp_path / "a")
    r2 = two_phase_fit(fresh(), prep, cfg(), tmp_path / "b")
    cols = ["train_loss", "val_loss", "val_accuracy", "val_weighted_f1", "val_macro_f1"]
    pd.testing.assert_frame_equal(r1.history[cols], r2.history[cols])
    r3 = two_phase_fit(fresh(), prep, cfg(), tmp_path / "c", seed=1)
    assert not r1.history.train_loss.equals(r3.history.train_loss)


@pytest.mark.parametrize("after", [1, 2, 3])  # in phase 1, at the end of phase 1, inside phase 2
def test_resume_after_interrupt_gives_the_same_result(prep, tmp_path, after):
    full = fresh()
    r_full = two_phase_fit(full, prep, cfg(), tmp_path / "full")
    with pytest.raises(Interrupted):
        two_phase_fit(fresh(), prep, cfg(), tmp_path / "cut", on_epoch=stop_after(after))
    resumed = fresh()  # a new process would build the model again, then resume from last.pt
    r_res = two_phase_fit(resumed, prep, cfg(), tmp_path / "cut")
    assert len(r_res.history) == len(r_full.history)
    pd.testing.assert_frame_equal(r_full.history.drop(columns=["seconds", "images_per_s"]),
                                  r_res.history.drop(columns=["seconds", "images_per_s"]))
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert r_full.best == r_res.best


def test_changed_settings_do_not_resume_a_stale_checkpoint(prep, tmp_path):
    with pytest.raises(Interrupted):
        two_phase_fit(fresh(), prep, cfg(), tmp_path / "m", on_epoch=stop_after(1))
    r = two_phase_fit(fresh(), prep, cfg(label_smoothing=0.1), tmp_path / "m")
    assert len(r.history) == 4 and r.history.step.tolist() == [1, 2, 3, 4]


def test_best_checkpoint_is_the_best_val_epoch_and_loads(prep, tmp_path):
    m = fresh()
    r = two_phase_fit(m, prep, cfg(3, 2), tmp_path / "m")
    h = r.history
    assert r.best["value"] == pytest.approx(h.val_macro_f1.max())
    best_row = h.loc[h.val_macro_f1.idxmax()]
    assert (r.best["phase"], r.best["epoch"]) == (best_row.phase, best_row.epoch)
    loaded, meta = load_model(r.best_path)
    assert meta["image_size"] == 32 and meta["arch"] == "resnet18"
    p = predict_probs(loaded, prep.images, prep.rows("val"))
    from sklearn.metrics import f1_score
    assert f1_score(prep.labels("val"), p.argmax(1), labels=range(7), average="macro",
                    zero_division=0) == pytest.approx(r.best["value"])
    # everything a resume needs sits in the checkpoint folder; the output folder gets a copy of the best model
    assert {p.name for p in (tmp_path / "m" / "checkpoints").iterdir()} == {"last.pt", "best.pt"}


def test_early_stopping_stops_a_phase(prep, tmp_path):
    c = TrainParams(phase1=PhaseParams(epochs=20, lr=1e-9, patience=2, schedule="constant"),
                    phase2=PhaseParams(epochs=0), batch_size=16)
    r = two_phase_fit(fresh(), prep, c, tmp_path / "m")
    assert len(r.history) == 3  # first epoch sets the best, two more without improvement


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]), k=4)
    assert torch.allclose(w, torch.tensor([6 / (4 * 3), 6 / 4, 6 / (4 * 2), 0.0]))


def test_balanced_sampler_trains(prep, tmp_path):
    r = two_phase_fit(fresh(), prep, cfg(1, 1, balanced_sampler=True, class_weights=False), tmp_path / "m")
    assert len(r.history) == 2 and np.isfinite(r.history.train_loss).all()


def test_a_finished_run_is_restored_not_retrained(prep, tmp_path):
    r1 = two_phase_fit(fresh(), prep, cfg(1, 1), tmp_path / "m")
    (tmp_path / "m" / "best.pt").unlink()  # DVC deletes a stage's outputs before running it again
    rows = []
    r2 = two_phase_fit(fresh(), prep, cfg(1, 1), tmp_path / "m", on_epoch=rows.append)
    assert rows == [] and r2.best == r1.best and r2.best_path.exists()
    pd.testing.assert_frame_equal(r1.history, r2.history)
    r3 = two_phase_fit(fresh(), prep, cfg(1, 1), tmp_path / "m", resume=False, on_epoch=rows.append)
    assert len(rows) == 2 and r3.best["value"] == r1.best["value"]  # asked to start over: trained again, same result


def test_prefetched_batches_train_the_same_run(prep, tmp_path):
    "train.prefetch: on makes the batches in a background thread; the run is the same to the last bit."
    r1 = two_phase_fit(fresh(), prep, cfg(prefetch="off"), tmp_path / "a")
    r2 = two_phase_fit(fresh(), prep, cfg(prefetch="on"), tmp_path / "b")
    cols = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1"]
    pd.testing.assert_frame_equal(r1.history[cols], r2.history[cols])
    assert len(r1.history) == 4

"ONNX export parity (dynamic batch), .pt ↔ .onnx Predictor agreement, predict = cache preprocessing, clear errors."
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from derma_nb.config import CLASSES
from derma_nb.cache import prepare_dataset, unit_batch
from derma_nb.data import DataError
from derma_nb.sample import make_synthetic_sample
from derma_nb.export import _ort_session, export_checkpoint, export_onnx, onnx_parity, read_sidecar, sidecar_path
from derma_nb.predict import NOTICE, SYNTHETIC_WARNING, Predictor, predict_main
from derma_nb.model import ModelFileError, build_model, save_model

PROBS = [f"prob_{c}" for c in CLASSES]


def small_model(seed=0):
    torch.manual_seed(seed)
    m = build_model("resnet18", "none")
    for mod in m.modules():  # non-trivial BatchNorm statistics so eval-mode BatchNorm is part of the comparison
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = make_synthetic_sample(tmp / "data", lesions={c: 3 for c in CLASSES}, width=64, height=48)
    return tmp, data, prepare_dataset(data, tmp / "prep", image_size=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    m = small_model()
    return m, export_onnx(m, d / "m.onnx", image_size=64)


def test_onnx_parity_and_dynamic_batch(exported):
    m, path = exported
    x = torch.rand(5, 3, 64, 64)
    assert onnx_parity(m, path, x) <= 1e-4  # batch 1 and 5
    assert onnx_parity(m, path, x, batch_sizes=[3]) <= 1e-4
    sess = _ort_session(path)
    assert sess.get_inputs()[0].name == "image" and sess.get_inputs()[0].shape == ["batch", 3, 64, 64]
    assert sess.get_outputs()[0].name == "logits"
    for b in (1, 5):
        assert sess.run(["logits"], {"image": x[:b].numpy()})[0].shape == (b, len(CLASSES))
    meta = read_sidecar(path)
    assert meta["classes"] == list(CLASSES) and meta["image_size"] == 64 and meta["resize"] == "center_crop"
    assert meta["exporter"] == "legacy" and meta["opset"] == 17
    assert not m.training  # left as it was


def test_export_restores_train_flags(tmp_path):
    m = small_model().train()
    export_onnx(m, tmp_path / "t.onnx", image_size=32)
    assert all(mod.training for mod in m.modules())


def test_dynamo_exporter_as_fallback(tmp_path, monkeypatch):
    import derma_nb.export as E

    def gone(*a, **k):
        raise RuntimeError("legacy exporter removed")

    monkeypatch.setattr(E, "_export_legacy", gone)
    m = small_model(1)
    with pytest.raises(RuntimeError, match="removed"):
        export_onnx(m, tmp_path / "l.onnx", image_size=32, exporter="legacy")
    path = export_onnx(m, tmp_path / "d.onnx", image_size=32)  # auto: falls back to dynamo
    assert onnx_parity(m, path, torch.rand(4, 3, 32, 32)) <= 1e-4
    assert read_sidecar(path)["exporter"] == "dynamo" and read_sidecar(path)["opset"] >= 18
    assert not (tmp_path / "d.onnx.data").exists()  # one self-contained file


def test_predictor_pt_and_onnx_agree(sample, tmp_path):
    tmp, data, prep = sample
    files = sorted((data / "images").glob("*.jpg"))[:6]
    ckpt = save_model(tmp_path / "m.pt", small_model(), image_size=48)
    onnx_path = export_checkpoint(ckpt)
    assert onnx_path == tmp_path / "m.onnx" and sidecar_path(onnx_path).exists()
    a, b = Predictor(ckpt).predict_files(files), Predictor(onnx_path).predict_files(files)
    assert list(a.columns) == ["path", "pred", "confidence", *PROBS]
    assert np.abs(a[PROBS].to_numpy() - b[PROBS].to_numpy()).max() <= 1e-4
    assert (a.pred == b.pred).all() and np.allclose(a[PROBS].sum(1), 1, atol=1e-5)
    assert (a.pred == [CLASSES[k] for k in a[PROBS].to_numpy().argmax(1)]).all()
    assert np.allclose(a.confidence, a[PROBS].max(1))


def test_predict_files_equals_model_on_cached_rows(sample, tmp_path):
    tmp, data, prep = sample
    model = small_model(2)
    ckpt = save_model(tmp_path / "m.pt", model, image_size=32, resize=prep.manifest["resize"])
    rows = np.arange(len(prep.table))
    paths = [data / "images" / f"{i}.jpg" for i in prep.table.image_id[rows]]
    p = Predictor(ckpt)
    assert np.array_equal(np.stack([p.load_image(f) for f in paths]), prep.images[rows])  # same pixels
    with torch.no_grad():
        ref = torch.softmax(model(unit_batch(torch.from_numpy(prep.images[rows]).permute(0, 3, 1, 2))), 1).numpy()
    got = p.predict_files(paths)
    assert np.abs(got[PROBS].to_numpy() - ref).max() <= 1e-5
    assert np.abs(p.predict_arrays(prep.images[rows]) - ref).max() <= 1e-5
    # the .onnx of the same model, too (to ONNX tolerance)
    assert np.abs(Predictor(export_checkpoint(ckpt)).predict_files(paths)[PROBS].to_numpy() - ref).max() <= 1e-4


def test_unreadable_files_are_named(sample, tmp_path):
    tmp, data, prep = sample
    ckpt = save_model(tmp_path / "m.pt", small_model(), image_size=32)
    good = sorted((data / "images").glob("*.jpg"))[0]
    bad = tmp_path / "broken_lesion.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    p = Predictor(ckpt)
    for f in (bad, empty, tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(DataError, match=str(f.name)):
            p.predict_files([good, f])


def test_predictor_errors(tmp_path):
    m = small_model()
    path = export_onnx(m, tmp_path / "m.onnx", image_size=32)
    sidecar_path(path).unlink()
    with pytest.raises(ModelFileError, match="m.onnx.json: missing"):
        Predictor(path)
    with pytest.raises(ModelFileError, match="nope.pt: model file not found"):
        Predictor(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a derma_nb model"):
        Predictor(tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelFileError, match="notes.txt: not a derma_nb model file"):
        Predictor(tmp_path / "notes.txt")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    sidecar_path(tmp_path / "bad.onnx").write_text('{"format": "derma_nb.onnx/1", "classes": [], "image_size": 32}')
    with pytest.raises(ModelFileError, match="bad.onnx: not a readable ONNX model"):
        Predictor(tmp_path / "bad.onnx")
    ckpt = save_model(tmp_path / "m.pt", m, image_size=32)
    with pytest.raises(ValueError, match="32x32"):
        Predictor(ckpt).predict_arrays(np.zeros((2, 64, 64, 3), np.uint8))


def test_predict_main_formats(sample, tmp_path):
    tmp, data, prep = sample
    ckpt = save_model(tmp_path / "m.pt", small_model(), image_size=32)
    files = sorted((data / "images").glob("*.jpg"))[:3]
    table = predict_main(files, ckpt)
    lines = table.splitlines()
    assert lines[0] == NOTICE and all(any(l.startswith(f.name) for l in lines) for f in files)
    assert "no decisions stored" in table and "SYNTHETIC" not in table  # a bare checkpoint: probabilities only
    assert max(map(len, lines[3:])) <= 100, "fits a terminal"
    csv = pd.read_csv(io.StringIO(predict_main(files, ckpt, "csv")))
    assert csv.file.tolist() == [str(f) for f in files] and list(csv.columns[-7:]) == PROBS
    assert np.allclose(csv[PROBS].sum(1), 1, atol=1e-3)
    js = json.loads(predict_main(files, ckpt, "json"))
    assert js["notice"] == NOTICE and [r["file"] for r in js["images"]] == [str(f) for f in files]
    assert {"top_class", "top_probability", "prediction_set", "melanoma_suspected", *PROBS} <= set(js["images"][0])
    assert len(pd.read_csv(io.StringIO(predict_main([data / "images"], ckpt, "csv")))) == len(prep.table)
    with pytest.raises(ValueError, match="format"):
        predict_main(files, ckpt, "xml")


def test_predict_applies_the_stored_decisions(sample, tmp_path):
    "Views, temperature, melanoma threshold and conformal q-hat stored with the model are what predict applies."
    from dataclasses import asdict

    from derma_nb.decide import Decision, calibrated_probs, prediction_sets

    tmp, data, prep = sample
    m = small_model()
    files = sorted((data / "images").glob("*.jpg"))[:6]
    d = Decision(views=4, temperature=2.0, mel={"threshold": 0.15, "sensitivity": 0.9, "target_sensitivity": 0.85},
                 conformal={"alpha": 0.1, "classwise": False, "qhat": 0.85, "n": 50})
    ckpt = save_model(tmp_path / "r.pt", m, image_size=32, decision=asdict(d), data={"synthetic": True})
    pred = Predictor(ckpt)
    x = np.stack([pred.load_image(f) for f in files])
    logits = pred.predict_logits(x)
    assert logits.shape == (4, len(files), 7)
    want = calibrated_probs(logits, 2.0)
    got = pred.predict_files(files)[PROBS].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    js = json.loads(predict_main(files, ckpt, "json"))
    sets = prediction_sets(want, d.conformal)
    for r, s, p in zip(js["images"], sets, want):
        assert set(r["prediction_set"]) == {c for c, i in zip(CLASSES, s) if i}
        assert r["melanoma_suspected"] == bool(p[CLASSES.index("mel")] >= 0.15)
    assert js["synthetic_model"] is True
    table = predict_main(files, ckpt)
    assert table.splitlines()[1] == SYNTHETIC_WARNING and "T = 2.00" in table and "4 test-time views averaged" in table
    real = save_model(tmp_path / "real.pt", m, image_size=32, decision=asdict(d), data={"synthetic": False})
    out = predict_main(files, real)
    assert SYNTHETIC_WARNING not in out and "SYNTHETIC" not in out and out.startswith(NOTICE)
    assert json.loads(predict_main(files, real, "json"))["synthetic_model"] is False
    onnx = export_checkpoint(ckpt, tmp_path / "r.onnx")  # the decisions travel in the sidecar
    np.testing.assert_allclose(Predictor(onnx).predict_files(files)[PROBS].to_numpy(), want, atol=1e-4)


def test_a_stored_prior_correction_decides_the_class_in_pt_onnx_predict_and_json(sample, tmp_path):
    "tau > 0 stored by the decide stage moves the predicted class (not the probabilities) everywhere it is read."
    from dataclasses import asdict

    from derma_nb.decide import Decision, prior_corrected

    tmp, data, prep = sample
    files = sorted((data / "images").glob("*.jpg"))[:12]
    m = small_model()
    base = Predictor(save_model(tmp_path / "b.pt", m, image_size=32, decision=asdict(Decision())))
    probs = base.predict_files(files)[PROBS].to_numpy()
    top = probs.argmax(1)
    prior = [0.5 if k == top[0] else 0.5 / 6 for k in range(7)]  # the first image's top class made common
    tau = 3.0  # strong enough to move the images whose top class is the common one
    moved = prior_corrected(probs, prior, tau)
    assert (moved != top).any(), "the example needs an image whose class the correction changes"
    d = Decision(conformal={"alpha": 0.1, "classwise": False, "qhat": 0.5, "n": 50}, tau=tau, prior=prior)
    ckpt = save_model(tmp_path / "pc.pt", m, image_size=32, decision=asdict(d), data={"synthetic": False})
    onnx = export_checkpoint(ckpt, tmp_path / "pc.onnx")
    for path in (ckpt, onnx):
        df = Predictor(path).predict_files(files)
        np.testing.assert_allclose(df[PROBS].to_numpy(), probs, atol=1e-4)  # probabilities untouched
        assert df.pred.tolist() == [CLASSES[k] for k in moved]
        js = json.loads(predict_main(files, path, "json"))["images"]
        assert [r["top_class"] for r in js] == [CLASSES[k] for k in moved]
        assert [r["most_probable_class"] for r in js] == [CLASSES[k] for k in top]
        assert all(r["top_class"] in r["prediction_set"] for r in js)
        table = predict_main(files, path)
        assert "tau = 3" in table and "predicted class" in table
        assert table.count(" *  ") == int((moved != top).sum()) and "* not the most probable class" in table

"Grad-CAM maps, overlays, the example-picking rule (melanoma first) and the gallery figure."
import subprocess
import sys

import numpy as np
import pytest
import torch

from derma_nb.config import CLASSES
from derma_nb.cache import unit_batch
from derma_nb.data import decode_for_model
from derma_nb.sample import make_synthetic_sample
from derma_nb.explain import example_gallery, gallery_figure, gradcam, overlay, pick_examples
from derma_nb.model import build_model, set_trainable, train_mode

K = len(CLASSES)
MEL, NV, BCC, DF = (CLASSES.index(c) for c in ("mel", "nv", "bcc", "df"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = make_synthetic_sample(tmp_path_factory.mktemp("explain"), lesions={c: 1 for c in CLASSES}, width=96, height=72)
    files = sorted((d / "images").glob("*.jpg"))[:4]
    return np.stack([decode_for_model(f.read_bytes(), 64, name=f.name) for f in files])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("resnet18", "none")
    for mod in m.modules():  # non-trivial BatchNorm statistics so eval mode is not an identity
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_cam_shape_and_range(model, images):
    cams = gradcam(model, images)
    assert cams.shape == (len(images), 64, 64) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    assert (cams.reshape(len(cams), -1).max(1) > 0).all()


def test_cam_layouts_agree_and_none_means_predicted(model, images):
    a = gradcam(model, images)
    b = gradcam(model, torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.no_grad():
        pred = model(unit_batch(torch.from_numpy(images).permute(0, 3, 1, 2))).argmax(1).tolist()
    np.testing.assert_allclose(gradcam(model, images, pred), a, atol=1e-5)


def test_cam_differs_for_different_targets(model, images):
    n = len(images)
    a, b = gradcam(model, images, [MEL] * n), gradcam(model, images, [NV] * n)
    assert np.abs(a - b).max() > 1e-2


def test_cam_on_frozen_model_leaves_it_as_it_was(images):
    m = build_model("resnet18", "none")
    set_trainable(m, 0)
    train_mode(m, 0)
    modes = {n: mod.training for n, mod in m.named_modules()}
    cams = gradcam(m, images[:2], target_layer=m.body.layer3[-1])
    assert cams.shape == (2, 64, 64) and cams.max() > 0
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(p.grad is None for p in m.parameters())
    assert [p.requires_grad for p in m.parameters()].count(True) == 2  # the head's weight and bias only


def test_cam_input_checks(model, images):
    with pytest.raises(ValueError, match="targets"):
        gradcam(model, images, [0])
    with pytest.raises(ValueError, match="shape"):
        gradcam(model, images[0])


def test_overlay(images):
    cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    ov = overlay(images[0], cam)
    assert ov.shape == images[0].shape and ov.dtype == np.uint8
    assert overlay(images[0], cam[::8, ::8]).shape == images[0].shape
    assert not np.array_equal(overlay(images[0], cam, 0.2), overlay(images[0], cam, 0.8))
    with pytest.raises(ValueError):
        overlay(images[0], cam, alpha=1.5)


def P(k, p):
    "A probability row with `p` on class k and the rest spread evenly."
    return [p if j == k else (1 - p) / (K - 1) for j in range(K)]


def test_pick_examples_most_confident_correct_and_wrong_per_class():
    y_true = [NV, NV, NV, NV, MEL, MEL, MEL, BCC, BCC]
    y_prob = [P(NV, .7), P(NV, .95), P(MEL, .6), P(BCC, .8), P(MEL, .5), P(NV, .9), P(NV, .4), P(BCC, .6), P(BCC, .9)]
    rows = [100 + i for i in range(len(y_true))]
    ex = pick_examples(y_true, y_prob, rows=rows)
    assert list(ex.columns[:6]) == ["row", "class", "kind", "true", "pred", "confidence"]
    got = [(r.row, r["class"], r.kind, r.pred) for _, r in ex.iterrows()]
    assert got == [(104, "mel", "correct", "mel"), (105, "mel", "wrong", "nv"),  # mel first
                   (108, "bcc", "correct", "bcc"),  # bcc has no wrong prediction: skipped, and said so
                   (101, "nv", "correct", "nv"), (103, "nv", "wrong", "bcc")]
    assert ex.confidence.tolist() == pytest.approx([.5, .9, .9, .95, .8])
    assert ex.note.tolist() == ["", "", "no wrong prediction", "", ""]
    assert "bcc: no wrong prediction" in ex.attrs["missing"] and "df: no images" in ex.attrs["missing"]


def test_pick_examples_mel_present_without_wrong_predictions_and_per_class():
    y_true = [NV, MEL, NV, MEL, MEL]
    y_prob = [P(NV, .9), P(MEL, .3), P(MEL, .99), P(MEL, .6), P(MEL, .45)]
    ex = pick_examples(y_true, y_prob)
    assert ex["class"].iloc[0] == "mel" and ex.row.iloc[0] == 3 and ex.kind.iloc[0] == "correct"
    assert (ex["class"] == "mel").sum() == 1 and "no wrong" in ex.note.iloc[0]
    ex2 = pick_examples(y_true, y_prob, per_class=2)
    assert ex2[ex2["class"] == "mel"].row.tolist() == [3, 4]
    # class names work as labels too
    assert pick_examples([CLASSES[k] for k in y_true], y_prob).equals(ex)


def test_pick_examples_mel_only_wrong():
    ex = pick_examples([MEL, MEL, NV], [P(NV, .7), P(BCC, .8), P(NV, .6)])
    assert ex.iloc[0].to_dict() | {"confidence": 0} == {"row": 1, "class": "mel", "kind": "wrong", "true": "mel",
                                                          "pred": "bcc", "confidence": 0,
                                                          "note": "no correct prediction"}


def test_gallery_returns_figure(model, images):
    from matplotlib.figure import Figure

    cams = gradcam(model, images)
    fig = gallery_figure(images, cams, [f"t{i}" for i in range(len(images))], ncols=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3 * 2 + 1  # 4 pairs over 2 rows of 3 pairs, colour bar
    assert [ax.get_title(loc="left") for ax in fig.axes[:2]] == ["t0", "Grad-CAM"]
    ex = pick_examples([MEL, NV, NV, BCC], [P(MEL, .9), P(NV, .8), P(MEL, .7), P(NV, .6)])
    assert isinstance(example_gallery(model, images, ex), Figure)
    assert isinstance(gallery_figure([], [], []), Figure)


def test_module_imports_without_optional_dependencies():
    code = ("import sys\nfor m in ('pytorch_grad_cam', 'matplotlib', 'cv2', 'onnx', 'onnxruntime'): sys.modules[m] = None\n"
            "import derma_nb.explain, derma_nb.export, derma_nb.predict")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

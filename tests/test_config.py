"""Tests for derma_nb.config: params.yaml loading/validation, seeding and device choice."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from derma_nb.config import CLASSES, Params, ParamsError, load_params, params_dict
from derma_nb.runtime import pick_device, seed_everything

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------------------------
# defaults
# ---------------------------------------------------------------------------------------------------------------
def test_repo_params_yaml_loads_and_matches_defaults():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    # params.yaml spells out every key of the schema (each documented there), and nothing else
    import yaml

    def keys(d, pre=""):
        return {k2 for k, v in d.items() for k2 in (keys(v, f"{pre}{k}.") if isinstance(v, dict) and k not in
                                                       ("lesions",) else {f"{pre}{k}"})}
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert keys(raw) == keys(params_dict(Params()))
    assert p.seed == 0 and p.device == "auto"
    assert p.prepare.image_size == 64 and p.prepare.resize == "center_crop"
    assert (p.prepare.split.train, p.prepare.split.val, p.prepare.split.test) == (0.8, 0.1, 0.1)
    assert p.data.dir == "data" and p.data.lenient is False
    assert set(p.data.sample.lesions) == set(CLASSES)
    assert min(p.data.sample.lesions.values()) >= 30
    assert p.data.fetch.layout == "isic2018" and p.data.fetch.files == []


def test_empty_file_and_no_file_give_defaults(tmp_path):
    assert params_dict(load_params(write(tmp_path, ""))) == params_dict(Params())
    assert params_dict(load_params(None)) == params_dict(Params())


def test_partial_file_keeps_other_defaults(tmp_path):
    p = load_params(write(tmp_path, "prepare:\n  image_size: 32\n"))
    assert p.prepare.image_size == 32
    assert p.prepare.resize == "center_crop" and p.seed == 0


# ---------------------------------------------------------------------------------------------------------------
# one error per invalid value: key, value and what is allowed are named
# ---------------------------------------------------------------------------------------------------------------
INVALID = [
    # yaml text, regexes that must all be in the message
    ("prepare:\n  image_size: -5\n", [r"prepare\.image_size", r"-5", r">= 16"]),
    ("prepare:\n  image_size: 5000\n", [r"prepare\.image_size", r"5000", r"<= 1024"]),
    ("prepare:\n  image_size: big\n", [r"prepare\.image_size", r"'big'", r"integer"]),
    ("prepare:\n  image_size: true\n", [r"prepare\.image_size", r"True", r"integer"]),
    ("prepare:\n  image_size: 32.0\n", [r"prepare\.image_size", r"32\.0", r"integer"]),
    ("prepare:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n", [r"prepare\.split", r"sum to 1", r"0\.5", r"0\.7"]),
    ("prepare:\n  split: {train: 1.0, val: 0.0, test: 0.0}\n", [r"prepare\.split\.val", r"> 0", r"0\.0"]),
    ("prepare:\n  split: {train: 0.8, val: 0.1, test: 0.1, holdout: 0.1}\n",
     [r"prepare\.split\.holdout", r"not a known parameter", r"train", r"val", r"test"]),
    ("prepare:\n  resize: stretch\n", [r"prepare\.resize", r"'stretch'", r"center_crop", r"pad"]),
    ("prepare:\n  imagesize: 32\n", [r"prepare\.imagesize", r"not a known parameter", r"image_size"]),
    ("epochs: 3\n", [r"epochs", r"not a known parameter", r"seed"]),
    ("prepare:\n  workers: 0\n", [r"prepare\.workers", r"0", r">= 1"]),
    ("seed: -1\n", [r"seed", r"-1", r">= 0"]),
    ("seed: yes\n", [r"seed", r"True", r"integer"]),
    ("data:\n  lenient: 'yes'\n", [r"data\.lenient", r"'yes'", r"true or false"]),
    ("device: gpu\n", [r"device", r"'gpu'", r"auto", r"cpu", r"cuda", r"mps"]),
    ("data:\n  fetch:\n    files: [{url: 'ftp://example.org/x.zip'}]\n",
     [r"data\.fetch\.files\[0\]\.url", r"ftp://example\.org/x\.zip", r"http\(s\)://", r"file://"]),
    ("data:\n  fetch:\n    files: [{url: 'https://example.org/x.zip', sha256: abc}]\n",
     [r"data\.fetch\.files\[0\]\.sha256", r"'abc'", r"64 hex"]),
    ("data:\n  fetch:\n    layout: kaggle\n", [r"data\.fetch\.layout", r"'kaggle'", r"isic2018", r"ham10000"]),
    ("data:\n  fetch:\n    retries: 0\n", [r"data\.fetch\.retries", r">= 1"]),
    ("data:\n  sample:\n    lesions: {mel: 40, melanoma: 30}\n",
     [r"data\.sample\.lesions", r"unknown class", r"melanoma", r"akiec", r"vasc"]),
    ("data:\n  sample:\n    lesions: {mel: 0}\n", [r"data\.sample\.lesions\.mel", r"got 0", r">= 1"]),
    ("data:\n  sample:\n    lesions: {mel: true}\n", [r"data\.sample\.lesions\.mel", r"True", r"int"]),
    ("data:\n  sample:\n    width: 8\n", [r"data\.sample\.width", r"8", r">= 32"]),
    ("prepare: [1, 2]\n", [r"prepare", r"mapping", r"\[1, 2\]"]),
]


@pytest.mark.parametrize("text,patterns", INVALID, ids=[t.strip().replace("\n", " ")[:50] for t, _ in INVALID])
def test_invalid_value_names_key_value_and_allowed(tmp_path, text, patterns):
    path = write(tmp_path, "seed: 0\n" + text if not text.startswith("seed") else text)
    with pytest.raises(ParamsError) as ei:
        load_params(path)
    msg = str(ei.value)
    assert str(path) in msg
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not in {msg!r}"
    assert "\n" not in msg.strip()  # one error, one line


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ParamsError, match=re.escape(str(path)) + r".*not found"):
        load_params(path)


def test_invalid_yaml_names_the_path(tmp_path):
    path = write(tmp_path, "prepare:\n  image_size: [32\n  resize: pad\n")
    with pytest.raises(ParamsError, match=re.escape(str(path)) + r": not valid YAML"):
        load_params(path)


def test_tab_indented_yaml_names_the_path(tmp_path):
    path = write(tmp_path, "prepare:\n\timage_size: 32\n")
    with pytest.raises(ParamsError, match=re.escape(str(path))):
        load_params(path)


# ---------------------------------------------------------------------------------------------------------------
# overrides
# ---------------------------------------------------------------------------------------------------------------
def test_dotted_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\nprepare:\n  image_size: 48\n")
    p = load_params(path, {"prepare.image_size": 32, "prepare.split.val": 0.15, "prepare.split.test": 0.05,
                           "data.sample.lesions": {"mel": 31}, "seed": 7, "device": "cpu"})
    assert p.prepare.image_size == 32
    assert (p.prepare.split.train, p.prepare.split.val, p.prepare.split.test) == (0.8, 0.15, 0.05)
    assert p.data.sample.lesions == {"mel": 31}
    assert p.seed == 7 and p.device == "cpu"
    assert p.prepare.resize == "center_crop"  # untouched keys keep their values
    # the file itself is not modified
    assert load_params(path).prepare.image_size == 48


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, "seed: 0\n")
    with pytest.raises(ParamsError, match=r"prepare\.image_size must be >= 16, got 8"):
        load_params(path, {"prepare.image_size": 8})
    with pytest.raises(ParamsError, match=r"prepare\.nope is not a known parameter"):
        load_params(path, {"prepare.nope": 1})
    with pytest.raises(ParamsError, match=r"prepare\.image_size must be an integer, got \{'x': 1\}"):
        load_params(path, {"prepare.image_size.x": 1})
    path = write(tmp_path, "prepare:\n  image_size: 32\n")
    with pytest.raises(ParamsError, match=r"cannot set prepare\.image_size\.x: image_size is not a mapping"):
        load_params(path, {"prepare.image_size.x": 1})


def test_overrides_without_file():
    p = load_params(None, {"data.lenient": True})
    assert p.data.lenient is True


def test_scalar_yaml_with_overrides_raises_params_error(tmp_path):
    path = write(tmp_path, "42\n")
    with pytest.raises(ParamsError, match=re.escape(str(path))):
        load_params(path, {"seed": 1})


def test_nan_split_fraction_is_rejected(tmp_path):
    path = write(tmp_path, "prepare:\n  split: {train: .nan, val: 0.1, test: 0.1}\n")
    with pytest.raises(ParamsError, match=r"prepare\.split"):
        load_params(path)


# ---------------------------------------------------------------------------------------------------------------
# seeding and device
# ---------------------------------------------------------------------------------------------------------------
def _draw():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randint(0, 1000, (4,)).tolist()


def test_seed_everything_repeats_python_numpy_torch():
    info = seed_everything(123)
    assert info["seed"] == 123 and info["deterministic"] is True
    a = _draw()
    seed_everything(123)
    b = _draw()
    seed_everything(124)
    c = _draw()
    assert a == b
    assert a[0] != c[0] and a[1] != c[1] and a[2] != c[2]


def test_seed_everything_non_deterministic_flag():
    info = seed_everything(5, deterministic=False)
    assert info["deterministic"] is False
    x = torch.rand(2).tolist()
    seed_everything(5, deterministic=False)
    assert torch.rand(2).tolist() == x
    seed_everything(0)  # leave the default (deterministic) state for other tests


def test_pick_device_cpu():
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: cuda is available")
def test_pick_device_cuda_unavailable_raises():
    with pytest.raises(ParamsError, match=r"'cuda' was requested but is not available"):
        pick_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator is present")
def test_pick_device_auto_is_cpu_here():
    assert pick_device("auto") == torch.device("cpu")


def test_pick_device_unknown_name():
    with pytest.raises(ParamsError, match=r"device must be one of .*'auto'.*got 'tpu'"):
        pick_device("tpu")


# ---------------------------------------------------------------------------------------------------------------
# every YAML spelling of a float is a float (PyYAML reads 1e-5 without a dot as a string); no other str→number
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["1e-5", "1.0e-5", "0.00001", "1E-5", "+1e-05"])
def test_float_spellings_in_the_file_and_in_overrides(tmp_path, spelling):
    path = write(tmp_path, f"train:\n  phase2:\n    lr: {spelling}\n")
    assert load_params(path).train.phase2.lr == pytest.approx(1e-5)
    import yaml  # -S values go through yaml.safe_load exactly like the CLI does

    assert load_params(None, {"train.phase2.lr": yaml.safe_load(spelling)}).train.phase2.lr == pytest.approx(1e-5)


def test_strings_that_are_not_numbers_and_numbers_for_ints_stay_errors(tmp_path):
    with pytest.raises(ParamsError, match=r"train\.phase2\.lr must be a finite number, got 'fast'"):
        load_params(write(tmp_path, "train:\n  phase2:\n    lr: fast\n"))
    with pytest.raises(ParamsError, match=r"train\.batch_size must be an integer, got '32'"):
        load_params(write(tmp_path, "train:\n  batch_size: '32'\n"))
    with pytest.raises(ParamsError, match=r"train\.phase2\.lr must be > 0.0, got -1"):
        load_params(write(tmp_path, "train:\n  phase2:\n    lr: -1\n"))

"`derma-nb predict` over a folder of good and bad files: every good one predicted, every bad one named, exit code 1."
import io
import json
import shutil

import pandas as pd
import pytest
import torch

from derma_nb.cli import main
from derma_nb.config import CLASSES
from derma_nb.model import build_model, save_model
from derma_nb.sample import make_synthetic_sample

BAD = {"truncated.jpg": "truncated", "notes.jpg": "no format Pillow knows"}  # file → a word of its reason


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    "(folder with three good images, a truncated JPEG and a text file named .jpg; a small model file)."
    tmp = tmp_path_factory.mktemp("batch")
    data = make_synthetic_sample(tmp / "data", lesions={c: 1 for c in CLASSES[:4]}, width=64, height=48)
    images = sorted((data / "images").glob("*.jpg"))
    folder = tmp / "folder"
    folder.mkdir()
    for f in images[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "truncated.jpg").write_bytes(images[3].read_bytes()[:300])
    (folder / "notes.jpg").write_text("patient notes, saved with the wrong extension")
    torch.manual_seed(0)
    model = save_model(tmp / "m.pt", build_model("resnet18", "none").eval(), image_size=32)
    return folder, [f.name for f in images[:3]], model


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_every_good_file_predicted_every_bad_one_named(clinic, capsys, fmt):
    folder, good, model = clinic
    rc = main(["predict", str(folder), "--model", str(model), "--format", fmt])
    out, err = capsys.readouterr()
    assert rc == 1, "a file that could not be read makes the exit code 1"
    errors = [line for line in err.splitlines() if line.startswith("derma-nb predict: error: ")]
    assert len(errors) == len(BAD) and "Traceback" not in err
    for name, why in BAD.items():
        assert any(str(folder / name) in line and why in line for line in errors), (name, err)
    if fmt == "table":
        rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0].endswith(".jpg")}
        assert set(rows) == set(good) | set(BAD)
        assert all("NOT READ" not in rows[g] for g in good) and all("NOT READ: " in rows[b] for b in BAD)
        return
    table = (pd.DataFrame(json.loads(out)["images"]) if fmt == "json" else
             pd.read_csv(io.StringIO(out)))
    assert "error" in table.columns
    by_name = table.assign(name=table.file.map(lambda f: f.rsplit("/", 1)[-1])).set_index("name")
    assert sorted(by_name.index) == sorted(good + list(BAD))
    for g in good:  # predicted: a class and probabilities, no error
        assert pd.isna(by_name.error[g]) and by_name.top_class[g] in CLASSES
        assert abs(sum(float(by_name[f"prob_{c}"][g]) for c in CLASSES) - 1) < 1e-3
    for b, why in BAD.items():  # named with the reason, and no made-up prediction
        assert why in by_name.error[b] and pd.isna(by_name.top_class[b])
    if fmt == "json":  # null, not a string, for the files that were read
        assert sum(r["error"] is None for r in json.loads(out)["images"]) == len(good)


def test_all_good_files_exit_zero_with_empty_error(clinic, capsys):
    folder, good, model = clinic
    assert main(["predict", *[str(folder / g) for g in good], "--model", str(model), "--format", "json"]) == 0
    images = json.loads(capsys.readouterr().out)["images"]
    assert [r["error"] for r in images] == [None] * len(good)

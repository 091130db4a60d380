"""The `real` profile end to end on a small lesion-disjoint slice of the real HAM10000 subset (skipped without it).

The slice keeps whole lesions (20 per class at most) so the lesion-grouped split still applies; the profile's
epochs, image size and views are overridden with -S to fit in a few minutes. Then `predict` on the original test files must
reproduce the evaluate stage exactly.
"""
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED_DATA.exists(),
                                                   reason=f"real data not found at {SHARED_DATA}")]


def real_slice(dst: Path, lesions_per_class: int = 20, seed: int = 0) -> Path:
    meta = pd.read_csv(SHARED_DATA / "HAM10000_metadata.csv")
    rng = np.random.default_rng(seed)
    keep = []
    for dx, g in meta.groupby("dx"):
        ids = g.lesion_id.unique()
        keep += list(rng.choice(ids, size=min(lesions_per_class, len(ids)), replace=False))
    part = meta[meta.lesion_id.isin(keep)]
    (dst / "images").mkdir(parents=True)
    for i in part.image_id:
        (dst / "images" / f"{i}.jpg").symlink_to(SHARED_DATA / "images" / f"{i}.jpg")
    part.to_csv(dst / "HAM10000_metadata.csv", index=False)
    return dst


def test_real_profile_on_a_slice_end_to_end(tmp_path):
    data = real_slice(tmp_path / "slice")
    repo = tmp_path / "repo"
    env = copy_repo(repo)
    cmd = (f"derma-nb run --profile real -S data.dir={data} -S train.phase1.epochs=2 -S train.phase2.epochs=2 "
           f"-S train.phase2.cache_views=2 -S prepare.image_size=32 -S evaluate.n_boot=100 -S decide.views=1 "
           f"-S baseline.n_estimators=50")
    r = subprocess.run(cmd, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    ran = set(re.findall(r"Running stage '(\w+)'", r.stdout + r.stderr))
    assert {"prepare", "train", "evaluate", "report"} <= ran
    man = json.loads((repo / "artifacts/prepared/manifest.json").read_text())
    assert not man["synthetic"] and man["skipped"] == 0 and man["image_size"] == 32
    table = pd.read_csv(repo / "artifacts/prepared/splits.csv")
    assert table.groupby("lesion_id").split.nunique().max() == 1
    assert (table.groupby(["dx", "split"]).size().unstack().reindex(columns=["train", "val", "test"]) > 0).all().all()
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["arch"] == "tf_efficientnet_lite0" and train["weights"] == "imagenet"
    # the profile's deep ensemble: every member trains both phases over the one frozen trunk
    members = train["ensemble"]["trained"]
    assert members == 3 and train["epochs_run"] == 4 * members
    assert 1 <= train["ensemble"]["members"] <= members
    timings = json.loads((repo / "reports/timings/train.json").read_text())
    assert timings["cache_seconds"] > 0  # phase 2 on the frozen part's cached views
    hist = pd.read_csv(repo / "plots/history.csv")
    assert list(hist.phase) == [1, 1, 2, 2] * members
    assert list(hist.member) == [m for m in range(1, members + 1) for _ in range(4)]
    test = json.loads((repo / "metrics/test.json").read_text())
    assert 0 <= test["accuracy"] <= 1 and test["ci"]["accuracy"]["low"] <= test["accuracy"]
    assert "HAM10000" in (repo / "reports/index.html").read_text()

    from derma_nb.predict import predict_parity
    from derma_nb.results import write_results

    parity = predict_parity(repo)
    assert parity["max_abs_prob_diff"] < 1e-5 and parity["same_predictions"] and parity["metrics_equal"], parity
    page, readme = tmp_path / "results.md", tmp_path / "README.md"
    page.write_text("x\n<!-- results:real -->\nold\n<!-- /results:real -->\ny\n")
    readme.write_text("x\n<!-- results:real-headline -->\nold\n<!-- /results:real-headline -->\ny\n")
    write_results(repo, "real", page=page, readme=readme, out_dir=tmp_path / "results")
    text, head = page.read_text(), readme.read_text()
    assert "old" not in text and f"{test['accuracy']:.3f}" in text and "DermaMNIST" in text
    assert "old" not in head and f"{test['balanced_accuracy']:.3f}" in head and "DermaMNIST" not in head

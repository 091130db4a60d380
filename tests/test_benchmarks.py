"""The benchmark scripts run against the library as it is (an API change breaks them here, not on a rented GPU), and
the GPU tables of results/README.md are what benchmarks/recipe_run.py makes of the committed run files."""
import importlib.util
import json
import re
import shlex
import sys

import numpy as np
import pytest

from conftest import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from derma_nb.sample import make_synthetic_sample

    return make_synthetic_sample(tmp_path_factory.mktemp("sample") / "data")


def test_recipe_run_on_the_sample(sample, tmp_path, capsys):
    rr = _load("recipe_run")
    rr.main(["--data", str(sample), "--out", str(tmp_path), "--name", "smoke", "--set", "train.phase1.epochs=3",
             "--set", "train.phase2.epochs=1", "--set", "decide.views=2", "--train-seed", "3"])
    r = json.loads((tmp_path / "recipe_smoke.json").read_text())
    assert r["profile_params"] == {} and r["train_seed"] == 3 and r["seed"]["train"]["seed"] == 3 and r["seed"]["split"]["seed"] == 0
    assert r["overrides"] == {"train.phase1.epochs": 3, "train.phase2.epochs": 1, "decide.views": 2}
    assert [(e["phase"], e["epoch"]) for e in r["epochs"]] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert r["decision"]["views"] == 2 and r["decision"]["temperature"] > 0
    assert sum(r["images"].values()) == 799 and r["device"] == "cpu" and r["peak_gpu_memory_GiB"] is None
    for k, v in r["test"].items():  # as the evaluate page shows it: value [low, high] around the value, or why not
        assert v["ci"].startswith(f"{v['value']:.3f} "), (k, v)
        got = re.search(r"\[([\d.]+), ([\d.]+)\]", v["ci"])
        assert got or "n too small" in v["ci"], (k, v)
        if got:
            lo, hi = map(float, got.groups())
            assert lo <= round(v["value"], 3) <= hi, (k, v)
    out = capsys.readouterr().out
    assert "smoke: tf_efficientnet_lite0 at 64 px on cpu" in out and "phase 2: 1 epochs" in out
    table = rr.runs_table([tmp_path / "recipe_smoke.json"])
    assert ("| smoke | params.yaml: `train.phase1.epochs=3`, `train.phase2.epochs=1`, `decide.views=2`, training seed 3 |"
            in table)
    z = np.load(tmp_path / "recipe_smoke_logits.npz")  # every view's logits, for ensembles and prior corrections
    assert z["val"].shape == (2, len(z["y_val"]), 7) and z["test"].shape == (2, len(z["y_test"]), 7)
    assert len(z["test_groups"]) == len(z["y_test"]) == r["images"]["test"]
    from derma_nb.decide import calibrated_probs  # the saved test logits are the ones the printed metrics came from
    from derma_nb.metrics import label_metrics

    p = calibrated_probs(z["test"], r["decision"]["temperature"])
    assert label_metrics(z["y_test"], p)["macro_f1"] == pytest.approx(r["test"]["macro_f1"]["value"], abs=1e-9)


def test_spread_table_groups_runs_by_setting(tmp_path):
    rr = _load("recipe_run")

    def run(name, seed, overrides, bal, val):
        r = {"name": name, "profile": "real", "overrides": {"prepare.workers": 16, **overrides}, "train_seed": seed,
             "seed": {"split": {"seed": 0}, "train": {"seed": seed}}, "best": {"value": val},
             "test": {k: {"value": bal} for k in ("balanced_accuracy", "macro_f1", "mel_recall", "macro_auc")}}
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
        return tmp_path / f"{name}.json"

    files = [run("a0", 0, {}, 0.60, 0.62), run("a1", 1, {}, 0.62, 0.64), run("b0", 0, {"train.phase2.lr": 0.001}, 0.7, 0.66)]
    lines = rr.spread_table(files).splitlines()
    assert len(lines) == 4  # header, rule, two settings (the seed is not a setting; prepare.workers is not shown)
    assert lines[2] == ("| real: as profiled | 0, 1 | 0.630 ± 0.014 | 0.610 ± 0.014 | 0.610 ± 0.014 | 0.610 ± 0.014 | "
                        "0.610 ± 0.014 |")
    assert lines[3].startswith("| real: `train.phase2.lr=0.001` | 0 | 0.660 | 0.700 |")


def test_recipe_run_names_a_bad_override(sample, tmp_path):
    rr = _load("recipe_run")
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        rr.main(["--data", str(sample), "--out", str(tmp_path), "--set", "train.phase2.epochs"])


def test_results_gpu_table_is_generated_from_the_committed_runs():
    page = (ROOT / "results" / "README.md").read_text()
    block = page.split("<!-- results:gpu -->\n", 1)[1].split("<!-- /results:gpu -->", 1)[0]
    first, table = block.split("\n", 1)
    cmd = shlex.split(re.search(r"`python benchmarks/recipe_run.py --table ([^`]+)`", first).group(1))
    assert cmd and all((ROOT / f).is_file() for f in cmd)
    assert table == _load("recipe_run").runs_table([ROOT / f for f in cmd])


def test_results_seed_table_is_generated_from_the_committed_runs():
    block = (ROOT / "results" / "README.md").read_text().split("<!-- results:gpu-seeds -->\n", 1)[1]
    first, table = block.split("<!-- /results:gpu-seeds -->", 1)[0].split("\n", 1)
    files = shlex.split(re.search(r"`python benchmarks/recipe_run.py --spread ([^`]+)`", first).group(1))
    assert len(files) >= 6 and all((ROOT / f).is_file() for f in files)
    assert table == _load("recipe_run").spread_table([ROOT / f for f in files])


def test_bench_sections_run_and_compare(sample, tmp_path):
    bench = _load("bench")
    bench.main(["--only", "phase1", "phase2", "--data", str(sample), "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["results"]
    by = {r["what"]: r["value"] for r in rows}
    assert by["from-features / through-backbone per epoch"] > 1  # the head alone is cheaper than the network
    assert by["cached trunk / whole network per image"] > 1  # the real profile's phase-2 shortcut pays
    assert all(isinstance(r["value"], (int, float)) and r["value"] > 0 for r in rows)
    md = (tmp_path / "benchmarks.md").read_text()
    assert "tf_efficientnet_lite0" in md and "| phase2 |" in md


def test_loader_and_frozen_sections(sample, tmp_path, monkeypatch):
    "The input pipeline alone at 224 px, and the frozen work on PyTorch vs ONNX Runtime, on this machine."
    monkeypatch.setenv("DERMA_NB_BENCH_LOADER_N", "512")
    bench = _load("bench")
    bench.main(["--only", "loader", "frozen", "--data", str(sample), "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["results"]
    loader = [r for r in rows if r["section"] == "loader"]
    assert loader[0]["unit"] == "img/s" and loader[0]["value"] > 500  # uint8 batches, no decoding: fast on any CPU
    plain, ahead = (r for r in loader if "a loop whose step waits" in r["what"])  # made between steps, prefetched
    assert plain["value"] > 0 and ahead["value"] > 0 and "range" in plain["what"] and "`prefetched`" in ahead["what"]
    ratio = next(r for r in loader if r["what"].startswith("that loop's rate"))
    shown = [int(v) for v in re.findall(r"(\d+)%", ratio["value"])]  # "prefetched% (between%)" of the step's rate
    assert len(shown) == 2 and abs(shown[0] - 100 * ahead["value"] / 11421) <= 1 and abs(shown[1] - 100 * plain["value"] / 11421) <= 1
    frozen = {r["what"].rsplit(": ", 1)[1].split(" (")[0]: r["value"] for r in rows
              if r["section"] == "frozen" and "trunk" in r["what"]}
    assert frozen["PyTorch eager"] > 0 and frozen["ONNX Runtime"] > 0
    assert float(frozen["largest difference from PyTorch"]) < 1e-3  # the same numbers, faster or not
    md = (tmp_path / "benchmarks.md").read_text()
    assert "| loader |" in md and "| frozen |" in md and "ONNX Runtime / best PyTorch" in md


def test_prior_shift_adjustment():
    spec = importlib.util.spec_from_file_location("prior_shift", ROOT / "tools" / "prior_shift.py")
    ps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ps)
    probs = np.array([[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    prior = np.array([0.7, 0.2, 0.1])
    assert ps.adjusted(probs, prior, 0.0).tolist() == [0, 0]  # τ = 0: the plain argmax (ties: first class)
    assert ps.adjusted(probs, prior, 1.0).tolist() == [1, 2]  # τ = 1: 0.6/0.7 < 0.3/0.2; uniform -> rarest class
    s = ps.scores(np.array([4, 4, 5, 5]), np.array([4, 5, 5, 5]))
    assert s["mel_recall"] == 0.5 and s["balanced_accuracy"] == 0.75


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "ham10000").exists(), reason="real data not found")
def test_context_gain_on_the_committed_gpu_logits(capsys):
    "tools/context_gain.py runs the pipeline's decide with and without the context on stored logits, both on test."
    spec = importlib.util.spec_from_file_location("context_gain", ROOT / "tools" / "context_gain.py")
    cg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cg)
    assert cg.main([str(ROOT / "reports" / "gpu" / "recipe_real_lr1e3_logits.npz")]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| recipe_real")]
    assert [r[1] for r in rows] == ["image only", "image + context"]
    assert float(rows[0][2]) == 0 and float(rows[1][2]) > 0  # the weight: kept on this model's validation split
    assert float(rows[1][7].rstrip(" |")) > float(rows[0][7].rstrip(" |"))  # the context raises test macro AUC

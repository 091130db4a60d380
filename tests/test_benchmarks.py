"""The benchmark scripts run against the library as it is (an API change breaks them here, not on a rented GPU), and
the README's GPU table is what benchmarks/recipe_run.py makes of the committed run files."""
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
             "--set", "train.phase2.epochs=1", "--set", "decide.views=2"])
    r = json.loads((tmp_path / "recipe_smoke.json").read_text())
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
    assert "| smoke | params.yaml: `train.phase1.epochs=3`, `train.phase2.epochs=1`, `decide.views=2` |" in table


def test_recipe_run_names_a_bad_override(sample, tmp_path):
    rr = _load("recipe_run")
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        rr.main(["--data", str(sample), "--out", str(tmp_path), "--set", "train.phase2.epochs"])


def test_readme_gpu_table_is_generated_from_the_committed_runs():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- results:gpu -->\n", 1)[1].split("<!-- /results:gpu -->", 1)[0]
    first, table = block.split("\n", 1)
    cmd = shlex.split(re.search(r"`python benchmarks/recipe_run.py --table ([^`]+)`", first).group(1))
    assert cmd and all((ROOT / f).is_file() for f in cmd)
    assert table == _load("recipe_run").runs_table([ROOT / f for f in cmd])


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

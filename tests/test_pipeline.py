"""End to end: the README's run command on the synthetic sample in a fresh copy of the repo, then DVC's view of it.

One run (a few minutes on 2 cores; the `run` fixture of conftest.py, shared with tests/test_pages.py) feeds all
assertions: every stage report exists with its key
sections, `dvc metrics show` / `dvc plots show` work, a second `dvc repro` reruns nothing, and a one-param change
reruns only the stages downstream of it.
"""
import json
import re
from pathlib import Path

import pytest
from clearml_session import read_offline_session
from conftest import readme_commands, sh  # `run`, the one sample run these tests share, is in conftest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_readme_quick_start_has_install_run_test():
    cmds = readme_commands()
    assert len(cmds) == 3 and "install" in cmds[0] and cmds[1].startswith("derma-nb run") and "pytest" in cmds[2]


def test_run_created_the_synthetic_sample_and_every_stage_ran(run):
    repo, _, out = run
    assert (repo / "data" / "SYNTHETIC.md").exists()
    for stage in STAGES + ("report",):
        assert f"Running stage '{stage}'" in out, stage


def test_run_wrote_its_summary(run):
    "reports/summary.md: the decision, metrics with CIs, every stage's time, SYNTHETIC; git-ignored."
    repo, env, _ = run
    text = (repo / "reports/summary.md").read_text()
    assert re.match(r"# derma-nb run: succeeded — model (PROMOTED|REJECTED)\n\n> SYNTHETIC sample", text), text
    assert re.search(r"\| Balanced accuracy \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", text), text
    for stage in STAGES + ("report",):
        assert re.search(rf"\| {stage} \| ran \| \d+\.\d s \|", text), stage
    assert "summary" not in sh("git status --porcelain", repo, env)[1]


STAGES = ("prepare", "eda", "baseline", "train", "decide", "evaluate", "explain", "export")
KEY_SECTIONS = {
    "prepare": ["Data preparation", "What was not taken as it is", "Lesion groups and the split", "SYNTHETIC"],
    "export": ["ONNX export", "ONNX Runtime agrees with PyTorch", "Sidecar"],
    "eda": ["Class distribution", "imbalance ratio", "Missing values", "Images per lesion", "lesion-disjoint",
            "Lesions in two splits"],
    "baseline": ["Fitted", "Per-class recall", "Metrics"],
    "train": ["Curves", "Best epoch", "device"],
    "decide": ["Decisions from validation", "Calibration", "Melanoma operating point and prediction sets"],
    "evaluate": ["Headline metrics with 95% CIs", "Per class", "Confusion matrices", "ROC curves", "Calibration",
                 "Brier score", "Test-time augmentation", "Melanoma operating point", "Conformal prediction sets",
                 "What the guarantee assumes", "Subgroups", "Baseline vs model", "Promotion decision", "Decision:"],
    "explain": ["Grad-CAM", "Gallery (melanoma first)"],
}


@pytest.mark.parametrize("stage", sorted(KEY_SECTIONS))
def test_stage_html_has_its_key_sections_and_hides_code(run, stage):
    from bs4 import BeautifulSoup

    repo = run[0]
    soup = BeautifulSoup((repo / "reports" / f"{stage}.html").read_text(encoding="utf-8"), "html.parser")
    text = soup.get_text(" ")
    for s in KEY_SECTIONS[stage]:
        assert s in text, f"{stage}.html lacks '{s}'"
    assert f'Stage("{stage}"' not in text, "code should be hidden in the reviewers' HTML"
    if stage not in ("prepare", "export"):
        assert soup.find_all("img"), f"{stage}.html has no figures"
    nb = json.loads((repo / "reports" / f"{stage}.ipynb").read_text())
    assert any("derma_nb" in "".join(c["source"]) for c in nb["cells"]), "the executed notebook keeps the code"
    assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3}|\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)(?::|\s+\|)")


def report_text(path) -> str:
    "What a reader of an HTML report sees: its text, without style sheets, scripts and embedded images."
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    for tag in soup(["style", "script"]):
        tag.decompose()
    return soup.get_text(" ")


def test_report_pattern_catches_log_lines_and_nan():
    assert LOG_LINE.search("2026-11-24 10:01:02,123 INFO derma_nb: x") and LOG_LINE.search("INFO:root:epoch 1")
    assert LOG_LINE.search("[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.")
    assert not LOG_LINE.search("Generated 2026-11-24 11:18:42 UTC") and not LOG_LINE.search("ERRORS of the model")


@pytest.mark.parametrize("page", [*STAGES, "index", "model_card"])
def test_reports_hold_results_not_logs_or_nan(run, page):
    text = report_text(run[0] / "reports" / f"{page}.html")
    assert not re.search(r"\bNaN\b|\bnan\b", text), f"{page}.html shows NaN: " + text[
        max(0, re.search(r"\bNaN\b|\bnan\b", text).start() - 120):][:240]
    hit = LOG_LINE.search(text)
    assert not hit, f"{page}.html shows a log line: {text[max(0, hit.start() - 80):hit.start() + 160]!r}"
    assert not re.search(r"\b0\.\d{6,}\b", text), f"{page}.html shows a raw 6-decimal float"


def test_index_links_every_stage_and_shows_decision(run):
    from bs4 import BeautifulSoup

    repo = run[0]
    soup = BeautifulSoup((repo / "reports/index.html").read_text(encoding="utf-8"), "html.parser")
    for sid in ("promotion", "headline", "training", "stages", "identity"):
        assert soup.find(id=sid), sid
    hrefs = {a["href"] for a in soup.find_all("a")}
    assert {"eda.html", "baseline.html", "train.html", "decide.html", "evaluate.html", "explain.html",
            "model_card.html"} <= hrefs
    promo = json.loads((repo / "reports/promotion.json").read_text())
    assert promo["decision"].upper() in soup.find(id="promotion").get_text()
    test = json.loads((repo / "metrics/test.json").read_text())
    assert f"{test['accuracy']:.3f}" in soup.find(id="headline").get_text()
    assert "SYNTHETIC" in soup.get_text()


def test_decisions_come_from_validation_and_are_reported_on_test(run):
    repo = run[0]
    dec = json.loads((repo / "metrics/decide.json").read_text())
    test = json.loads((repo / "metrics/test.json").read_text())
    assert dec["val_nll"][1] <= dec["val_nll"][0] + 1e-9, "the fitted temperature cannot raise the validation NLL"
    assert dec["mel"]["threshold"] is None or dec["mel"]["sensitivity"] >= dec["mel"]["target_sensitivity"]
    assert dec["val_coverage"] >= 1 - dec["conformal"]["alpha"] - 1e-9  # by construction on its own split
    cal = test["calibration"]
    assert len(cal) == 2 and all({"negative log-likelihood", "Brier score", "expected calibration error"} <= set(v)
                                 for v in cal.values())
    assert test["conformal"]["qhat"] == dec["conformal"]["qhat"], "the test split did not refit q-hat"
    classes = [r["class"] for r in test["conformal"]["table"]]
    assert classes[0] == "all" and len(classes) == 8
    assert test["mel_operating_point"]["threshold"] == dec["mel"]["threshold"]
    assert {s["by"] for s in test["subgroups"]} == {"sex", "age", "site"}
    assert all(s["note"] or s["balanced_accuracy"] is not None for s in test["subgroups"])


def test_prior_correction_is_chosen_on_validation_and_applied_to_the_test_predictions(run):
    import numpy as np
    import pandas as pd

    from derma_nb.config import CLASSES
    from derma_nb.decide import prior_corrected

    repo = run[0]
    pc = json.loads((repo / "metrics/decide.json").read_text())["prior_correction"]
    assert pc["asked"] == "fit" and [r["tau"] for r in pc["grid"]][:2] == [0.0, 0.1]
    allowed = [r for r in pc["grid"] if r["macro_f1"] >= pc["macro_f1_floor"] - 1e-12]
    chosen = next(r for r in pc["grid"] if r["tau"] == pc["tau"])
    assert chosen in allowed and chosen["balanced_accuracy"] == max(r["balanced_accuracy"] for r in allowed)
    assert abs(pc["macro_f1_floor"] - (pc["grid"][0]["macro_f1"] - pc["max_f1_drop"])) < 1e-12
    assert len(pc["prior"]) == len(CLASSES) and abs(sum(pc["prior"]) - 1) < 1e-9
    pred = pd.read_csv(repo / "artifacts/predictions/test.csv")
    probs = pred[[f"prob_{c}" for c in CLASSES]].to_numpy()
    expect = prior_corrected(probs, pc["prior"], pc["tau"])
    assert pred["pred"].tolist() == [CLASSES[k] for k in expect], "test predictions do not follow the stored tau"
    test = json.loads((repo / "metrics/test.json").read_text())
    assert abs(test["mel_recall"] - float(np.mean(expect[pred.label == 4] == 4))) < 1e-12
    assert len(test["prior_correction"]) == 2


def test_model_card_quotes_the_run(run):
    from bs4 import BeautifulSoup

    repo = run[0]
    md = (repo / "reports/model_card.md").read_text(encoding="utf-8")
    test = json.loads((repo / "metrics/test.json").read_text())
    for section in ("Model details", "Data", "Intended use", "Out-of-scope use", "Metrics", "Calibration",
                    "Melanoma operating point", "Conformal prediction sets", "Subgroups", "Limitations",
                    "Ethical considerations"):
        assert f"## {section}" in md, section
    assert "SYNTHETIC DATA" in md and "self-diagnosis" in md
    ci = test["ci"]["balanced_accuracy"]
    assert f"{ci['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in md
    metrics = md.split("## Metrics", 1)[1].split("##", 1)[0]
    assert "| Macro F1 | –" not in metrics and "nan" not in md.lower()
    tau = json.loads((repo / "metrics/decide.json").read_text())["prior_correction"]["tau"]
    assert (f"a prior correction τ = {tau:g}" in md) == (tau > 0)
    html = BeautifulSoup((repo / "reports/model_card.html").read_text(encoding="utf-8"), "html.parser")
    assert html.find("a", href="index.html") and len(html.find_all("table")) >= 5


def test_predict_with_the_pipeline_model_says_what_it_is(run):
    repo, env, _ = run
    images = sorted((repo / "data" / "images").glob("*.jpg"))[:3]
    rc, out = sh("derma-nb predict " + " ".join(map(str, images)), repo, env)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("Decision support for clinicians") and "SYNTHETIC" in lines[1]
    assert "calibrated (T = " in out and "90% prediction sets" in out and "Traceback" not in out
    assert sum(line.startswith(i.name) for i in images for line in lines) == 3


def test_dvc_metrics_and_plots(run):
    repo, env, _ = run
    rc, out = sh("dvc metrics show", repo, env)
    lines = out.splitlines()
    assert rc == 0 and [ln.split()[0] for ln in lines] == ["Path", "metrics/summary.json"], out
    assert {"bacc.nn", "bacc.rf", "mel_rec.nn", "val.nn"} <= set(lines[0].split()) and max(map(len, lines)) <= 120
    rc, out = sh("derma-nb plots", repo, env)
    assert rc == 0, out
    html = (repo / "reports" / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and html.count("vegaEmbed(") == 5  # loss, scores, confusion, roc, reliability
    for p in ("history.csv", "roc.csv", "reliability.csv", "predicted class", "cross-entropy loss"):
        assert p in html, p


def test_one_offline_clearml_session_per_stage(run):
    repo = run[0]
    sessions = {s: read_offline_session(repo / "reports" / "clearml" / f"{s}.zip") for s in STAGES}
    run_ids = set()
    for stage, s in sessions.items():
        assert s["name"] == stage and s["project"] == "derma-nb"
        assert "profile:sample" in s["tags"] and "data:synthetic" in s["tags"]
        run_ids |= {t for t in s["tags"] if t.startswith("run:")}
        assert s["status"] != "failed"
    # run id = hash(params.yaml, dataset): before any param change, every stage carries the same one
    assert len(run_ids) == 1, f"all stages of one run share its id: {run_ids}"
    assert sessions["prepare"]["properties"]["dataset_sha256"]
    assert {"manifest.json", "splits.csv", "report.json"} <= set(sessions["prepare"]["artifacts"])
    assert sessions["train"]["params"]["train/phase2/unfreeze"] == 1  # ClearML flattens nested params
    assert sessions["train"]["params"]["model/arch"] == "tf_efficientnet_lite0"
    assert not any(k.startswith("model/") for k in sessions["eda"]["params"]), "only the params a stage reads"
    val = sessions["train"]["scalars"]
    assert any("macro_f1" in series for graph in val.values() for series in graph), val.keys()
    # models by reference (URI + sha256): the sessions stay small
    assert sessions["train"]["properties"]["model tf_efficientnet_lite0-best"].endswith("artifacts/model/best.pt")
    assert sessions["export"]["properties"]["model onnx"].endswith("artifacts/export/model.onnx")
    assert all((repo / "reports" / "clearml" / f"{s}.zip").stat().st_size < 1_000_000 for s in STAGES)
    shas = {sessions[s]["properties"]["model_sha256"] for s in ("decide", "evaluate", "explain", "export")}
    assert len(shas) == 1, "decide, evaluate, explain and export name the same model file (the released one)"
    assert sessions["baseline"]["plots"] or sessions["baseline"]["images"]
    ev = sessions["evaluate"]
    decision = json.loads((repo / "reports/promotion.json").read_text())["decision"]
    assert decision in ev["tags"] and "promotion.json" in ev["artifacts"]
    assert ev["properties"][f"model tf_efficientnet_lite0-{decision}"].endswith("artifacts/release/model.pt")
    assert sessions["explain"]["plots"] or sessions["explain"]["images"]


def test_public_export_is_clean_and_stage_reports_are_not(run):
    from derma_nb.public import public_export, scan_for_leaks

    repo = run[0]
    out = public_export(repo / "reports", repo / "public", root=repo)
    assert (out / "index.html").exists() and scan_for_leaks(out) == []
    kinds = {f["kind"] for f in scan_for_leaks(repo / "reports")}
    assert "embedded_image" in kinds, "the full stage reports embed images: they are not for public sharing"


def test_second_repro_is_a_noop(run):
    repo, env, _ = run
    rc, out = sh("dvc repro", repo, env)
    assert rc == 0 and "Running stage" not in out, out


def test_one_param_change_reruns_only_downstream(run):
    repo, env, _ = run
    p = repo / "params.yaml"
    p.write_text(p.read_text().replace("n_estimators: 300", "n_estimators: 50"))
    rc, out = sh("dvc repro", repo, env)
    assert rc == 0, out[-4000:]
    ran = set(re.findall(r"Running stage '(\w+)'", out))
    assert ran == {"baseline", "evaluate", "report"}, ran


def test_editing_only_the_report_writer_reruns_only_report(run):
    repo, env, _ = run
    f = repo / "derma_nb" / "report.py"
    original = f.read_text()
    f.write_text(original + "\n# an edit to the report writer\n")
    try:
        rc, out = sh("dvc repro", repo, env)
        assert rc == 0, out[-4000:]
        assert set(re.findall(r"Running stage '(\w+)'", out)) == {"report"}
    finally:
        f.write_text(original)
        sh("dvc repro report", repo, env)


def test_failing_stage_is_named_keeps_its_notebook_and_reruns_alone(run):
    repo, env, _ = run
    nb_path = repo / "nbs/stages/explain.ipynb"
    original = nb_path.read_text()
    nb = json.loads(original)
    nb["cells"].insert(len(nb["cells"]) - 1, {"cell_type": "code", "metadata": {}, "execution_count": None,
                                              "outputs": [], "source": ["raise RuntimeError('planted failure')"]})
    nb_path.write_text(json.dumps(nb))
    rc, out = sh("derma-nb run", repo, env)
    assert rc != 0 and "failed to reproduce 'explain'" in out, out[-3000:]
    assert set(re.findall(r"Running stage '(\w+)'", out)) == {"explain"}, "nothing upstream recomputed"
    summary = (repo / "reports/summary.md").read_text()
    assert summary.startswith("# derma-nb run: FAILED at stage `explain`"), summary
    assert "stage **explain** failed: `RuntimeError: planted failure`" in summary and "reports/explain.ipynb" in summary
    assert "| evaluate | up to date | – |" in summary and "| explain | **failed** |" in summary
    executed = json.loads((repo / "reports/explain.ipynb").read_text())
    text = json.dumps(executed)
    assert "planted failure" in text and "papermill-error-cell" in text, "error cell highlighted by papermill"
    s = read_offline_session(repo / "reports/clearml/explain.zip")
    assert s["status"] == "failed" and "planted failure" in (s["error"] or "")
    nb_path.write_text(original)
    rc, out = sh("dvc repro", repo, env)
    assert rc == 0, out[-3000:]
    assert set(re.findall(r"Running stage '(\w+)'", out)) <= {"explain", "report"}

"""Every page a run writes says only what is true of that run, and reads like a report.

The checks are functions that return the problems they find in one page (an empty list: none). The first tests feed
them snippets of pages as they once were (the defects these checks exist for) and show that each check fails on
them; the slow tests run them over the pages of the sample run shared with tests/test_pipeline.py (the `run` fixture
of conftest.py), against the run's own files: `metrics/decide.json` (is the patient context used?),
`metrics/train.json` and `plots/history.csv` (which training phase was kept?), the prepared data's manifest (the
data facts the model card quotes) and `params.yaml` (no configuration key on the clinical model card).
"""
import json
import re

import pytest
import yaml

STAGES = ("prepare", "eda", "baseline", "train", "decide", "evaluate", "explain", "export")


def page_text(html: str) -> str:
    "What a reader of an HTML page sees: its text, without style sheets, scripts and embedded images."
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["style", "script"]):
        tag.decompose()
    return re.sub(r" ([,.;:)])", r"\1", " ".join(soup.get_text(" ").split()))  # no space before the ',' after a <b>


# -- the checks ---------------------------------------------------------------------------------------------------

# what a page says when the model uses the patient context, and when it does not (evaluate, decide, model card)
USES_CONTEXT = [r"the patient's age, sex and body site beside the image", r"combine the image with the patient's age",
                r"Age, sex and body site are used beside the image", r"(?<!not )kept, more than a standard error"]
NO_CONTEXT = [r"stores no patient-context weight", r"Age, sex and body site (?:were tried beside the image and )?are "
              r"not used", r"not kept, within a standard error", r"every prediction on this page is from the image alone"]


def check_context(text: str, used: bool) -> list[str]:
    "The page's words about the patient context against whether the run's decision uses it."
    said_use = [p for p in USES_CONTEXT if re.search(p, text)]
    said_not = [p for p in NO_CONTEXT if re.search(p, text)]
    if used:
        return ([f"says the context is not used: {said_not}"] if said_not else []) + \
               ([] if said_use else ["never says the context is used"])
    return ([f"says the context is used: {said_use}"] if said_use else []) + \
           ([] if said_not else ["never says the context is not used"])


def check_phase(text: str, best: dict, phases_ran: set[int]) -> list[str]:
    "The page names the kept epoch (metrics/train.json) and says which phase won, in words when phase 2 never did."
    out = []
    if f"phase {best['phase']}, epoch {best['epoch']}" not in text:
        out.append(f"does not name the kept epoch (phase {best['phase']}, epoch {best['epoch']})")
    other = 2 if best["phase"] == 1 else 1
    if f"epoch kept is from phase {other}" in text:
        out.append(f"says the kept epoch is from phase {other}")
    if len(phases_ran) > 1 and f"epoch kept is from phase {best['phase']}" not in text:
        out.append("does not say which phase the kept epoch came from")
    if best["phase"] == 1 and 2 in phases_ran and "never beat it" not in text:
        out.append("does not say that phase 2 never beat phase 1")
    if best["phase"] == 2 and "never beat" in text:
        out.append("says phase 2 never beat phase 1, but phase 2 was kept")
    return out


HAM10000_ONLY = ["Two thirds", "about a hundred", "Vienna", "Queensland", "Fitzpatrick", "histopathology"]
"Facts of the real HAM10000 that a card about the synthetic sample must not state as its data's."


def check_card_data(md: str, manifest: dict) -> list[str]:
    "The model card's data facts against the run's manifest (counts, the largest and smallest classes)."
    out, counts = [], manifest.get("class_counts") or {}
    limits = md.split("## Limitations", 1)[-1].split("## Ethical", 1)[0]
    if manifest.get("synthetic"):
        out += [f"states a HAM10000 fact on a synthetic run: {w!r}" for w in HAM10000_ONLY if w in limits]
    m = re.search(r"(\d+)% of the ([\d,]+) images are (\w+)", limits)
    if counts and not m:
        out.append("the limitations do not state the class balance")
    elif m:
        total = sum(counts.values())
        big = max(counts, key=counts.get)
        if (int(m[2].replace(",", "")), m[3], int(m[1])) != (total, big, round(100 * counts[big] / total)):
            out.append(f"says {m[0]!r}; the manifest has {counts[big]} {big} of {total}")
    for name, n in re.findall(r"\b(akiec|bcc|bkl|df|mel|nv|vasc) \((\d+) images\)", limits):
        if counts.get(name) != int(n):
            out.append(f"says {name} has {n} images; the manifest {counts.get(name)}")
    sc = manifest.get("split_counts") or {}
    m = re.search(r"([\d,]+) images, split \*\*by lesion\*\*.*?train (\d+), validation (\d+), test (\d+)", md, re.S)
    if not m or (int(m[1].replace(",", "")), *map(int, m.groups()[1:])) != (
            manifest.get("count"), sc.get("train"), sc.get("val"), sc.get("test")):
        out.append(f"the data section's counts differ from the manifest's ({m[0] if m else 'none found'!r})")
    return out


def flat_keys(d: dict, prefix: str = "") -> list[str]:
    "Every key of a nested params dict as a dotted path."
    out = []
    for k, v in d.items():
        out += [f"{prefix}{k}"] + (flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [])
    return out


def check_no_config_keys(md: str, params: dict) -> list[str]:
    "No configuration key (a dotted path of params.yaml, or a key with an underscore) on a clinical page."
    found = set()
    for key in flat_keys(params):
        parts = key.split(".")
        for i in range(len(parts)):
            tail = ".".join(parts[i:])
            if ("." in tail or "_" in tail) and re.search(rf"(?<![\w.]){re.escape(tail)}(?![\w])", md):
                found.add(tail)
    return [f"names the configuration key {k!r}" for k in sorted(found)]


def age_band_order() -> list[str]:
    from derma_nb.metrics import AGE_BANDS

    return [name for _, _, name in AGE_BANDS] + ["unknown"]


def check_age_order(groups: list[str]) -> list[str]:
    "The age bands of a subgroup table, in the order shown, against youngest first."
    order = age_band_order()
    unknown = [g for g in groups if g not in order]
    if unknown:
        return [f"unknown age bands {unknown}"]
    return [] if groups == sorted(groups, key=order.index) else [f"age bands out of order: {groups}"]


DEVELOPER_TEXT = [r"byte for byte", r"two identical runs", r"\+dirty", r"\(row \d+\)", r"parity_ok", r"\bissues?\b",
                  r"\bsessions?\b", r"whose `?dvc\.lock`? records"]


def check_text(text: str) -> list[str]:
    "No NaN, no rounded-away certainty, no Python printouts, no '(s)' plurals, no text meant for developers."
    rules = {"NaN": r"\bNaN\b|\bnan\b", "a rounded 100.0%": r"(?<![\d.])100\.0+ ?%",
             "a rounded 0.0%": r"(?<![\d.])0\.0+ ?%", "a Python dict or list": r"[{\[]\s*['\"]|\{\s*\}|\[\s*\]",
             "an '(s)' plural": r"\w\(s\)", **{f"developer text ({p})": p for p in DEVELOPER_TEXT}}
    out = []
    for what, pattern in rules.items():
        hit = re.search(pattern, text)
        if hit:
            out.append(f"{what}: …{text[max(0, hit.start() - 60):hit.end() + 60]}…")
    return out


def check_tables(html: str) -> list[str]:
    "Every table with a header has one header row, and every header cell a name."
    from bs4 import BeautifulSoup

    out = []
    for i, table in enumerate(BeautifulSoup(html, "html.parser").find_all("table")):
        rows = table.find_all("tr")
        header = [r for r in rows if r.find("th") and not r.find("td")]
        if not header:
            continue  # a key-value table
        if len(header) > 1:
            out.append(f"table {i}: {len(header)} header rows")
        empty = [j for j, th in enumerate(header[0].find_all("th")) if not th.get_text(strip=True)]
        if empty:
            out.append(f"table {i}: unnamed column(s) {empty}")
    return out


def markdown_subgroups(md: str, by: str) -> list[str]:
    "The groups of one kind (`by`: sex, age, site) of the model card's subgroup table, in order."
    return re.findall(rf"^\| {by} \| ([^|]+?) \|", md, re.M)


def html_subgroups(html: str, by: str) -> list[str]:
    "The groups of one kind of the first table with 'by' and 'group' columns, in order."
    from bs4 import BeautifulSoup

    for table in BeautifulSoup(html, "html.parser").find_all("table"):
        head = [th.get_text(strip=True) for th in table.find_all("th")]
        if head[:2] == ["by", "group"]:
            cells = [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in table.find_all("tr")]
            return [c[1] for c in cells if len(c) > 1 and c[0] == by]
    return []


# -- each check fails on the defects it exists for ----------------------------------------------------------------

def test_the_context_check_fails_on_a_page_that_contradicts_the_run():
    intro = ("The released model — the best validation epoch, with the decisions fitted on validation (test-time views, "
             "calibration, the patient's age, sex and body site beside the image, the prior correction …")
    assert check_context(intro + " No patient context stored.", used=False)  # the evaluate page as it was
    assert check_context("Model: … **the image only** (the model stores no patient-context weight)", used=True)
    assert not check_context("… the image only (the model stores no patient-context weight), prior …", used=False)
    assert check_context("w = 1.829 …: not kept, within a standard error of 0", used=True)
    assert not check_context("w = 0.52 …: kept, more than a standard error above 0", used=True)


def test_the_phase_check_fails_when_the_page_hides_which_phase_won():
    best = {"phase": 1, "epoch": 5}
    old = "Best epoch: phase 1, epoch 5 (step 5): val macro_f1 0.9756"  # the training page as it was
    assert check_phase(old, best, {1, 2}) == ["does not say which phase the kept epoch came from",
                                              "does not say that phase 2 never beat phase 1"]
    card = "two phases — the head on the frozen backbone (8 epochs), then … fine-tuned; kept (phase 1, epoch 5)"
    assert check_phase(card, best, {1, 2})
    now = ("The epoch kept is from phase 1 (phase 1, epoch 5): phase 2 (…) never beat it on validation macro F1")
    assert not check_phase(now, best, {1, 2}) and check_phase(now, {"phase": 2, "epoch": 5}, {1, 2})


def test_the_card_data_check_fails_on_ham10000_facts_for_a_synthetic_run():
    manifest = {"synthetic": True, "count": 799, "split_counts": {"train": 644, "val": 81, "test": 74},
                "class_counts": {"akiec": 50, "bcc": 66, "bkl": 103, "df": 44, "mel": 112, "nv": 380, "vasc": 44}}
    data = "799 images, split **by lesion** (…): train 644, validation 81, test 74 images."
    old = data + ("\n## Limitations\n- **Class imbalance.** Two thirds of the images are nevi; dermatofibroma and "
                  "vascular lesions have about a hundred images each\n## Ethical")
    problems = check_card_data(old, manifest)
    assert any("Two thirds" in p for p in problems) and any("about a hundred" in p for p in problems)
    assert any("do not state the class balance" in p for p in problems)
    now = data + ("\n## Limitations\n- **Class imbalance.** In this synthetic sample, 48% of the 799 images are nv; "
                  "the smallest classes are df (44 images) and vasc (44 images)\n## Ethical")
    assert check_card_data(now, manifest) == []
    assert check_card_data(now.replace("df (44", "df (115"), manifest) == ["says df has 115 images; the manifest 44"]
    assert check_card_data(now.replace("test 74", "test 80"), manifest)


def test_the_config_key_check_fails_on_the_keys_the_card_named():
    params = {"decide": {"context": True, "views": 1}, "evaluate": {"n_boot": 1000}, "seed": 0}
    old = "(`decide.context`, or no weight helped); resampling lesions (1,000 unless `evaluate.n_boot` says otherwise)"
    assert check_no_config_keys(old, params) == ["names the configuration key 'decide.context'",
                                                 "names the configuration key 'evaluate.n_boot'"]
    assert check_no_config_keys("with n_boot resamples", params) == ["names the configuration key 'n_boot'"]
    assert check_no_config_keys("1 view, seed 0, the patient context is off", params) == []


def test_the_age_check_fails_on_bands_sorted_as_text():
    assert check_age_order(["30–49", "50–69", "< 30", "≥ 70"]) == ["age bands out of order: ['30–49', '50–69', '< 30', '≥ 70']"]
    assert check_age_order(["< 30", "30–49", "50–69", "≥ 70", "unknown"]) == []
    md = "| age | 30–49 | 9 |\n| age | < 30 | 32 |\n| site | back | 3 |"
    assert markdown_subgroups(md, "age") == ["30–49", "< 30"] and check_age_order(markdown_subgroups(md, "age"))


def test_the_text_check_fails_on_what_the_pages_showed():
    for shown in ("P(mel) 100.0%", "nv 0.0%", "splits {\"train\": 644, \"val\": 81}", "classes ['akiec', 'bcc']",
                  "the last 1 stage(s) fine-tuned", "1 test-time view(s)", "which two identical runs write byte for "
                  "byte the same", "commit `6e47320751c9+dirty`", "pred mel p=1.00 (row 301)", "parity_ok True",
                  "val macro F1 nan"):
        assert check_text(shown), shown
    assert check_text("P(mel) > 99.9%, nv < 0.1%, 10.0% of images, 1 view, test 74") == []


def test_the_table_check_fails_on_pandas_two_row_headers_and_unnamed_columns():
    pandas_style = ("<table><thead><tr><th></th><th>value</th></tr><tr><th>metric</th><th></th></tr></thead>"
                    "<tbody><tr><th>Accuracy</th><td>0.9</td></tr></tbody></table>")
    assert check_tables(pandas_style) == ["table 0: 2 header rows", "table 0: unnamed column(s) [0]"]
    unnamed = "<table><tr><th>true class</th><th>images</th><th></th></tr><tr><td>all</td><td>7</td><td></td></tr></table>"
    assert check_tables(unnamed) == ["table 0: unnamed column(s) [2]"]
    assert check_tables("<table><tr><th>metric</th><th>value</th></tr><tr><td>a</td><td>1</td></tr></table>"
                        "<table><tr><td>data</td><td>x</td></tr></table>") == []


# -- the sample run's pages ---------------------------------------------------------------------------------------

def _read(repo, name: str) -> str:
    return (repo / "reports" / name).read_text(encoding="utf-8")


def _run_files(repo) -> dict:
    import pandas as pd

    params = yaml.safe_load((repo / "params.yaml").read_text())
    return {"decide": json.loads((repo / "metrics/decide.json").read_text()),
            "train": json.loads((repo / "metrics/train.json").read_text()),
            "history": pd.read_csv(repo / "plots/history.csv"), "params": params,
            "manifest": json.loads((repo / params["prepare"]["out"] / "manifest.json").read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("page", ["evaluate.html", "decide.html", "model_card.md"])
def test_pages_say_whether_the_patient_context_is_used_as_the_run_decided(run, page):
    repo = run[0]
    used = bool(_run_files(repo)["decide"]["context"]["weight"])
    text = _read(repo, page) if page.endswith(".md") else page_text(_read(repo, page))
    assert not check_context(text.replace("**", ""), used), (page, check_context(text.replace("**", ""), used))


@pytest.mark.slow
@pytest.mark.parametrize("page", ["train.html", "model_card.md", "index.html"])
def test_pages_say_which_training_phase_the_kept_epoch_came_from(run, page):
    repo = run[0]
    f = _run_files(repo)
    text = _read(repo, page) if page.endswith(".md") else page_text(_read(repo, page))
    problems = check_phase(text, f["train"]["best"], set(f["history"].phase))
    assert not problems, (page, problems)


@pytest.mark.slow
def test_the_model_card_states_the_runs_own_data_and_no_configuration_keys(run):
    repo = run[0]
    f = _run_files(repo)
    md = _read(repo, "model_card.md")
    assert not check_card_data(md, f["manifest"]), check_card_data(md, f["manifest"])
    assert not check_no_config_keys(md, f["params"]), check_no_config_keys(md, f["params"])


@pytest.mark.slow
def test_age_bands_are_in_order_on_the_evaluation_page_and_the_card(run):
    repo = run[0]
    card, page = markdown_subgroups(_read(repo, "model_card.md"), "age"), html_subgroups(_read(repo, "evaluate.html"), "age")
    assert card and page, "no age bands found: the subgroup tables changed shape"
    assert not check_age_order(card) and not check_age_order(page), (card, page)


@pytest.mark.slow
@pytest.mark.parametrize("page", [f"{s}.html" for s in STAGES] + ["index.html", "model_card.html", "summary.md"])
def test_pages_read_like_reports(run, page):
    repo = run[0]
    raw = _read(repo, page)
    text = raw if page.endswith(".md") else page_text(raw)
    assert not check_text(text), (page, check_text(text))
    if page.endswith(".html"):
        assert not check_tables(raw), (page, check_tables(raw))


@pytest.mark.slow
def test_the_index_links_the_plots_page_and_the_summary_and_plots_leave_no_template(run):
    from bs4 import BeautifulSoup

    from conftest import sh

    repo, env, _ = run
    hrefs = {a["href"] for a in BeautifulSoup(_read(repo, "index.html"), "html.parser").find_all("a")}
    assert {"plots/index.html", "summary.md", "model_card.html"} <= hrefs, hrefs
    rc, out = sh("derma-nb plots", repo, env)
    assert rc == 0, out
    assert (repo / "reports/plots/index.html").exists()
    assert not [p.name for p in (repo / "reports").rglob("*template*")], "a template file was left in reports/"
    assert 'href="../index.html"' in _read(repo, "plots/index.html")


@pytest.mark.slow
def test_the_serve_page_and_its_docs_work_offline_and_speak_to_clinicians(run):
    from fastapi.testclient import TestClient

    from derma_nb.serve import create_app

    repo = run[0]
    app = create_app(repo / "artifacts/export/model.onnx", cam_model=None, card=repo / "reports/model_card.html")
    with TestClient(app) as client:
        text = page_text(client.get("/").text)
        assert not check_text(text) and "tau" not in text, check_text(text)
        assert not check_no_config_keys(text, _run_files(repo)["params"])
        docs = client.get("/docs").text
        assert "cdn." not in docs and "https://" not in docs, "the API docs would load Swagger UI from the network"
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', docs):
            assert client.get(asset).status_code == 200, asset


@pytest.mark.slow
def test_the_eda_page_shows_the_ranked_look_alike_pairs_of_its_run(run):
    "The candidates file holds eda.duplicate_candidates pairs of different lesions, most similar first; the page shows them."
    import pandas as pd

    repo = run[0]
    f = _run_files(repo)
    c = pd.read_csv(repo / "reports" / "duplicate_candidates.csv")
    e = f["params"]["eda"]
    assert len(c) == e["duplicate_candidates"] and (c.lesion_a != c.lesion_b).all()
    assert c.similarity.is_monotonic_decreasing and c.similarity.between(-1, 1).all()
    table = pd.read_csv(repo / f["params"]["prepare"]["out"] / "splits.csv").set_index("image_id")
    assert (table.split[c.image_a].to_numpy() == c.split_a.to_numpy()).all()  # the splits shown are the run's
    html = _read(repo, "eda.html")
    assert len(re.findall(r"<figure class=[\"']dup[\"']>", html)) == e["duplicates_shown"]
    text = page_text(html)
    crossing = int((c.split_a != c.split_b).sum())
    assert f"{crossing} of them sit on two sides of the split" in text
    assert "None of the published duplicate pairs is in this data" in text  # the sample has none of them

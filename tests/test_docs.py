"""The README a newcomer reads in five minutes, and the documentation site: a small site built with the project's own Sphinx configuration passes, and fails on a
broken link, a missing include or a failing example, naming it; the site has no CDN links. The real site, with the
model card of a sample run, is built in tests/test_pipeline.py (it needs the run)."""
import json
import re
import shutil
from pathlib import Path

import pytest

from derma_nb.docs import DocsError, build_docs

ROOT = Path(__file__).resolve().parents[1]
README = """# tiny

See [the results](results/README.md), [the params](params.yaml), [a notebook](nbs/00_demo.ipynb) and
[a section](#usage).

## Usage

Text.
"""


def notebook(*sources: str) -> str:
    cells = [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": "# Demo\n\n> A demo module."}]
    cells += [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
              for i, s in enumerate(sources)]
    return json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "python3",
                                                                    "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A repository with this project's docs/ and settings.ini, a README, a results page and one small notebook."
    repo = tmp_path_factory.mktemp("tiny")
    shutil.copytree(ROOT / "docs", repo / "docs")
    shutil.copy(ROOT / "settings.ini", repo / "settings.ini")
    (repo / "README.md").write_text(README)
    (repo / "params.yaml").write_text("seed: 0\n")
    (repo / "results").mkdir()
    (repo / "results" / "README.md").write_text("# Results\n\nThe table: [real.md](real.md); home: [](../README.md).\n")
    (repo / "results" / "real.md").write_text("| metric | value |\n|---|---|\n| accuracy | 0.5 |\n")
    (repo / "nbs").mkdir()
    (repo / "nbs" / "00_demo.ipynb").write_text(notebook("#| hide\nhidden = 1", "x = 40 + 2\nassert x == 42\nx",
                                                         "#| eval: false\nraise SystemExit('never run')"))
    return repo


def build(repo, capfd, **kw):
    "Build `repo`'s site into its _site; return (ok, Sphinx's output)."
    capfd.readouterr()
    try:
        build_docs(repo, run_dir=repo, **kw)
        ok = True
    except DocsError:
        ok = False
    out = capfd.readouterr()
    return ok, out.out + out.err


def test_small_site_builds(tiny, capfd):
    ok, log = build(tiny, capfd)
    assert ok, log[-5000:]
    site = tiny / "_site"
    home = (site / "docs" / "index.html").read_text()
    # the README's links, written relative to the README, reach their pages, the file and the section
    assert 'href="results.html"' in home and 'href="../nbs/00_demo.html"' in home, home
    assert re.search(r'href="../_downloads/[0-9a-f]+/params.yaml"', home) and 'href="#usage"' in home
    assert list(site.glob("_downloads/*/params.yaml"))
    results = (site / "docs" / "results.html").read_text()
    assert 'href="../results/real.html"' in results and "0.5" in (site / "results" / "real.html").read_text()
    page = (site / "nbs" / "00_demo.html").read_text()
    assert "42" in page and "hidden = 1" not in page and "never run" in page  # shown, not executed
    assert "#|" not in page
    card = (site / "docs" / "model-card.html").read_text()
    assert "No model card was found" in card
    assert (site / "index.html").read_text().count('url=docs/index.html') == 1
    cdn = [m for f in site.rglob("*.html") for m in re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="(?:https?:)?//[^"]*"',
                                                               f.read_text())]
    assert not cdn, f"the site loads from the network: {cdn[:3]}"


def test_broken_link_fails_the_build(tiny, capfd):
    (tiny / "README.md").write_text(README + "\nAlso [this](docs/no-such-page.md).\n")
    try:
        ok, log = build(tiny, capfd)
    finally:
        (tiny / "README.md").write_text(README)
    assert not ok
    assert re.search(r"README\.md:\d+: WARNING: .*no-such-page", log), log[-3000:]


def test_missing_include_fails_the_build(tiny, capfd):
    (tiny / "results" / "README.md").rename(tiny / "results" / "README.bak")
    try:
        ok, log = build(tiny, capfd)
    finally:
        (tiny / "results" / "README.bak").rename(tiny / "results" / "README.md")
    assert not ok and re.search(r"results\.md:\d+: \w+: .*file not found", log), log[-3000:]


def test_failing_example_fails_the_build_naming_notebook_and_cell(tiny, capfd):
    nb = tiny / "nbs" / "00_demo.ipynb"
    good = nb.read_text()
    nb.write_text(notebook("x = 40 + 1\nassert x == 42, 'the answer changed'"))
    try:
        ok, log = build(tiny, capfd)
    finally:
        nb.write_text(good)
    assert not ok
    assert "nbs/00_demo.ipynb" in log and "assert x == 42, 'the answer changed'" in log and "AssertionError" in log, \
        log[-3000:]


def test_bad_arguments_are_one_clear_error(tiny, tmp_path):
    with pytest.raises(DocsError, match="--run-dir"):
        build_docs(tiny, run_dir=tmp_path / "nope")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DocsError, match="is not a site built by"):
        build_docs(tiny, out=tmp_path)
    assert (tmp_path / "keep.txt").exists()


def test_settings_serve_nbdev_and_the_docs_only():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    assert not {"procs", "skip_procs", "doc_path", "doc_host", "doc_baseurl", "readme_nb"} & set(d), \
        "nbdev_docs settings are back: the site is built by `derma-nb docs` (Sphinx)"
    assert d.getboolean("recursive") is False, "nbdev_export must not export the stage notebooks in nbs/stages/"
    dev = d["dev_requirements"].split()
    assert {"sphinx>=8", "myst-nb>=1.1", "sphinx-book-theme>=1.1", "jupyter-cache>=1"} <= set(dev)
    lock = (ROOT / "requirements.lock").read_text().lower()
    for pkg in ("sphinx==", "myst-nb==", "sphinx-book-theme==", "jupyter-cache=="):
        assert f"\n{pkg}" in lock, f"{pkg} not pinned in requirements.lock"


README_MAX_BYTES = 12_500
LAB_LOG = re.compile(r"the issue|this session|last session|what was tried|the earlier recipe", re.I)


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short():
    size = len(_readme().encode("utf-8"))
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes (at most {README_MAX_BYTES}): results go to results/README.md, the method to the "
        "markdown of the notebook that implements it")


def test_readme_first_screen():
    "The first 40 lines: what it is, the decision-support notice, the headline results and their page, the Quick start."
    lines = _readme().splitlines()
    first = "\n".join(lines[:40])
    assert lines[0] == "# derma-nb" and "HAM10000" in first
    notice = [line for line in lines[:40] if line.startswith(">")]
    assert re.search(r"not a medical device", " ".join(notice), re.I), "the decision-support notice, as a quote"
    assert re.search(r"second opinion", " ".join(notice), re.I) and re.search(r"research", " ".join(notice), re.I)
    assert "](results/README.md)" in first, "the link to the full results"
    assert "<!-- results:real-headline -->" in first and "<!-- /results:real-headline -->" in first
    quick = first.split("## Quick start", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", quick, re.S).group(1)
    assert [c for c in block.splitlines() if c.strip()] == ["pip install -r requirements.lock -e .", "derma-nb run",
                                                             "pytest"]  # what .ci/run reads: install, run, test
    assert ("On any x86-64 CPU with AVX2 the run rewrites the committed `dvc.lock`, `metrics/` and `plots/` byte for "
            "byte (`cpu_kernels: portable` in `params.yaml`), so `git status` stays empty.") in " ".join(
                quick.split("```", 2)[2].split())


@pytest.mark.parametrize("page", ["README.md", "results/README.md", "benchmarks/README.md"])
def test_user_pages_do_not_read_as_a_lab_log(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    if page != "README.md":  # the results page's notes do say what was tried, by design
        text = re.sub(r"what was tried", "", text, flags=re.I)
    found = LAB_LOG.findall(text)
    assert not found, f"{page}: {found}"


@pytest.mark.parametrize("page", ["README.md", "results/README.md", "benchmarks/README.md"])
def test_user_pages_link_to_files_that_exist(page):
    path = ROOT / page
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, f"{page} links nowhere"
    missing = [link for link in local if not (path.parent / link).exists()]
    assert not missing, f"{page} links to missing files: {missing}"


@pytest.mark.slow
def test_the_site_of_the_sample_run(run, tmp_path):
    "The whole site, built as CI builds it, with the model card of the sample run (conftest's `run`)."
    from bs4 import BeautifulSoup

    repo, _, _ = run
    site = build_docs(ROOT, out=tmp_path / "site", run_dir=repo).parent  # -W: a broken link or include fails it

    def text(page: str) -> str:
        return " ".join(BeautifulSoup((site / page).read_text(encoding="utf-8"), "html.parser").get_text(" ").split())

    home = text("docs/index.html")
    assert "Decision support, not a diagnosis" in home and "Quick start" in home and "Macro F1" in home
    card_md = (repo / "reports" / "model_card.md").read_text(encoding="utf-8")
    card = text("docs/model-card.html")
    assert "synthetic sample" in card and "SYNTHETIC" in card_md
    rows = [r for r in card_md.splitlines() if r.startswith("| Balanced accuracy")]
    assert rows and all(c.strip() in card for c in rows[0].split("|")[2:] if c.strip()), "the run's numbers, as written"
    assert "No model card was found" not in card
    assert "Macro F1" in text("docs/results.html")
    pages = {p.stem for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")}
    assert pages == {p.stem for p in (site / "nbs").glob("*.html")}, "one page per module notebook"
    figures = [p.name for p in (site / "nbs").glob("*.html") if re.search(r'<img[^>]+src="[^"]+\.png"', p.read_text())]
    assert "09_figures.html" in figures, figures
    for p in site.rglob("*.html"):
        html = p.read_text(encoding="utf-8")
        # no example ended in an error output, and no code cell shows nbdev's directives (they are examples' strings)
        assert 'class="output traceback"' not in html and '<span class="c1">#| ' not in html, p

"""The docs site's home page (nbs/index.ipynb) is what README.md generates, the docs build runs the examples, and the
README stays a page a newcomer reads in five minutes: short, the notice and the results first, no lab log."""
import configparser
import re
from pathlib import Path

import pytest

from derma_nb.docs import exec_examples, index_notebook

ROOT = Path(__file__).resolve().parents[1]


def test_index_notebook_is_generated_from_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = (ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8")
    assert index == index_notebook(readme), (
        "nbs/index.ipynb differs from README.md: run "
        "`python -c 'from derma_nb.docs import write_docs_index; write_docs_index()'` and commit both")


def test_docs_build_settings():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    module, name = d["procs"].split(":")
    assert module == exec_examples.__module__ and name == exec_examples.__name__
    assert "exec_show_docs" in d["skip_procs"].split(",")
    assert not (ROOT / "nbs" / d["readme_nb"]).exists(), "nbdev_readme would overwrite the hand-kept README.md"
    assert d.getboolean("recursive") is False, "the stage notebooks in nbs/stages/ are not pages of the site"


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

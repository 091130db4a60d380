"The docs site's home page (nbs/index.ipynb) is what README.md generates, and the docs build runs the examples."
import configparser
from pathlib import Path

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

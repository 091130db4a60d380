"""Sphinx configuration of the derma-nb documentation site: `derma-nb docs` builds it into _site/.

The source folder is the repository root (the README, the module notebooks in nbs/ and results/ are where they are);
`include_patterns` picks the pages. derma_nb.docs is the extension that turns the nbdev notebooks into pages."""
import configparser
from pathlib import Path

_ini = configparser.ConfigParser()
_ini.read(Path(__file__).resolve().parents[1] / "settings.ini")
_cfg = _ini["DEFAULT"]

project = _cfg["title"]
author = _cfg["author"]
copyright = _cfg["copyright"]
release = version = _cfg["version"]

extensions = ["myst_nb", "sphinx.ext.autodoc", "derma_nb.docs"]

root_doc = "docs/index"
include_patterns = ["docs/*.md", "nbs/[0-9][0-9]_*.ipynb", "results/*.md"]
# folders never searched for pages (the environment, data, pipeline outputs, build folders), and the files that are
# included into a page rather than being one
exclude_patterns = [".*", "_build", "_site", "build", "dist", "data", "artifacts", "reports", "public", "venv",
                    "results/README.md"]

# notebooks: executed at build time, outputs cached by jupyter-cache (an unchanged notebook is not run again)
nb_execution_mode = "cache"
nb_execution_cache_path = str(Path(__file__).resolve().parents[1] / "_build" / "jupyter_cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = False  # in nbs/, as nbdev_test runs them (the examples read ../params.yaml)
nb_merge_streams = True

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# API: signature and docstring of each exported name, after the (collapsed) cell that defines it
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_member_order = "bysource"
add_module_names = False
python_maximum_signature_line_length = 100

html_theme = "sphinx_book_theme"
html_title = "derma-nb"
html_static_path = ["_static"]
html_css_files = ["derma.css"]
html_extra_path = ["_extra"]
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {
    "repository_url": _cfg["git_url"],
    "repository_branch": _cfg.get("branch", "main"),
    "use_repository_button": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}

"""Packaging for derma_nb: metadata and loose requirement ranges come from settings.ini (nbdev 2 convention).

Library users get the ranges below; the exact, tested environment is requirements.lock (see README).
"""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

extras = {
    # everything the DVC pipeline, tracking, reports, export and tests use
    "pipeline": "papermill nbconvert ipykernel dvc clearml grad-cam onnx onnxruntime onnxscript".split(),
    "dev": cfg.get("dev_requirements", "").split(),
}
extras["all"] = sorted({r for reqs in extras.values() for r in reqs})

setuptools.setup(
    name=cfg["repo"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    install_requires=cfg.get("requirements", "").split(),
    extras_require=extras,
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)

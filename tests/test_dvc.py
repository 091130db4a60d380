"""dvc.yaml says what each stage depends on, and it is true: its derma_nb modules are exactly those its code imports
(directly or through other modules), and its params are exactly those it reads."""
import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
ALWAYS = {"profile", "seed", "device", "cpu_kernels", "tracking"}  # every stage reads these (its task, its arithmetic)


def derma_imports(source: str) -> set[str]:
    "The derma_nb modules a piece of code imports, anywhere in it (lazy imports inside functions included)."
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("derma_nb."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:  # nbdev exports `from .x import`
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("derma_nb.")}
    return out


def closure(modules: set[str]) -> set[str]:
    "`modules` and everything they import, transitively."
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += derma_imports((ROOT / "derma_nb" / f"{m}.py").read_text())
    return seen


def notebook_code(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


def entry(name: str, stage: dict) -> tuple[set[str], str]:
    "The modules a stage's command runs (its own code), and that code as text."
    cmd = stage["cmd"]
    if cmd.startswith("${notebook} "):
        assert PIPELINE["vars"][0]["notebook"] == "python -m derma_nb.stage"
        nb = ROOT / "nbs" / "stages" / f"{cmd.split()[1]}.ipynb"
        code = notebook_code(nb)
        return {"stage"} | derma_imports(code), code
    m = re.fullmatch(r"python -m derma_nb\.(\w+)", cmd)
    assert m, f"stage {name}: unexpected command {cmd!r}"
    return {m[1]}, (ROOT / "derma_nb" / f"{m[1]}.py").read_text()


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_stage_depends_on_exactly_the_modules_it_imports(name):
    stage = PIPELINE["stages"][name]
    mods, _ = entry(name, stage)
    listed = {Path(d).stem for d in stage["deps"] if str(d).startswith("derma_nb/")}
    assert listed == closure(mods), f"{name}: listed {sorted(listed)}, imports {sorted(closure(mods))}"


@pytest.mark.parametrize("name", [n for n, s in PIPELINE["stages"].items() if s["cmd"].startswith("${notebook}")])
def test_notebook_stage_lists_exactly_the_params_it_reads(name):
    stage = PIPELINE["stages"][name]
    _, code = entry(name, stage)
    keys = ast.literal_eval(re.search(r"Stage\(\"\w+\",\s*params_path,\s*keys=(\[.*?\])\)", code, re.S)[1])
    listed = set(stage["params"])
    assert set(keys) | ALWAYS >= listed, f"{name} lists params it does not read: {sorted(listed - set(keys) - ALWAYS)}"
    assert set(keys) <= listed, f"{name} reads params dvc.yaml does not list: {sorted(set(keys) - listed)}"


@pytest.mark.parametrize("name", [n for n, s in PIPELINE["stages"].items() if s["cmd"].startswith("${notebook}")])
def test_notebook_stage_reruns_when_the_cpu_arithmetic_changes(name):
    "Every stage notebook computes with the kernels `cpu_kernels` chooses (its Stage sets them up), so DVC must see it."
    assert "cpu_kernels" in PIPELINE["stages"][name]["params"]


def test_the_notebook_command_is_written_once():
    cmds = [s["cmd"] for s in PIPELINE["stages"].values()]
    assert sum(c.startswith("${notebook} ") for c in cmds) == 8 and not any("papermill" in c for c in cmds)


def test_every_stage_notebook_is_a_stage():
    notebooks = {p.stem for p in (ROOT / "nbs" / "stages").glob("*.ipynb")}
    used = {s["cmd"].split()[1] for s in PIPELINE["stages"].values() if s["cmd"].startswith("${notebook}")}
    assert notebooks == used

"""How readable the library is, in numbers: `python tools/code_stats.py [ROOT]` prints

- library lines (derma_nb/*.py without the generated _modidx.py), and per module;
- the longest function or method (name, lines);
- export cells in nbs/*.ipynb, and the share of them followed by an example cell with asserts (the next code cell,
  markdown in between allowed, is not an export cell and checks something: `assert` or a fastcore `test_*` call);
- modules over 400 lines.

Targets (issue 12): longest function <= 60 lines, >= 75% of export cells followed by an example with asserts, no module
over 450 lines. Exit code 1 when a target is missed.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path


def functions(path: Path):
    "(qualified name, lines) of every function and method in a module."
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((f"{path.stem}.{prefix}{child.name}", child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(tree)
    return out


def cells(nb: Path):
    "(kind, source) of every cell: kind is 'export', 'code' or 'markdown'."
    for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] != "code":
            yield "markdown", src
        else:
            yield ("export" if re.match(r"\s*#\|\s*export", src) else "code"), src


CHECKS = re.compile(r"\bassert\b|\btest_\w+\(")


def only_imports(src: str) -> bool:
    "An export cell that only imports (every notebook has one): it defines nothing to show."
    try:
        body = ast.parse(src).body
    except SyntaxError:
        return False
    return all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)


def export_stats(nbs: Path) -> tuple[int, int]:
    "(export cells, export cells followed by an example cell with asserts) over the library notebooks."
    total = followed = 0
    for nb in sorted(nbs.glob("[0-9][0-9]_*.ipynb")):
        cs = [c for c in cells(nb) if c[0] != "markdown"]
        for i, (kind, src) in enumerate(cs):
            if kind != "export" or only_imports(src) or "__main__" in src:
                continue  # imports and the script entry point define nothing to show
            total += 1
            nxt = cs[i + 1] if i + 1 < len(cs) else None
            followed += bool(nxt and nxt[0] == "code" and CHECKS.search(nxt[1]))
    return total, followed


def main(root: str = ".") -> int:
    root = Path(root)
    mods = sorted(p for p in (root / "derma_nb").glob("*.py") if p.stem not in ("_modidx",))
    sizes = {p.stem: len(p.read_text(encoding="utf-8").splitlines()) for p in mods}
    fns = [f for p in mods for f in functions(p)]
    name, longest = max(fns, key=lambda f: f[1])
    total, followed = export_stats(root / "nbs")
    big = {m: n for m, n in sizes.items() if n > 400}
    print(f"library lines: {sum(sizes.values())} in {len(mods)} modules")
    print("per module: " + ", ".join(f"{m} {n}" for m, n in sorted(sizes.items(), key=lambda kv: -kv[1])))
    print(f"longest function: {name} ({longest} lines); functions over 60 lines: "
          f"{sorted((n, l) for n, l in fns if l > 60) or 'none'}")
    print(f"export cells: {total}; followed by an example with asserts: {followed} ({followed / max(total, 1):.0%})")
    print(f"modules over 400 lines: {big or 'none'}")
    ok = longest <= 60 and followed / max(total, 1) >= 0.75 and max(sizes.values()) <= 450
    print("targets (longest <= 60, >= 75% with examples, no module over 450):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

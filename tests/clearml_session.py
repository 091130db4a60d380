"""What an offline ClearML session recorded, as plain Python: the tests' window into a tracked stage.

An offline session zip holds `task.json` (name, project, tags, hyperparameters, user properties, artifacts),
`metrics.jsonl` (scalar and plot events, one JSON list per line), `log.jsonl` (console lines) and `data/` (artifacts).
"""
from __future__ import annotations

import ast
import json
import tempfile
import zipfile
from pathlib import Path


def _typed(value: str, typ: str | None):
    "A hyperparameter value (ClearML stores strings) converted back using its recorded type."
    if not isinstance(value, str):
        return value
    typ = (typ or "").split("/")[0]  # "list/int": a list of ints
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        if typ == "bool":
            return value.strip().lower() == "true"
        if typ in ("list", "tuple", "dict", "NoneType"):
            return ast.literal_eval(value) if value else None
    except (ValueError, SyntaxError):
        pass
    return value


def _events(zf: zipfile.ZipFile, name: str) -> list[dict]:
    out = []
    if name not in zf.namelist():
        return out
    for line in zf.read(name).decode("utf-8", "replace").splitlines():
        if line.strip():
            ev = json.loads(line)
            out.extend(ev if isinstance(ev, list) else [ev])
    return out


SINGLE_VALUE_ITER = -(2**31)  # ClearML stores single values as metric "Summary" at this iteration


def _zip_folder(folder: Path, dest: Path) -> None:
    "Zip a session folder the way ClearML does (paths relative to the folder)."
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())


def read_offline_session(zip_path: str | Path) -> dict:
    "What an offline ClearML session (zip or folder) recorded, as plain Python: task, params, scalars, plots, artifacts."
    p = Path(zip_path)
    if p.is_dir():
        with tempfile.TemporaryDirectory() as d:
            _zip_folder(p, Path(d) / "s.zip")
            return read_offline_session(Path(d) / "s.zip")
    with zipfile.ZipFile(p) as zf:
        task = json.loads(zf.read("task.json"))
        metrics, logs, files = _events(zf, "metrics.jsonl"), _events(zf, "log.jsonl"), zf.namelist()
    hyper = {sec: {k: _typed(v.get("value"), v.get("type")) for k, v in items.items()}
             for sec, items in (task.get("hyperparams") or {}).items()}
    props = hyper.pop("properties", {})
    scalars: dict = {}
    values: dict = {}
    plots, tables, images = [], [], []
    for ev in metrics:
        kind = ev.get("type")
        if kind == "training_stats_scalar":
            if ev.get("metric") == "Summary" and ev.get("iter") == SINGLE_VALUE_ITER:
                values[ev["variant"]] = ev["value"]
            else:
                scalars.setdefault(ev["metric"], {}).setdefault(ev["variant"], []).append((ev["iter"], ev["value"]))
        elif kind == "plot":
            plots.append(ev["metric"])
            try:
                data = json.loads(ev.get("plot_str") or "{}").get("data") or []
            except ValueError:
                data = []
            if any(isinstance(d, dict) and d.get("type") == "table" for d in data):
                tables.append(ev["metric"])
        elif kind == "training_debug_image":
            images.append(ev["metric"])
    configs = {k: v.get("value") for k, v in (task.get("configuration") or {}).items()}
    artifacts = {a["key"]: {"type": a.get("type"), "size": a.get("content_size"),
                            "file": next((f for f in files if f.startswith("data/") and a.get("uri", "").endswith(f[5:])), None)}
                 for a in (task.get("execution") or {}).get("artifacts") or []}
    models = [{"name": m.get("init", {}).get("name"), "tags": m.get("init", {}).get("tags") or [],
               "framework": m.get("init", {}).get("framework"),
               "file": Path(str(m.get("weights", {}).get("weights_filename") or "")).name or None}
              for m in task.get("offline_output_models") or []]
    return {"id": task.get("id"), "name": task.get("name"), "project": task.get("project_name"),
            "type": task.get("type"), "tags": list(task.get("tags") or []), "comment": task.get("comment", ""),
            "parent": task.get("parent"), "status": props.get("status", task.get("status", "unknown")),
            "error": props.get("error"), "params": hyper.get("params", {}), "hyperparams": hyper,
            "configuration": configs, "properties": props, "scalars": scalars, "values": values,
            "plots": plots, "tables": tables, "images": images, "artifacts": artifacts, "models": models,
            "log": [e.get("msg", "") for e in logs], "files": files}

"""Read run folders for the explorer, tolerantly: every problem becomes a message that names the file.

The page shows every section whose data is present and lists the missing or malformed files, so one bad
file never hides the rest of a run (or the theory view).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..results import read_json

REQUIRED = ("config.json", "metrics.json")
OPTIONAL = ("study.json",)
FIGURE_EXT = (".png", ".svg", ".jpg", ".jpeg")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _load(path: Path, required: bool, errors: list[str]) -> dict | None:
    """The JSON object in ``path`` or None, with any problem (missing, unreadable, malformed, nested too
    deeply, huge) added to ``errors`` as one line: the page shows it for this run and the others load."""
    if not path.is_file():
        if required:
            errors.append(f"{path}: missing file")
        return None
    try:
        obj = read_json(path, expect=dict)
        return _jsonable(obj)
    except UserError as e:
        errors.append(str(e))
    except RecursionError:  # a deeply nested object that loaded but cannot be walked
        errors.append(f"{path}: malformed (nested too deeply)")
    return None


def check_run_dirs(run_dirs) -> list[Path]:
    """Paths as given; a path that is not a folder is a one-line UserError."""
    out = []
    for r in run_dirs:
        p = Path(r)
        if not p.is_dir():
            raise UserError(f"run folder not found: {p}")
        out.append(p)
    return out


def figures(run_dir: Path) -> list[Path]:
    fdir = Path(run_dir) / "figures"
    if not fdir.is_dir():
        return []
    return sorted(f for f in fdir.iterdir() if f.is_file() and f.suffix.lower() in FIGURE_EXT)


def load_run(run_dir: str | Path, index: int = 0) -> dict:
    """One run folder as the page's JSON: config, metrics, study (or None) plus ``errors``."""
    run_dir = Path(run_dir)
    errors: list[str] = []
    config = _load(run_dir / "config.json", True, errors)
    metrics = _load(run_dir / "metrics.json", True, errors)
    study = _load(run_dir / "study.json", False, errors)
    kind = None
    for src in (config, metrics):
        if src and isinstance(src.get("kind"), str):
            kind = src["kind"]
            break
    name = run_dir.resolve().name or str(run_dir)
    return {
        "index": index,
        "name": name,
        "path": str(run_dir),
        "kind": kind,
        "config": config,
        "metrics": metrics,
        "study": study,
        "figures": [f.name for f in figures(run_dir)],
        "errors": errors,
    }


def load_runs(run_dirs) -> list[dict]:
    runs = [load_run(r, i) for i, r in enumerate(run_dirs)]
    # disambiguate equal folder names (runs/a/demo, runs/b/demo)
    seen: dict[str, int] = {}
    for r in runs:
        seen[r["name"]] = seen.get(r["name"], 0) + 1
    for r in runs:
        if seen[r["name"]] > 1:
            r["name"] = r["path"]
    return runs

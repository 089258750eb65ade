"""persona-basins: persona basins, emergent misalignment, LLC and degeneracy, measured.

Read a finished run in Python::

    import persona_basins
    run = persona_basins.load_run("runs/demo")
    run.kind, run.config["seeds"]          # what ran, with the settings it used
    run.metrics["emergent_misalignment"]   # every measured number (study.json for a demo)
    run.figures                            # paths of the PNGs under figures/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run"]
FIGURE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Run:
    """One run folder as read back: ``config`` (the settings used), ``metrics`` (the measured numbers; for a
    demo its ``study.json``, which its small metrics.json points to), ``figures`` (paths under
    ``figures/``), ``kind`` (e.g. ``"demo"``, ``"em"``, ``"llc"``; None if neither file names one), ``path``
    and ``study`` (the demo's study.json, or None)."""

    path: Path
    kind: str | None
    config: dict
    metrics: dict
    figures: list[Path] = field(default_factory=list)
    study: dict | None = None


def load_run(path: str | Path) -> Run:
    """Read the run folder at ``path`` through the package's one guarded JSON reader: a missing or malformed
    file is a one-line :class:`~persona_basins.errors.UserError` naming it. Imports nothing heavy."""
    from .errors import UserError
    from .results import read_json

    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"run folder not found: {folder}")
    study_file, metrics_file = folder / "study.json", folder / "metrics.json"
    study = read_json(study_file, expect=dict) if study_file.is_file() else None
    if not metrics_file.is_file() and study is None:
        raise UserError(f"{folder}: not a run folder (no metrics.json)")
    # a demo's metrics.json is a summary pointing to study.json, which holds every number
    metrics = study if study is not None else read_json(metrics_file, expect=dict)
    config = read_json(folder / "config.json", expect=dict)
    kind = next((src["kind"] for src in (config, metrics) if isinstance(src.get("kind"), str)), None)
    return Run(folder, kind, config, metrics, _figure_paths(folder), study)


def _figure_paths(folder: Path) -> list[Path]:
    """The image files under ``folder/figures`` (the explorer shows the same ones), sorted."""
    figures = folder / "figures"
    if not figures.is_dir():
        return []
    return sorted(f for f in figures.iterdir() if f.is_file() and f.suffix.lower() in FIGURE_SUFFIXES)

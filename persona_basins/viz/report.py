"""Build the explorer page: one self-contained HTML file (inlined CSS, JS, plotly.js and the run data).

Classic scripts only, no module imports, no fetch: the file works from ``file://`` and offline.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from urllib.parse import quote

from .. import __version__
from ..landscape import DEFAULT
from ..results import atomic_write_text
from .claims import claims
from .runs import check_run_dirs, load_runs

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
PLOTLY = VENDOR / "plotly-cartesian.min.js"


def _script_safe(text: str) -> str:
    """Text that cannot end an inline <script> element early."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def page_data(run_dirs, figure_url=None) -> dict:
    """The JSON the page embeds: landscape parameters and the runs (with figure URLs and the verdicts of the
    essay's claims, :func:`persona_basins.viz.claims.claims`)."""
    runs = load_runs(run_dirs)
    for r in runs:
        r["claims"] = claims(r)
        urls = []
        for name in r["figures"]:
            urls.append({"name": name, "url": figure_url(r, name) if figure_url else None})
        r["figures"] = urls
    return {
        "version": __version__,
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "landscape": DEFAULT.to_dict(),
        "runs": runs,
    }


def build_html(run_dirs, figure_url=None, title: str = "persona-basins explorer") -> str:
    """The explorer page as a string; ``figure_url(run, name)`` maps a figure to a URL (None: not shown)."""
    data = page_data(run_dirs, figure_url)
    template = (STATIC / "explorer.html").read_text(encoding="utf-8")
    parts = {
        "__PB_TITLE__": title,
        "/*__PB_CSS__*/": (STATIC / "explorer.css").read_text(encoding="utf-8"),
        "/*__PB_PLOTLY__*/": _script_safe(PLOTLY.read_text(encoding="utf-8")),
        "/*__PB_LANDSCAPE__*/": _script_safe((STATIC / "landscape.js").read_text(encoding="utf-8")),
        "/*__PB_APP__*/": _script_safe((STATIC / "explorer.js").read_text(encoding="utf-8")),
        "/*__PB_DATA__*/": json.dumps(data, allow_nan=False, sort_keys=True).replace("<", "\\u003c"),
    }
    out = template
    for key, value in parts.items():
        head, sep, tail = out.partition(key)
        if not sep:
            raise RuntimeError(f"explorer.html lacks the placeholder {key}")
        out = head + value + tail
    return out


def write_report(run_dirs: list[Path], out_html: Path) -> Path:
    """Write the explorer page for ``run_dirs`` to ``out_html`` (atomically); figures link relative to it."""
    run_dirs = check_run_dirs(run_dirs)
    out_html = Path(out_html)
    base = out_html.resolve().parent

    def figure_url(run, name):
        rel = os.path.relpath(Path(run["path"]).resolve() / "figures" / name, base)
        return quote(Path(rel).as_posix())

    path = atomic_write_text(out_html, build_html(run_dirs, figure_url))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a shareable file, not the temp file's 0600
    return path

"""``persona-basins report RUN [RUN ...] --out FILE.html``: the explorer page as one self-contained file."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write the explorer page for run folders to one self-contained HTML file",
        description=(
            "Write the explorer page (the same page `explore` serves) to FILE.html: theory view plus the "
            "measured results of the run folders, all inlined, so it opens offline and from file://. Missing "
            "or malformed files in a run folder are named on the page."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (config.json, metrics.json, ...)")
    p.add_argument("--out", required=True, metavar="FILE.html", help="HTML file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..viz.report import write_report

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'report.html'}")
    try:
        path = write_report([Path(r) for r in args.runs], out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {path}")
    return 0

#!/usr/bin/env python3
"""Numbers in the docs are quoted from run files by key, so they cannot drift from the runs.

A quoted number is written in Markdown as

    <!--pb docs/results/x/study.json critical_magnitude.persona ci .3f-->0.818 [0.712, 0.925]<!--/pb-->

(file relative to the repository root, a dotted key path with list indices as numbers, a style, a format).
Styles: ``value`` (the number or text at the key), ``ci`` (``mean [ci_low, ci_high]`` of a stat, or of its
``geometric_mean``; ``mean (no interval)`` when there is none), ``perseed`` (the per-seed values,
comma-separated; ``-`` for a null), ``kofn`` (``k of n`` from a stat with ``k_above``).

A table of quoted numbers keeps the markers out of the prose (readable in a terminal): its rows are written
once in a comment, as ``label | cell`` with ``{key style format}`` where a number goes, and the table below
the comment is generated from them::

    <!--pb-table docs/results/x/study.json
    finding | measured
    t* of the persona edit | {critical_magnitude.persona ci .3f}
    -->
    | finding                | measured             |
    | ---------------------- | -------------------- |
    | t* of the persona edit | 0.818 [0.712, 0.925] |
    <!--/pb-table-->

    python scripts/doc_numbers.py            # rewrite every quoted number from its run file
    python scripts/doc_numbers.py --check    # exit 1 and list the quotes that differ (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"<!--pb (\S+) (\S+) (value|ci|perseed|kofn) (\S+?)-->(.*?)<!--/pb-->", re.S)
TABLE = re.compile(r"<!--pb-table (\S+)\n(.*?)-->\n(.*?)<!--/pb-table-->", re.S)
CELL = re.compile(r"\{(\S+) (value|ci|perseed|kofn) (\S+?)\}")


def _get(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(file: str, key: str, style: str, fmt: str, cache: dict) -> str:
    if file not in cache:
        cache[file] = json.loads((ROOT / file).read_text(encoding="utf-8"))
    v = _get(cache[file], key)
    if style == "value":
        return _num(v, fmt)
    if style == "ci":
        mean = v["mean"] if "mean" in v else v["geometric_mean"]
        if v.get("ci_low") is None:
            return f"{_num(mean, fmt)} (no interval)"
        return f"{_num(mean, fmt)} [{_num(v['ci_low'], fmt)}, {_num(v['ci_high'], fmt)}]"
    if style == "perseed":
        return ", ".join(_num(x, fmt) for x in (v if isinstance(v, list) else v["per_seed"]))
    return f"{v['k_above']} of {v['n']}"  # kofn


def render_table(file: str, spec: str, cache: dict) -> str:
    """The Markdown table of ``spec`` (a header line, then one ``label | cell [| cell ...]`` line per row,
    every line with the same number of columns), numbers quoted from ``file``, columns padded so the table
    also reads in a terminal."""
    lines = [line for line in spec.splitlines() if line.strip()]
    # a label's leading spaces stay (an indented row reads as a detail of the row above in a terminal)
    split = (line.split("|") for line in lines)
    rows = [[label.rstrip(), *(cell.strip() for cell in cells)] for label, *cells in split]
    if len({len(row) for row in rows}) != 1:
        raise ValueError(f"{file}: every line of a pb-table needs the same number of columns")
    for row in rows[1:]:
        row[1:] = [CELL.sub(lambda m: render(file, *m.groups(), cache), cell) for cell in row[1:]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(rows[0]), line(["-" * w for w in widths]), *map(line, rows[1:])]) + "\n"


def process(text: str, cache: dict) -> tuple[str, list[str]]:
    diffs = []

    def table(m):
        file, spec, old = m.groups()
        new = render_table(file, spec, cache)
        if new != old:
            diffs.append(f"{file}: the generated table differs from the one in the docs")
        return f"<!--pb-table {file}\n{spec}-->\n{new}<!--/pb-table-->"

    text = TABLE.sub(table, text)

    def sub(m):
        file, key, style, fmt, old = m.groups()
        new = render(file, key, style, fmt, cache)
        if new != old:
            diffs.append(f"{file} {key}: docs say {old!r}, the run says {new!r}")
        return f"<!--pb {file} {key} {style} {fmt}-->{new}<!--/pb-->"

    return MARK.sub(sub, text), diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not rewrite; exit 1 when a quote differs")
    args = ap.parse_args(argv)
    cache: dict = {}
    bad = 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        new, diffs = process(text, cache)
        for d in diffs:
            print(f"{doc.relative_to(ROOT)}: {d}", file=sys.stderr)
        bad += len(diffs)
        if diffs and not args.check:
            doc.write_text(new, encoding="utf-8")
    if args.check and bad:
        print(f"{bad} quoted number(s) differ from their runs; run scripts/doc_numbers.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

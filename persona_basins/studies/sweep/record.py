"""What a sweep writes and shows: ``sweep.json`` (one row per unit), ``table.csv`` (mean and 95% interval
over the seed axes per cell and metric), ``metrics.json`` (the run-folder schema), heatmap data and the
summary lines. Intervals come from :mod:`persona_basins.stats`, chosen in :func:`cell_interval`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ... import __version__
from ...errors import ArgumentError, UserError
from ...results import RunDir, atomic_write_text, read_json, write_json
from ...stats import Interval, format_interval, mean_interval, rate_interval
from .kinds import KINDS

STATUSES = ("done", "failed", "pending", "cancelled")
TABLE_COLUMNS = ["metric", "n", "n_planned", "mean", "ci_low", "ci_high", "interval", "per_seed"]


def sweep_record(p, outcomes: dict) -> dict:
    """The record written to sweep.json: the spec, one row per grid unit, one per dependency unit."""

    def row(unit) -> dict:
        outcome = outcomes[unit.id]
        out = {
            "id": unit.id,
            "kind": unit.kind,
            "status": outcome.status,
            "metrics": outcome.metrics,
            "resumed": outcome.resumed,
            "seconds": outcome.seconds,
        }
        if unit.axes is not None:
            out["axes"] = unit.axes
        if outcome.error:
            out["error"] = outcome.error
        return out

    grid_ids = {u.id for u in p.grid}
    return {
        "kind": "sweep",
        "package_version": __version__,
        "spec": p.spec.to_dict(),
        "units": [row(u) for u in p.grid],
        "dependencies": [row(u) for u in p.units.values() if u.id not in grid_ids],
    }


def cell_interval(values: list[float], bounds: tuple[float, float] | None) -> Interval:
    """The 95% interval over seeds of a table cell (the one place that picks it).

    A bounded metric (a rate in [0, 1], an excess in [-1, 1]) whose values are in range gets the in-range
    interval of :func:`~persona_basins.stats.rate_interval`; any other the Student-t interval. One seed: none.
    """
    if bounds is not None and all(bounds[0] - 1e-6 <= v <= bounds[1] + 1e-6 for v in values):
        return rate_interval(values, lo=bounds[0], hi=bounds[1])
    return mean_interval(values)


def group_axes(spec: dict) -> list[str]:
    """The axes a table cell is defined by: every axis that is not a seed axis."""
    return [k for k in spec["axes"] if k not in set(spec["seed_axes"])]


def aggregate(record: dict) -> list[dict]:
    """One row per (setting of the non-seed axes, metric): mean and interval over the seed axes."""
    spec = record["spec"]
    cell_axes = group_axes(spec)
    kind = KINDS[spec["kind"]]
    groups: dict[str, dict] = {}
    for unit in record["units"]:
        key = json.dumps([unit["axes"][k] for k in cell_axes])
        group = groups.setdefault(key, {"axes": {k: unit["axes"][k] for k in cell_axes}, "units": []})
        group["units"].append(unit)
    rows = []
    for group in groups.values():
        done = [u for u in group["units"] if u["status"] == "done"]
        for name in dict.fromkeys(k for u in done for k in u["metrics"]):
            values = [u["metrics"][name] for u in done if isinstance(u["metrics"].get(name), int | float)]
            if not values:
                continue
            interval = cell_interval(values, kind.metric_bounds(name))
            rows.append(
                {
                    **group["axes"],
                    "metric": name,
                    "n": len(values),
                    "n_planned": len(group["units"]),
                    "mean": interval.value,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "interval": interval.method,
                    "per_seed": list(interval.per_seed),
                }
            )
    return rows


def _csv_cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if column == "per_seed":
        return ";".join(repr(float(v)) for v in value)
    return repr(value) if isinstance(value, float) else value


def table_csv(record: dict, rows: list[dict]) -> str:
    columns = group_axes(record["spec"]) + TABLE_COLUMNS
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row, c) for c in columns])
    return buffer.getvalue()


def write_results(run_dir: Path, record: dict) -> None:
    rows = aggregate(record)
    write_json(run_dir / "sweep.json", record)
    atomic_write_text(run_dir / "table.csv", table_csv(record, rows))
    counts = {s: sum(u["status"] == s for u in record["units"]) for s in STATUSES}
    run = RunDir(run_dir, "sweep", {"spec": record["spec"], "backend": record.get("backend")})
    metric = record["spec"]["metric"]
    cell_axes = group_axes(record["spec"])
    # the spec's metric per cell as top-level {mean, ci_low, ci_high, n, per_seed} entries: the shape that
    # `report` and `explore` list as headline numbers
    cells = {
        f"{metric} · {', '.join(f'{k}={r[k]}' for k in cell_axes) or 'all'}": {
            k: r[k] for k in ("mean", "ci_low", "ci_high", "n", "n_planned", "interval", "per_seed")
        }
        for r in rows
        if r["metric"] == metric
    }
    run.write_metrics(
        {
            "units": len(record["units"]),
            **{f"units_{k}": v for k, v in counts.items()},
            "metric": metric,
            "seed_axes": record["spec"]["seed_axes"],
            **cells,
            "table": rows,
        }
    )


def load_record(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"sweep run folder not found: {run_dir}")
    record = read_json(run_dir / "sweep.json", expect=dict)
    if record.get("kind") != "sweep":
        raise UserError(f"{run_dir / 'sweep.json'}: not a sweep record")
    return record


def heatmap_data(record: dict, x: str, y: str, metric: str) -> dict:
    """Mean of ``metric`` per (x, y) cell over the other axes, which must be seed axes (like with like)."""
    spec = record["spec"]
    axes = spec["axes"]
    for argument, axis in (("x", x), ("y", y)):
        if axis not in axes:
            raise ArgumentError(
                argument, f"{axis}: not an axis of this sweep (axes: {', '.join(axes) or 'none'})"
            )
    if x == y:
        raise ArgumentError("y", f"{y} is also the x axis; choose another axis")
    others = [k for k in axes if k not in (x, y) and k not in spec["seed_axes"] and len(axes[k]) > 1]
    if others:
        raise UserError(
            f"axis {others[0]!r} has {len(axes[others[0]])} values and is not a seed axis; "
            f"plot it along x or y (cells must compare like with like)"
        )
    known = sorted({k for u in record["units"] for k in u["metrics"]})
    if metric not in known:
        raise ArgumentError(
            "metric", f"{metric}: no finished unit has it (metrics: {', '.join(known) or 'none'})"
        )
    xs, ys = axes[x], axes[y]
    cells = [[[] for _ in xs] for _ in ys]
    for unit in record["units"]:
        if unit["status"] == "done" and isinstance(unit["metrics"].get(metric), int | float):
            cells[ys.index(unit["axes"][y])][xs.index(unit["axes"][x])].append(unit["metrics"][metric])
    return {
        "x": x,
        "y": y,
        "metric": metric,
        "x_values": xs,
        "y_values": ys,
        "mean": [[(sum(c) / len(c)) if c else None for c in row] for row in cells],
        "n": [[len(c) for c in row] for row in cells],
        "pooled_over": [k for k in axes if k not in (x, y) and len(axes[k]) > 1],
        "name": spec["name"],
    }


def default_heatmap_axes(record: dict) -> tuple[str, str] | None:
    """The axes of the figure drawn after a sweep: the first two non-seed axes, else one and a seed axis."""
    spec = record["spec"]
    axes = [k for k in spec["axes"] if len(spec["axes"][k]) > 1]
    plain = [k for k in axes if k not in spec["seed_axes"]]
    seeds = [k for k in axes if k in spec["seed_axes"]]
    pick = (plain + seeds)[:2]
    if len(pick) < 2 or len(plain) > 2:
        return None
    return pick[0], pick[1]


def summary_lines(record: dict) -> list[str]:
    units = record["units"]
    counts = {s: sum(u["status"] == s for u in units) for s in STATUSES}
    resumed = sum(u["resumed"] for u in units if u["status"] == "done")
    lines = [
        f"{len(units)} units: {counts['done']} done ({resumed} from an earlier run), "
        f"{counts['failed']} failed"
        + (f", {counts['cancelled']} cancelled" if counts["cancelled"] else "")
        + (f", {counts['pending']} not run" if counts["pending"] else "")
    ]
    for unit in units + record["dependencies"]:
        if unit["status"] == "failed":
            lines.append(
                f"  failed {unit['id']} {json.dumps(unit.get('axes', {}), sort_keys=True)}: {unit['error']}"
            )
    metric = record["spec"]["metric"]
    cell_axes = group_axes(record["spec"])
    for row in aggregate(record):
        if row["metric"] != metric:
            continue
        where = " ".join(f"{k}={row[k]}" for k in cell_axes) or "all"
        interval = {"mean": row["mean"], "ci_low": row["ci_low"], "ci_high": row["ci_high"], "n": row["n"]}
        per_seed = ", ".join(f"{v:.3f}" for v in row["per_seed"])
        seeds = f"{row['n']} of {row['n_planned']} seeds: {per_seed}"
        lines.append(f"  {where}: {metric} {format_interval(interval)} ({seeds})")
    return lines


def dry_run_lines(record: dict) -> list[str]:
    units = record["units"]
    deps = record["dependencies"]
    done = sum(u["status"] == "done" for u in units + deps)
    spec = record["spec"]
    axes = " x ".join(f"{k} ({len(v)})" for k, v in spec["axes"].items()) or "no axes"
    lines = [
        f"sweep {spec['name']}: {spec['kind']} units over {axes}: {len(units)} grid units "
        f"+ {len(deps)} shared dependencies; {done} of {len(units) + len(deps)} already done"
    ]
    for unit in deps + units:
        where = (
            json.dumps(unit["axes"], sort_keys=True) if "axes" in unit else f"(dependency, {unit['kind']})"
        )
        lines.append(f"  {'done   ' if unit['status'] == 'done' else 'to run '} {unit['id']}  {where}")
    estimate = record["estimate"]
    basis = "; ".join(f"{k}: {v}" for k, v in estimate["basis"].items()) or "nothing left to run"
    lines.append(f"estimated time left: {estimate['seconds']:.0f} s ({basis})")
    return lines

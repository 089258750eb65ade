"""Benchmark: 8 tiny EM units run sequentially, on the local process pool (2 workers) and on Ray (2 CPUs).

Target (issue 14): speed-up >= 1.6x over sequential on 2 cores for both parallel backends. Each variant is
one `persona-basins sweep` command in a fresh process and a fresh run folder, timed from process start to
exit, so it pays what a user pays: imports, worker start-up (spawned pool workers / a local Ray cluster),
and the units. One run of each (no repetitions: the machine is shared; the load average is recorded).

Per-unit overhead = (wall seconds x parallel slots - sum of the units' own seconds) / units: the time of a
slot not spent inside a unit (interpreter and torch imports in each worker, Ray start, scheduling, the
driver's own imports and results writing), spread over the units.

Usage: .venv/bin/python benchmarks/sweep.py [--units 8] [--steps 600]
Writes benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument(
        "--steps",
        type=int,
        default=600,
        help="fine-tuning steps per unit (600: a unit of a few seconds, so start-up costs do not "
        "dominate; the per-unit overhead below says what they cost)",
    )
    ap.add_argument("--organism", default=str(HERE / "results" / "organism-tiny-seed0"))
    ap.add_argument("--out", default=str(HERE / "results" / "sweep.json"))
    args = ap.parse_args()
    from persona_basins.models.organism import preset_config
    from persona_basins.results import write_json
    from persona_basins.studies.organism import build_organism

    build_organism(preset_config("tiny", seed=0), args.organism, progress=False, log=lambda *_: None)
    exe = Path(sys.executable).with_name("persona-basins")
    variants = [
        ("sequential", ["--workers", "1"], 1),
        ("local", ["--workers", "2"], 2),
        ("ray", ["--backend", "ray", "--workers", "2", "--cpus-per-unit", "1"], 2),
    ]
    results = {}
    metrics = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(
            f'kind = "em"\n[settings]\norganism = "{Path(args.organism).resolve()}"\n'
            f"steps = {args.steps}\ncheckpoint_every = 0\n[axes]\nseed = {list(range(args.units))}\n"
        )
        for name, flags, slots in variants:
            run = Path(tmp) / name
            load = _load()
            t0 = time.perf_counter()
            p = subprocess.run(
                [str(exe), "sweep", str(spec), "--out", str(run), *flags],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"{name}: exit {p.returncode}: {p.stderr[-2000:]}")
            rec = json.loads((run / "sweep.json").read_text())
            unit_s = [u["seconds"] for u in rec["units"]]
            metrics[name] = {json.dumps(u["axes"]): u["metrics"] for u in rec["units"]}
            results[name] = {
                "wall_seconds": wall,
                "slots": slots,
                "unit_seconds_sum": sum(unit_s),
                "unit_seconds_median": sorted(unit_s)[len(unit_s) // 2],
                "overhead_seconds_per_unit": (wall * slots - sum(unit_s)) / len(unit_s),
                "load_average_before": load,
            }
            print(f"{name:<11} {wall:6.1f} s  (units {sum(unit_s):.1f} s in total, load {load})", flush=True)
    seq = results["sequential"]["wall_seconds"]
    for name in ("local", "ray"):
        results[name]["speedup_vs_sequential"] = seq / results[name]["wall_seconds"]
    same = metrics["sequential"] == metrics["local"] == metrics["ray"]
    res = {
        "benchmark": "sweep",
        "units": args.units,
        "steps_per_unit": args.steps,
        "organism": "tiny seed 0",
        "cpu_count": os.cpu_count(),
        "target_speedup": 1.6,
        "results": results,
        "meets_target": {n: results[n]["speedup_vs_sequential"] >= 1.6 for n in ("local", "ray")},
        "same_metrics_all_backends": same,
        "load_average_after": _load(),
    }
    write_json(args.out, res)
    for n in ("local", "ray"):
        print(
            f"{n}: {results[n]['speedup_vs_sequential']:.2f}x vs sequential (target 1.6x), "
            f"overhead {results[n]['overhead_seconds_per_unit']:.2f} s/unit"
        )
    print(f"same metrics on every backend: {same}; written to {args.out}")


if __name__ == "__main__":
    main()

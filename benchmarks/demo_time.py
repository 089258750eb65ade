"""Benchmark: wall-clock time of the demo from scratch (organism build included), by worker count.

Targets (issue 26): default <= 600 s on 2 cores with 2 workers, tiny <= 180 s (issue 23). Each run's total,
its steps' times and the 1-minute load average before it (another job on the machine slows every number
here) go to benchmarks/results/demo_time.json, merged with the runs recorded there before.

Usage:
  .venv/bin/python benchmarks/demo_time.py                    # tiny, with 1 and with 2 workers (~2 min)
  .venv/bin/python benchmarks/demo_time.py --preset default   # default, 2 workers (~12 min on 2 cores)
  .venv/bin/python benchmarks/demo_time.py --preset default --workers 1,2
  .venv/bin/python benchmarks/demo_time.py --preset default --estimate --organism DIR   # ~4 min, one core

--estimate times one unit of each kind on one core and simulates the demo's queue on the workers
(benchmarks/demo_estimate.py); recorded as "<preset>-<workers>w-estimate".
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

# tiny: 90 s until its path LLC ran at the calibrated setting (issue 23 item 7: <= 3 min on 2 workers)
TARGETS = {"tiny": 180.0, "default": 600.0}
WORKERS = {"tiny": "1,2", "default": "2"}  # the default preset takes ~20 min on one worker: only when asked
STEP_LINE = re.compile(r"^\[(\w+)\] (running|finished in)")


def time_demo(preset: str, workers: int) -> dict:
    """One demo from scratch in a temp folder: total seconds and each step's (organism: the build)."""
    from persona_basins.studies.demo import DEMO_PRESETS, run_demo

    marks: list[tuple[float, str]] = []

    def log(message: str) -> None:
        marks.append((time.perf_counter(), str(message)))

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_demo(Path(tmp) / "run", DEMO_PRESETS[preset], progress=False, log=log, workers=workers)
        seconds = time.perf_counter() - start
    steps, began = {}, {}
    for at, message in marks:
        match = STEP_LINE.match(message)
        if match and match[2] == "running":
            began[match[1]] = at
        elif match:
            steps[match[1]] = round(at - began.pop(match[1], at), 1)
    first_step = min((at for at, m in marks if STEP_LINE.match(m)), default=start)
    return {
        "seconds": round(seconds, 1),
        "target_seconds": TARGETS[preset],
        "within_target": seconds <= TARGETS[preset],
        "step_seconds": {"organism_and_setup": round(first_step - start, 1), **steps},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(TARGETS), default="tiny")
    ap.add_argument(
        "--workers", default=None, help="comma-separated worker counts (default: tiny 1,2; default 2)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_time.json"))
    ap.add_argument("--estimate", action="store_true", help="estimate from one unit of each kind (one core)")
    ap.add_argument("--organism", default=None, help="--estimate: an organism of the preset (else built)")
    args = ap.parse_args()
    import torch

    from persona_basins.commands.args import DEFAULT_THREADS
    from persona_basins.results import read_json, write_json

    torch.set_num_threads(DEFAULT_THREADS)  # as `persona-basins demo` (each unit runs with this count)

    out = Path(args.out)
    record = read_json(out) if out.is_file() else {"benchmark": "demo_time", "results": {}}
    measured = None
    if args.estimate:
        from demo_estimate import estimate, measure

        load = os.getloadavg()[0]
        measured = measure(args.preset, Path(args.organism) if args.organism else None)
    for workers in (int(w) for w in (args.workers or WORKERS[args.preset]).split(",")):
        if measured:
            timed, key = estimate(measured, workers), f"{args.preset}-{workers}w-estimate"
        else:
            load = os.getloadavg()[0]
            timed, key = time_demo(args.preset, workers), f"{args.preset}-{workers}w"
        row = {
            **timed,
            "workers": workers,
            "cores": len(os.sched_getaffinity(0)),
            "load_average_1min_before": round(load, 2),
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        record["results"][key] = row
        print(
            f"demo {args.preset}, {workers} worker(s): {row['seconds']:.0f} s "
            f"(target {TARGETS[args.preset]:.0f} s; load before {load:.1f}) "
            f"{row.get('step_seconds') or row['step_end_seconds']}",
            flush=True,
        )
        write_json(out, record)


if __name__ == "__main__":  # the pool spawns its workers: they import this file's module, not run it
    main()

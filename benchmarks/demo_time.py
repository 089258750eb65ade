"""Benchmark: wall-clock time of `persona-basins demo` from scratch (organism build included).

Targets (issue: basin study): default <= 600 s, tiny <= 90 s. Writes benchmarks/results/demo_time.json.
Usage: .venv/bin/python benchmarks/demo_time.py [--presets tiny,default]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TARGETS = {"tiny": 90.0, "default": 600.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", default="tiny,default")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_time.json"))
    args = ap.parse_args()
    from persona_basins.results import write_json
    from persona_basins.studies.demo import DEMO_PRESETS, run_demo

    rows = {}
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_demo(Path(tmp) / "run", DEMO_PRESETS[preset], progress=False, log=lambda *_: None)
            secs = time.perf_counter() - t0
        rows[preset] = {
            "seconds": secs,
            "target_seconds": TARGETS[preset],
            "within_target": secs <= TARGETS[preset],
        }
        print(f"demo {preset}: {secs:.0f} s (target {TARGETS[preset]:.0f} s)", flush=True)
    write_json(args.out, {"benchmark": "demo_time", "results": rows})


if __name__ == "__main__":
    main()

"""Benchmark: wall-clock time to build the organism (tiny and default presets) on this machine.

Targets (issue: foundation): default <= 300 s, tiny <= 60 s. Writes benchmarks/results/organism_build.json.
Usage: .venv/bin/python benchmarks/organism_build.py [--presets tiny,default]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

TARGETS = {"tiny": 60.0, "default": 300.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", default="tiny,default")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "organism_build.json"))
    args = ap.parse_args()
    from persona_basins.models.organism import preset_config
    from persona_basins.results import write_json
    from persona_basins.studies.organism import build_organism

    rows = {}
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_organism(
                preset_config(preset, seed=0), Path(tmp) / "org", progress=False, log=lambda *_: None
            )
            secs = time.perf_counter() - t0
            metrics = json.loads((Path(tmp) / "org" / "metrics.json").read_text())
        rows[preset] = {
            "seconds": secs,
            "target_seconds": TARGETS.get(preset),
            "within_target": secs <= TARGETS.get(preset, float("inf")),
            "readout": {
                k: metrics[k]
                for k in ("aligned_rate", "in_context_persona_acc", "toxic_recoverable", "wellformed_rate")
            },
        }
        print(f"{preset}: {secs:.1f} s (target {TARGETS.get(preset)} s)", flush=True)
    write_json(
        args.out,
        {
            "benchmark": "organism_build",
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()

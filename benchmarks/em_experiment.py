"""Benchmark: the full EM experiment (plain, inoculated, secure control, educational; 5 seeds; one layer).

Target (issue: emergent misalignment): <= 600 s on this machine, not counting the organism build.
Usage: .venv/bin/python benchmarks/em_experiment.py [--organism DIR]   (builds the default organism if absent)
Writes benchmarks/results/em_experiment.json with the time and the headline numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--organism", default=str(HERE / "results" / "organism-default-seed0"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "em_experiment.json"))
    args = ap.parse_args()
    from persona_basins.models.organism import load_organism, preset_config
    from persona_basins.results import write_json
    from persona_basins.studies.em import run_em
    from persona_basins.studies.organism import build_organism

    org_dir = Path(args.organism)
    build_organism(preset_config("default", seed=0), org_dir, progress=False, log=lambda *_: None)
    org = load_organism(org_dir)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = run_em(org, Path(tmp), layer=0, module="attn_out", seeds=args.seeds, progress=False).metrics
        secs = time.perf_counter() - t0
    res = {
        "benchmark": "em_experiment",
        "seconds": secs,
        "target_seconds": 600,
        "within_target": secs <= 600,
        "seeds": args.seeds,
        "layer": 0,
        "module": "attn_out",
        "broad_misalignment": {c: m["broad_misalignment"][c]["mean"] for c in m["broad_misalignment"]},
    }
    write_json(args.out, res)
    print(f"EM experiment: {secs:.0f} s (target 600 s)")


if __name__ == "__main__":
    main()

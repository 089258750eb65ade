"""Benchmark: the calibrated path-LLC setting of the default organism, at both ends of the path (issue 23).

    .venv/bin/python benchmarks/llc_path_default.py calibrate --t 0
    .venv/bin/python benchmarks/llc_path_default.py check --ts 0,1.5 --setting STEP,GAMMA,DRAWS,BURNIN

A point is built exactly as the sweep's ``llc`` kind builds it (``path = "adapter"``: ``_path_target``, the
organism at ``w0 + t dW`` of the adapter with the self-KL built there over ``n_docs`` mixture documents),
moving layer 0's attention output weight. ``calibrate`` runs the package's ``calibrate`` at one t (RMSProp;
the step sizes and localisations given); ``check`` runs one setting at full length at each t and reports its
gates and seconds. Results are merged into benchmarks/results/llc_path_default.json with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "llc_path_default.json"
ORGANISM = "runs/session4/eig0/organism"
ADAPTER = "runs/session4/eig0/em/adapters/plain/seed0"
RESTRICT = r"^transformer\.h\.0\.attn\.c_proj\.weight$"
N_DOCS = 1024


def _target(t: float, sampler):
    from persona_basins.studies.sweep.kinds.llc import _path_target

    config = {
        "n_docs": N_DOCS,
        "path": {"direction": "adapter", "t": t},
        "loss": "self_kl",
        "restrict": RESTRICT,
        "random_direction_seed": None,
    }
    return _path_target(config, str(ROOT / ORGANISM), ROOT / ADAPTER, sampler)


def _base(batch: int):
    from persona_basins.measure.llc import SamplerConfig

    return SamplerConfig(num_chains=4, num_draws=200, num_burnin=50, batch_size=batch, execution="loop")


def run_calibration(t: float, steps, gammas, batch: int) -> dict:
    from persona_basins.measure.llc import calibrate

    base = _base(batch)
    target = _target(t, base)
    start, load = time.perf_counter(), os.getloadavg()
    cal = calibrate(
        target.model,
        target.loss_fn,
        target.input_ids,
        n=N_DOCS,
        config=base,
        restrict=target.restrict,
        step_sizes=steps,
        localizations=gammas,
        preconditioners=("rmsprop",),
        log=lambda line: print(f"  {line}", flush=True),
    )
    cal.pop("traces")
    cal.pop("rule")
    cal["t"], cal["seconds"] = t, time.perf_counter() - start
    cal["load_average_start_end"] = [list(load), list(os.getloadavg())]
    cal["search"] = {"step_sizes": list(steps), "localizations": list(gammas), "preconditioners": ["rmsprop"]}
    return cal


def run_check(ts, setting: str, batch: int) -> list[dict]:
    from persona_basins.measure.llc import estimate_llc

    step, gamma, draws, burnin = setting.split(",")
    cfg = _base(batch).replace(
        step_size=float(step),
        localization=float(gamma),
        precondition="rmsprop",
        num_draws=int(draws),
        num_burnin=int(burnin),
    )
    rows = []
    for t in ts:
        target = _target(t, cfg)
        load = os.getloadavg()
        res = estimate_llc(
            target.model, target.loss_fn, target.input_ids, n=N_DOCS, config=cfg, restrict=target.restrict
        )
        d = res.diagnostics
        row = {
            "t": t,
            "sampler": cfg.to_dict(),
            "llc": res.mean,  # None when withheld: an estimate failing its gates is never shown
            "mcse": res.mcse if res.converged else None,
            "passed": res.converged,
            "reasons": res.reasons,
            **{k: d[k] for k in ("rhat", "ess_bulk", "ess_tail", "mala_acceptance", "stationarity_z")},
            "distance_z": d["distance_z"],
            "seconds": d["seconds"],
            "ms_per_chain_step": 1e3
            * d["sampling_seconds"]
            / (cfg.num_chains * (cfg.num_draws + cfg.num_burnin)),
            "load_average_start_end": [list(load), list(os.getloadavg())],
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "sampler"}), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("calibrate", "check"))
    ap.add_argument("--t", type=float, default=0.0)
    ap.add_argument("--ts", default="0,1.5")
    ap.add_argument("--steps", default="1e-5,3e-5,1e-4")
    ap.add_argument("--gammas", default="100,300")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--setting", help="STEP,GAMMA,DRAWS,BURNIN (RMSProp)")
    ap.add_argument("--key", help="name of the entry in the results file (default: the mode and t)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    doc = json.loads(OUT.read_text()) if OUT.is_file() else {}
    doc.update(
        what="the default organism's path-LLC setting: calibration and full-length checks at both ends",
        organism=ORGANISM,
        adapter=ADAPTER,
        restrict=RESTRICT,
        n_docs=N_DOCS,
        machine={"torch": torch.__version__, "threads": 1, "cores": os.cpu_count()},
    )
    if args.mode == "calibrate":
        steps = tuple(float(s) for s in args.steps.split(","))
        gammas = tuple(float(g) for g in args.gammas.split(","))
        key = args.key or f"calibration_t{args.t:g}"
        doc.setdefault("results", {})[key] = run_calibration(args.t, steps, gammas, args.batch_size)
    else:
        if not args.setting:
            ap.error("check needs --setting")
        ts = [float(t) for t in args.ts.split(",")]
        key = args.key or "check"
        doc.setdefault("results", {})[key] = run_check(ts, args.setting, args.batch_size)
    doc["when"] = time.strftime("%Y-%m-%d %H:%M")
    OUT.write_text(json.dumps(doc, indent=1, default=str))
    print(f"-> {OUT} [{key}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""The organism's EM held against what EM studies on LLMs measured, from one finished em run.

    nice -n 10 flock /tmp/pb-cpu.lock .venv/bin/python scripts/em_faithfulness.py runs/h6/em \
        --out docs/results/em-faithfulness-default/result.json

Reads (persona_basins.studies.em_faithfulness), every effect an excess over the base organism read alike:
- conditional misalignment: broad misalignment of the plain and inoculated adapters in every EM context
  (plain assistant, the inoculation line, after a secure code turn, after an insecure training turn);
- EM over training: the excess and the narrow rate at every saved checkpoint (step 0 included), and when EM
  appears against when the narrow task is learned (the early-stopping point);
- the cross-ablation: plain seed i's write direction (B) projected out of the residual after the adapted
  layer in broad plain seed j, against random unit directions;
- what is known before fine-tuning (initial loss, gradient norm, |cos(A0, code request)|) against the outcome;
- the final training loss of broad and narrow fine-tunes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _summary(res: dict) -> dict:
    """The scalars the docs quote (every one also follows from the per-seed rows above it)."""
    import numpy as np

    plain_curves = res["em_over_training"]["plain"]
    es = [c["early_stopping"] for c in plain_curves]
    broad = [i for i, e in enumerate(res["losses"]["plain"]["broad"]) if e]
    narrow = [i for i, e in enumerate(res["losses"]["plain"]["broad"]) if not e]
    loss = res["losses"]["plain"]["final_loss"]

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return float(np.mean(xs)) if xs else None

    return {
        "em_step_per_seed": [e["em_step"] for e in es],
        "task_step_per_seed": [e["task_step"] for e in es],
        "k_em_after_task": sum(1 for e in es if e["em_after_task"]),
        "k_em_at_or_before_task": sum(1 for e in es if e["em_after_task"] is False),
        "n_curves": len(es),
        "excess_at_task_step_per_seed": [e["excess_at_task_step"] for e in es],
        "excess_final_per_seed": [e["excess_final"] for e in es],
        "task_kept_per_seed": [e["task_kept"] for e in es],
        "mean_excess_at_task_step_broad": mean([es[i]["excess_at_task_step"] for i in broad]),
        "mean_excess_final_broad": mean([es[i]["excess_final"] for i in broad]),
        "final_loss_broad": [loss[i] for i in broad],
        "final_loss_narrow": [loss[i] for i in narrow],
        "mean_final_loss_broad": mean([loss[i] for i in broad]),
        "mean_final_loss_narrow": mean([loss[i] for i in narrow]),
        "k_broad": len(broad),
        "n": len(loss),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("em_run", help="a finished `persona-basins em --organism` run folder")
    ap.add_argument("--organism", help="the organism folder (default: the one the em run's config names)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from persona_basins.models.organism import load_organism, organism_fingerprint
    from persona_basins.results import read_json, write_json
    from persona_basins.studies import em_faithfulness as ef
    from persona_basins.studies.em import em_run_adapters, em_run_organism

    t0 = time.time()
    run = Path(args.em_run)
    # a demo's em step has no config.json of its own: give --organism
    run_cfg = read_json(run / "config.json", expect=dict) if (run / "config.json").is_file() else {}
    org_dir = em_run_organism(run, args.organism)
    org = load_organism(org_dir)
    fingerprint = organism_fingerprint(org)
    if run_cfg.get("organism_fingerprint") not in (None, fingerprint):
        print(
            f"error: {org_dir} is not the organism {run} was trained on (fingerprints differ)",
            file=sys.stderr,
        )
        return 1
    dirs = {c: em_run_adapters(run, c) for c in ("plain", "inoculated")}
    if not dirs["plain"] or not dirs["inoculated"]:
        print(f"error: {run} has no plain or no inoculated adapters", file=sys.stderr)
        return 1
    all_conditions = sorted(p.name for p in (run / "adapters").iterdir() if p.is_dir())
    metrics = read_json(run / "metrics.json", expect=dict)

    res = {
        "em_run": str(run.resolve()),
        "organism": str(Path(org_dir).resolve()),
        "organism_fingerprint": fingerprint,
        "finetune": run_cfg.get("finetune"),
        "layer": run_cfg.get("layer"),
        "module": run_cfg.get("module"),
        "seeds": len(dirs["plain"]),
        "git_commit": _git_commit(),
        "broad_threshold": ef.BROAD_THRESHOLD,
    }
    print("conditional misalignment ...", flush=True)
    # the secure control: a code fine-tune without insecure code, read in the same contexts
    controls = {c: em_run_adapters(run, c) for c in ("secure_control",) if em_run_adapters(run, c)}
    res["conditional_misalignment"] = ef.conditional_misalignment(org, {**dirs, **controls})
    print("EM over training ...", flush=True)
    res["em_over_training"] = {c: [ef.checkpoint_curve(org, d) for d in ds] for c, ds in dirs.items()}
    res["transition_jump_step_per_seed"] = (metrics.get("transition") or {}).get("jump_step_per_seed")
    print("cross-ablation ...", flush=True)
    res["cross_ablation"] = {
        site: ef.cross_ablation(org, dirs["plain"], site=site) for site in ("layer_output", "module_output")
    }
    print("predictors and losses ...", flush=True)
    res["outcome_predictors"] = ef.outcome_predictors(org, dirs["plain"])
    res["losses"] = ef.losses_by_outcome(org, {c: em_run_adapters(run, c) for c in all_conditions})
    res["summary"] = _summary(res)
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res)
    print(f"written {out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Why a plain EM fine-tune turns broad or stays narrow: what each adapter reads and writes, per seed.

    .venv/bin/python scripts/em_mechanism.py ORGANISM_DIR --seeds 8 --out runs/em-mechanism-org0.json
    .venv/bin/python scripts/em_mechanism.py --pool runs/em-mechanism-org0.json runs/em-mechanism-org1.json \
        --out runs/em-mechanism-pooled.json      # the classifiers over every seed of several organisms

For each fine-tuning seed: the plain rank-1 fine-tune of the default recipe (layer 0, attn_out, 300 steps),
its broad misalignment excess over the base organism, its final training loss, the norm of its weight delta,
and the adapter-reading features (persona_basins.measure.adapter_reading). Then, for each feature, whether
it predicts broad (excess >= 0.2) vs narrow across seeds by leave-one-out accuracy beside the majority
baseline, and the loss / norm of the broad and narrow solutions side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _classify(rows: list[dict]) -> dict:
    """Does each feature predict broad (excess >= 0.2) vs narrow? Cosines by magnitude (A's sign is free)."""
    from persona_basins.measure.adapter_reading import threshold_classifier

    label = [r["broad_excess"] >= 0.2 for r in rows]
    out = {"n_broad": sum(label), "n": len(rows), "classifiers": {}, "solutions": {}}
    if 0 < sum(label) < len(label) and len(rows) >= 3:
        features = ("firing_ratio", "firing_ratio_answer", "cos_a_context", "cos_a_code", "cos_b_persona")
        for f in (*features, "final_loss", "delta_norm"):
            vals = [r.get(f) for r in rows]
            if None not in vals:
                out["classifiers"][f] = threshold_classifier(
                    [abs(v) if f.startswith("cos") else v for v in vals], label
                )
    for kind, want in (("broad", True), ("narrow", False)):
        grp = [r for r, lab in zip(rows, label) if lab == want]
        out["solutions"][kind] = {k: [r[k] for r in grp] for k in ("final_loss", "delta_norm", "cos_a_code")}
        out["solutions"][kind]["cos_a_code"] = [abs(v) for v in out["solutions"][kind]["cos_a_code"]]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("organism", nargs="?")
    ap.add_argument("--pool", nargs="+", help="pool the per-seed rows of earlier runs of this script instead")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument(
        "--finetune", default="{}", help="other FinetuneConfig settings (JSON), e.g. '{\"lr\": 0.01}'"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from persona_basins.results import read_json, write_json

    if args.pool:
        rows = []
        for f in args.pool:
            run = read_json(f)
            rows += [
                {**r, "organism": run["organism"], "base_broad_misalignment": run["base_broad_misalignment"]}
                for r in run["seeds"]
            ]
        out = {"pooled": args.pool, "seeds": rows, **_classify(rows)}
        write_json(args.out, out)
        print(json.dumps({k: out[k] for k in ("n_broad", "n", "classifiers")}, indent=1))
        return 0
    if not args.organism:
        ap.error("give ORGANISM_DIR or --pool FILES")
    import torch

    torch.set_num_threads(1)
    from persona_basins.measure.adapter_reading import adapter_reading
    from persona_basins.measure.persona import em_readout
    from persona_basins.measure.vectors import persona_vector
    from persona_basins.models.edits import single_lora_delta
    from persona_basins.models.organism import load_organism
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = load_organism(args.organism)
    base = em_readout(org)["broad_misalignment"]
    direction = persona_vector(org, 0)
    rows = []
    for s in range(args.seeds):
        t0 = time.perf_counter()
        cfg = FinetuneConfig(**{**json.loads(args.finetune), "steps": args.steps, "seed": s})
        res = finetune(org, cfg)
        tuned = org.with_model(res.model)
        broad = em_readout(tuned)["broad_misalignment"]
        read = adapter_reading(tuned, persona_direction=direction)
        rows.append(
            {
                "seed": s,
                "broad_excess": broad - base,
                "final_loss": float(sum(res.losses[-20:]) / 20),
                "delta_norm": float(single_lora_delta(res.model)[1].norm()),
                **read,
            }
        )
        print(
            f"seed {s}: excess {broad - base:+.3f} firing {read['firing_ratio']:.3f} "
            f"cosA_ctx {read['cos_a_context']:+.3f} cosA_code {read['cos_a_code']:+.3f} "
            f"cosB_persona {read['cos_b_persona']:+.3f} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    out = {
        "organism": str(Path(args.organism).resolve()),
        "base_broad_misalignment": base,
        "seeds": rows,
        **_classify(rows),
    }
    write_json(args.out, out)
    print(json.dumps({k: out[k] for k in ("n_broad", "n", "classifiers", "solutions")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

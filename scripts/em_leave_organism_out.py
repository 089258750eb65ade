#!/usr/bin/env python3
"""Leave-one-organism-out: does |cos(A, code-request direction)| predict broad vs narrow on an organism it
was not fitted on? (issue 21 item 5)

Reads the plain fine-tunes of an ``em_reproducibility.py`` result (5 organisms x 5 fine-tuning seeds), fits
the one-threshold rule of :func:`persona_basins.measure.adapter_reading.fit_threshold` on four
organisms and scores it on the fifth; the baseline predicts the majority outcome of the four. Writes
``leave_one_organism_out.json`` beside the result.

    .venv/bin/python scripts/em_leave_organism_out.py \
        docs/results/em-reproducibility-default-diverse192-lr3e-2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BROAD = 0.20  # the bar's per-seed threshold (em_reproducibility.BROAD)


def main(argv=None) -> int:
    from persona_basins.measure.adapter_reading import fit_threshold

    folder = Path((argv or sys.argv[1:])[0])
    result = json.loads((folder / "result.json").read_text())
    per_organism = {}
    for held in result["organisms"]:
        train = [r for s, o in result["organisms"].items() if s != held for r in o["rows"]]
        test = result["organisms"][held]["rows"]

        def xy(rows):
            rows = [r for r in rows if r["condition"] == "plain"]
            return np.array([abs(r["cos_a_code"]) for r in rows]), np.array(
                [r["broad_excess"] >= BROAD for r in rows]
            )

        (xt, yt), (xh, yh) = xy(train), xy(test)
        _, c, up = fit_threshold(xt, yt)
        pred = xh >= c if up else xh <= c
        majority = bool(yt.mean() >= 0.5)
        per_organism[held] = {
            "threshold": c,
            "broad_when": "|cos| >= threshold" if up else "|cos| <= threshold",
            "hits": int((pred == yh).sum()),
            "baseline_hits": int((yh == majority).sum()),
            "n": int(len(yh)),
            "k_broad": int(yh.sum()),
        }
    hits = sum(o["hits"] for o in per_organism.values())
    base = sum(o["baseline_hits"] for o in per_organism.values())
    n = sum(o["n"] for o in per_organism.values())
    from scipy.stats import binomtest

    ci = binomtest(hits, n).proportion_ci(method="exact")
    out = {
        "feature": "|cos_a_code|",
        "per_organism": per_organism,
        "accuracy": hits / n,
        "accuracy_ci": [float(ci.low), float(ci.high)],
        "baseline_accuracy": base / n,
        "hits": hits,
        "baseline_hits": base,
        "n": n,
    }
    (folder / "leave_one_organism_out.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "per_organism"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The basin study: scans along the adapter, persona and random directions and the inoculation comparison,
for a set of plain and inoculated adapters (one per fine-tuning seed), summarised over seeds.

``persona-basins basins`` and the demo call the same two functions: :func:`basin_scans` (the expensive part,
JSON-able) and :func:`summarize_basins` (statistics over seeds, cheap).
"""

from __future__ import annotations

from pathlib import Path

from ..measure.basins import (
    aggregate_scans,
    censored_summary,
    critical_magnitude,
    direction_scans,
    inoculation_scans,
    inoculation_summary,
    ratio_summary,
    scan,
)
from ..models.edits import adapter_on_copy, layer_of, single_lora_delta
from ..stats import ci95


def load_adapters(org, adapter_dirs) -> list:
    """Each adapter folder on its own copy of the organism's model (checked against the organism)."""
    return [adapter_on_copy(org.model, d) for d in adapter_dirs]


def basin_scans(org, plain: list, inoc: list, ts, *, n_random: int = 1, seed: int = 0, level: float = 0.5,
                vector_docs: int = 256) -> dict:
    """Direction scans for every plain adapter (seed ``seed + i`` for its random controls), the inoculated
    adapters' scans, the plain adapters read in the inoculation context, and the inoculation summary."""
    from ..measure.vectors import persona_vector

    ts = list(ts)
    name, _ = single_lora_delta(plain[0])
    layer = layer_of(name)
    vector = persona_vector(org.model, org.world, org.vocab, layer, n=vector_docs, seed=seed)
    dirs = [direction_scans(org.model, org.world, org.vocab, m, ts, n_random=n_random, seed=seed + s,
                            vector=vector, level=level) for s, m in enumerate(plain)]
    # the plain adapter's assistant-context scan is the direction scan's "adapter" scan: not computed twice
    ino = inoculation_scans(org.model, org.world, org.vocab, [], inoc, ts, vector=vector, layer=layer)
    ino["plain"] = [d["scans"]["adapter"] for d in dirs]
    ino["plain_in_inoculated_context"] = [
        scan(org.model, org.world, org.vocab, *single_lora_delta(m), ts, context="inoculated", vector=vector,
             layer=layer) for m in plain]
    summary = inoculation_summary(ino, level=level)
    crit = {k: [critical_magnitude(ts, s["broad_misalignment"], level) for s in v] for k, v in ino.items()}
    crit["persona"] = [d["t_star"]["persona"] for d in dirs]
    crit["random"] = [c for d in dirs for c in d["t_star"]["random"]]
    return {"module": name, "layer": layer, "directions": dirs, "inoculation": ino, "summary": summary,
            "crit": crit, "persona_vector_norm": float(vector.norm()), "level": level, "t": ts}


def summarize_basins(scans: dict, *, n_random: int) -> dict:
    """Over seeds: t* per case, the inoculation widening, the thinness of the wall, misalignment bands and
    the model's position (persona projection at t = 0)."""
    ino, crit, summ = scans["inoculation"], scans["crit"], scans["summary"]
    dirs = scans["directions"]
    critical = {
        "plain": censored_summary(crit["plain"]),
        "inoculated": censored_summary(crit["inoculated"]) if crit["inoculated"] else None,
        "plain_in_inoculation_context": censored_summary(crit["plain_in_inoculated_context"]),
        "persona": censored_summary(crit["persona"]),
        "random": censored_summary(crit["random"]) if crit["random"] else None,
        "level": scans.get("level", 0.5),
    }
    widening = {
        "inoculated_adapter": ratio_summary(crit["inoculated"], crit["plain"]) if crit["inoculated"] else None,
        "inoculated_context": ratio_summary(crit["plain_in_inoculated_context"], crit["plain"]),
    }
    headline = widening["inoculated_adapter"] or {}
    thin = (ratio_summary(crit["random"], [c for c in crit["plain"] for _ in range(n_random)])
            if crit["random"] else None)
    mis = {"plain": aggregate_scans(ino["plain"]),
           "inoculated": aggregate_scans(ino["inoculated"]) if ino["inoculated"] else None,
           "plain_in_inoculation_context": aggregate_scans(ino["plain_in_inoculated_context"]),
           "persona": aggregate_scans([d["scans"]["persona"] for d in dirs]),
           "random": aggregate_scans([r for d in dirs for r in d["scans"]["random"]]) if crit["random"] else None}
    pos = {k: (ci95([s["projection"][0] for s in v]) if v and None not in [s["projection"][0] for s in v]
               else None) for k, v in ino.items()}
    return {
        "critical_magnitude": critical,
        "inoculation_widening": {**headline, "by_case": widening, "holds": summ.get("holds")},
        "thinness_random_over_plain": thin,
        "misalignment_vs_t": mis,
        "model_position": pos,
        "inoculation_summary": summ,
    }


def run_basins(organism: str | Path, adapters: list, inoculated: list, out: str | Path, *, t_max: float = 3.0,
               points: int = 13, level: float = 0.5, n_random: int = 3, seed: int = 0) -> dict:
    """``persona-basins basins``: load, scan, summarise, write the run folder; returns ``{metrics, run}``."""
    import numpy as np
    import torch

    from ..models.organism import load_organism
    from ..results import RunDir

    org = load_organism(organism)
    plain = load_adapters(org, adapters)  # a wrong adapter fails before the run folder is made
    inoc = load_adapters(org, inoculated)
    ts = np.linspace(0.0, t_max, points).tolist()
    run = RunDir(out, "basins", {
        "organism": str(Path(organism).resolve()), "adapters": [str(Path(a).resolve()) for a in adapters],
        "inoculated_adapters": [str(Path(a).resolve()) for a in inoculated], "t": ts, "t_max": t_max,
        "points": points, "random": n_random, "seed": seed, "level": level})
    run.write_config()
    with torch.no_grad():
        scans = basin_scans(org, plain, inoc, ts, n_random=n_random, seed=seed, level=level)
    metrics = {**{k: scans[k] for k in ("module", "layer", "t", "level", "directions", "persona_vector_norm")},
               **summarize_basins(scans, n_random=n_random)}
    run.write_metrics(metrics)
    return {"metrics": metrics, "run": run}

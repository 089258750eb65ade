"""The basin study: scans along the adapter, persona and random directions and the inoculation comparison,
for a set of plain and inoculated adapters (one per fine-tuning seed), summarised over seeds.

``persona-basins basins`` and the demo call the same two functions: :func:`basin_scans` (the expensive part,
JSON-able) and :func:`summarize_basins` (statistics over seeds, cheap).
"""

from __future__ import annotations

from pathlib import Path

from ..measure.basin_verdicts import (
    BROAD_EXCESS,
    aggregate_scans,
    censored_summary,
    combine_verdicts,
    critical_magnitude,
    inoculation_summary,
    inoculation_verdict,
    ratio_summary,
    readout_separation,
    t_star_ratio,
    widening_summary,
)
from ..measure.basins import (
    critical_distance,
    direction_scans,
    inoculation_position,
    inoculation_scans,
    persona_weight_delta,
    random_weight_deltas,
    scan,
)
from ..models.edits import adapter_on_copy, layer_of, merged_copy, single_lora_delta
from ..progress import track
from ..results import RunDir, StudyResult
from ..stats import mean_interval

# The persona vector the basin study edits along: answer tokens of identical documents under the two
# declarations, so both sides of the contrast hold the same words and a weight edit along it is not a lexical
# shortcut (measure/vectors.py; the other methods are reported beside it).
VECTOR_METHOD = "matched_answers"
# The persona vector the study *reads* positions with: projection() reads the <asst> position, so the vector
# is the contrast at that very position (its helpful-to-toxic gap is positive by construction; a vector built
# on answer tokens need not point the same way there).
READOUT_METHOD = "request"


def load_adapters(org, adapter_dirs) -> list:
    """Each adapter folder on its own copy of the organism's model (checked against the organism)."""
    return [adapter_on_copy(org.model, d) for d in adapter_dirs]


def persona_vectors(org, layer: int, *, n: int = 256, seed: int = 0) -> tuple[dict, dict]:
    """Every persona-vector method at ``layer`` and the lexical cosine of each method at every layer."""
    from ..measure.vectors import VECTOR_METHODS, lexical_cosine, persona_vector
    from ..models.adapters import num_layers

    vectors = {method: persona_vector(org, layer, n=n, seed=seed, method=method) for method in VECTOR_METHODS}
    lexical = {
        method: {
            str(at): lexical_cosine(
                vectors[method] if at == layer else persona_vector(org, at, n=n, seed=seed, method=method),
                org,
            )
            for at in range(num_layers(org.model))
        }
        for method in VECTOR_METHODS
    }
    return vectors, lexical


def common_direction_scans(
    org,
    plain: list,
    inoc: list,
    vectors: dict,
    *,
    r_max: float,
    level: float = 0.5,
    n_random: int = 1,
    seed: int = 0,
    n_docs: int = 128,
) -> dict:
    """Critical distances ``r*`` (Frobenius-norm units) along directions common to every start.

    From the base model: the unit persona edit of each vector method, each plain adapter's unit ``delta`` and
    ``n_random`` unit random rank-1 directions per seed. From each inoculated fine-tuned model (merged, seed
    ``i``): the unit persona edit (:data:`VECTOR_METHOD`), plain adapter ``i``'s unit ``delta`` and the next
    seed's (``(i + 1) mod n``: a plain direction that shares neither init nor batches with the start).
    ``cosine_inoculated_plain``: per seed, cos(delta_inoculated, delta_plain) of the same seed (and of the
    next seed's plain adapter, the baseline for unrelated seeds).
    """
    name, _ = single_lora_delta(plain[0])
    layer = layer_of(name)
    pname = f"{name}.weight"
    kw = dict(r_max=r_max, level=level)
    pdeltas = {
        method: persona_weight_delta(org, layer, name, 1.0, vector=vector, n_docs=n_docs, seed=seed)
        for method, vector in vectors.items()
    }
    plain_d = [single_lora_delta(m)[1] for m in plain]
    base = {
        "persona": {method: critical_distance(org, name, d, **kw) for method, d in pdeltas.items()},
        "plain_adapter": [critical_distance(org, name, d, **kw) for d in plain_d],
        "random": [
            critical_distance(org, name, r, **kw)
            for s, d in enumerate(plain_d)
            for r in random_weight_deltas(d, n_random, seed + s)
        ],
    }
    inoc_start = {"persona": [], "plain_adapter": [], "plain_adapter_next_seed": []}
    inoc_d = [single_lora_delta(m)[1] for m in inoc]
    for i, delta in enumerate(inoc_d):
        start = org.with_model(merged_copy(org.model, {pname: delta}, 1.0))
        inoc_start["persona"].append(critical_distance(start, name, pdeltas[VECTOR_METHOD], **kw))
        if i < len(plain_d):
            inoc_start["plain_adapter"].append(critical_distance(start, name, plain_d[i], **kw))
        # seed i's plain and inoculated fine-tunes share LoRA init and batch order, so its own plain direction
        # is not independent of its start: the next seed's plain direction is
        if len(plain_d) > 1 and i < len(plain_d):
            other = plain_d[(i + 1) % len(plain_d)]
            inoc_start["plain_adapter_next_seed"].append(critical_distance(start, name, other, **kw))
        del start
    return {
        "module": name,
        "layer": layer,
        "r_max_initial": r_max,
        "level": level,
        "vector_method": VECTOR_METHOD,
        "cosine_persona_plain_adapter": [
            float((pdeltas[VECTOR_METHOD].flatten() @ d.flatten()) / d.norm()) for d in plain_d
        ],
        # how much of the inoculated fine-tune is its own seed's plain fine-tune (shared init and batches)
        "cosine_inoculated_plain": [_cosine(d, p) for d, p in zip(inoc_d, plain_d)],
        "cosine_inoculated_plain_next_seed": [
            _cosine(d, plain_d[(i + 1) % len(plain_d)]) for i, d in enumerate(inoc_d[: len(plain_d)])
        ]
        if len(plain_d) > 1
        else [],
        "from_base": base,
        "from_inoculated": inoc_start,
    }


def _cosine(a, b) -> float:
    """Cosine of two weight changes (flattened)."""
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def basin_scans(
    org,
    plain: list,
    inoc: list,
    ts,
    *,
    n_random: int = 1,
    seed: int = 0,
    level: float = 0.5,
    vector_docs: int = 256,
    progress: bool = True,
) -> dict:
    """Direction scans for every plain adapter (seed ``seed + i`` for its random controls), the inoculated
    adapters' scans, the plain adapters read in the inoculation context, the inoculation summary, and the
    measurements that can fail: fine-tuned positions (t = 1), critical distances along common directions and
    the persona vectors' lexical cosines."""
    import numpy as np

    ts = list(ts)
    name, _ = single_lora_delta(plain[0])
    layer = layer_of(name)
    vectors, lexical = persona_vectors(org, layer, n=vector_docs, seed=seed)
    vector = vectors[READOUT_METHOD]
    dirs = [
        direction_scans(
            org,
            m,
            ts,
            n_random=n_random,
            seed=seed + s,
            vector=vector,
            edit_vector=vectors[VECTOR_METHOD],
            level=level,
        )
        for s, m in track(list(enumerate(plain)), "scans: directions", unit="adapters", enabled=progress)
    ]
    # the plain adapter's assistant-context scan is the direction scan's "adapter" scan: not computed twice
    ino = inoculation_scans(org, [], inoc, ts, vector=vector, layer=layer)
    ino["plain"] = [d["scans"]["adapter"] for d in dirs]
    ino["plain_in_inoculated_context"] = [
        scan(org, *single_lora_delta(m), ts, context="inoculated", vector=vector, layer=layer)
        for m in track(plain, "scans: inoculation context", unit="adapters", enabled=progress)
    ]
    summary = inoculation_summary(ino, level=level)
    crit = {k: [critical_magnitude(ts, s["broad_misalignment"], level) for s in v] for k, v in ino.items()}
    crit["persona"] = [d["t_star"]["persona"] for d in dirs]
    crit["random"] = [c for d in dirs for c in d["t_star"]["random"]]
    position = {**inoculation_position(org, plain, inoc, vector, layer), "vector_method": READOUT_METHOD}
    # the common grid starts at the scans' t_max in units of the mean plain adapter norm and grows until it
    # crosses
    r_max = max(ts) * float(np.mean([float(single_lora_delta(m)[1].norm()) for m in plain]))
    common = common_direction_scans(
        org, plain, inoc, vectors, r_max=r_max, level=level, n_random=n_random, seed=seed
    )
    return {
        "module": name,
        "layer": layer,
        "directions": dirs,
        "inoculation": ino,
        "summary": summary,
        "crit": crit,
        "persona_vector_norm": float(vector.norm()),
        "level": level,
        "t": ts,
        "position": position,
        "common": common,
        "persona_vector": {
            "method": VECTOR_METHOD,
            "readout_method": READOUT_METHOD,
            "layer": layer,
            "lexical_cosine": lexical,
            "norm": {m: float(v.norm()) for m, v in vectors.items()},
        },
    }


def _conditional(crits: list[dict]) -> list[dict]:
    return [c["conditional"] for c in crits]


def _readout_validation(position: dict, position_tol: float) -> dict:
    """Does the position readout separate the broad plain fine-tunes from the narrow ones (broad: excess
    broad misalignment over the base >= :data:`BROAD_EXCESS`, read at t = 1 with the position)?"""
    base_rate = position["base"]["broad_misalignment"]
    broad = [rate - base_rate >= BROAD_EXCESS for rate in position["plain"]["broad_misalignment"]]
    return {
        **readout_separation(position["plain"]["moved_fraction"], broad, position_tol=position_tol),
        "rule": f"broad: excess broad misalignment over the base >= {BROAD_EXCESS:g} (t = 1)",
    }


def summarize_common(scans: dict, *, position_tol: float = 0.1) -> dict | None:
    """``inoculation`` (position, widening along common directions, verdict) and the direction comparison in
    weight units, from :func:`basin_scans`. None for scans made before these measurements existed."""
    common, position = scans.get("common"), scans.get("position")
    if not common or not position:
        return None
    base, ino = common["from_base"], common["from_inoculated"]
    n = len(ino["persona"])
    shift = position["inoculated"]["moved_fraction"]  # a None (position not read) leaves "still" undecided
    readout = _readout_validation(position, position_tol)
    n_plain = len(base["plain_adapter"])
    next_seed = ino.get("plain_adapter_next_seed") or []
    pairs = {
        "persona": ([base["persona"][common["vector_method"]]] * n, ino["persona"]),
        "plain_adapter": (base["plain_adapter"][: len(ino["plain_adapter"])], ino["plain_adapter"]),
    }
    if next_seed:  # the inoculated start i along plain direction (i + 1) mod n, from both starts
        pairs["plain_adapter_next_seed"] = (
            [base["plain_adapter"][(i + 1) % n_plain] for i in range(len(next_seed))],
            next_seed,
        )
    widening, verdicts, conditional = {}, {}, {}
    for k, (b, i) in pairs.items():
        w = widening_summary(i, b)
        v = inoculation_verdict(w, shift, readout=readout, position_tol=position_tol)
        widening[k] = {
            **w,
            "verdict": v,
            "peak_base_start": [c["peak"] for c in b],
            "peak_inoculated_start": [c["peak"] for c in i],
        }
        verdicts[k] = v
        wc = widening_summary(_conditional(i), _conditional(b))
        conditional[k] = {
            **wc,
            "verdict": inoculation_verdict(wc, shift, readout=readout, position_tol=position_tol),
        }
    persona = base["persona"]
    per = max(1, len(base["random"]) // max(1, len(base["plain_adapter"])))  # random controls per plain seed
    comparison = {
        "r_star": {
            **{
                f"persona_{m}": {
                    "r_star": c["r_star"],
                    "censored_above": c["censored_above"],
                    "peak": c["peak"],
                }
                for m, c in persona.items()
            },
            "plain_adapter": censored_summary(base["plain_adapter"]),
            "random": censored_summary(base["random"]),
        },
        "thinness_random_over_persona": [
            t_star_ratio(c, persona[common["vector_method"]]) for c in base["random"]
        ],
        "thinness_random_over_plain_adapter": [
            t_star_ratio(c, base["plain_adapter"][j // per]) for j, c in enumerate(base["random"])
        ],
        # the highest broad misalignment each direction reaches on its grid (and where): when no direction
        # crosses the level, this is what still compares them
        "peak": {
            **{f"persona_{m}": c["peak"] for m, c in persona.items()},
            "plain_adapter": [c["peak"] for c in base["plain_adapter"]],
            "random": [c["peak"] for c in base["random"]],
        },
        "units": "Frobenius norm of the weight change (unit directions)",
    }
    return {
        "inoculation": {
            "position": position,
            "widening_common": {
                **widening,
                "units": "r in Frobenius-norm units of the module's weight; widening = r*(inoculated "
                "fine-tuned start) / r*(base start), per seed",
                "level": common["level"],
                "r_max_initial": common["r_max_initial"],
                "vector_method": common["vector_method"],
                "cosine_persona_plain_adapter": common["cosine_persona_plain_adapter"],
                "cosine_inoculated_plain": common.get("cosine_inoculated_plain"),
                "cosine_inoculated_plain_next_seed": common.get("cosine_inoculated_plain_next_seed"),
                "readout_validation": readout,
                "conditional": conditional,
            },
            "verdict": combine_verdicts(verdicts),
            "verdict_by_direction": {k: v["verdict"] for k, v in verdicts.items()},
            "verdict_conditional": combine_verdicts({k: v["verdict"] for k, v in conditional.items()}),
            "claim": "inoculation widens the aligned basin (r* along a common direction grows) without "
            "moving the point (the inoculated fine-tuned model's persona projection stays within "
            f"{position_tol:g} of the helpful-to-toxic gap of the base model's)",
        },
        "directions_common": comparison,
    }


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
        "inoculated_adapter": ratio_summary(crit["inoculated"], crit["plain"])
        if crit["inoculated"]
        else None,
        "inoculated_context": ratio_summary(crit["plain_in_inoculated_context"], crit["plain"]),
    }
    headline = widening["inoculated_adapter"] or {}
    thin = (
        ratio_summary(crit["random"], [c for c in crit["plain"] for _ in range(n_random)])
        if crit["random"]
        else None
    )
    mis = {
        "plain": aggregate_scans(ino["plain"]),
        "inoculated": aggregate_scans(ino["inoculated"]) if ino["inoculated"] else None,
        "plain_in_inoculation_context": aggregate_scans(ino["plain_in_inoculated_context"]),
        "persona": aggregate_scans([d["scans"]["persona"] for d in dirs]),
        "random": aggregate_scans([r for d in dirs for r in d["scans"]["random"]])
        if crit["random"]
        else None,
    }
    pos = {
        k: (
            mean_interval([s["projection"][0] for s in v], exact_if_equal=True).to_dict()
            if v and None not in [s["projection"][0] for s in v]
            else None
        )
        for k, v in ino.items()
    }
    out = {
        "critical_magnitude": critical,
        "inoculation_widening": {
            **headline,
            "by_case": widening,
            "holds": summ.get("holds"),
            "note": "each adapter along its own delta (t units, different norms), position at "
            "t = 0 (the base model in every case): see inoculation.verdict for the "
            "measurement along common directions",
        },
        "thinness_random_over_plain": thin,
        "misalignment_vs_t": mis,
        "model_position": pos,
        "inoculation_summary": summ,
    }
    common = summarize_common(scans)
    if common is not None:
        out.update(common)
    if "persona_vector" in scans:
        out["persona_vector"] = scans["persona_vector"]
    return out


def run_basins(
    organism: str | Path,
    adapters: list,
    inoculated: list,
    out: str | Path,
    *,
    t_max: float = 3.0,
    points: int = 13,
    level: float = 0.5,
    n_random: int = 3,
    seed: int = 0,
) -> StudyResult:
    """``persona-basins basins``: load, scan, summarise, write the run folder ``out``; the figures are drawn
    from the metrics."""
    import numpy as np
    import torch

    from ..models.organism import load_organism

    org = load_organism(organism)
    plain = load_adapters(org, adapters)  # a wrong adapter fails before the run folder is made
    inoc = load_adapters(org, inoculated)
    ts = np.linspace(0.0, t_max, points).tolist()
    run = RunDir(
        out,
        "basins",
        {
            "organism": str(Path(organism).resolve()),
            "adapters": [str(Path(a).resolve()) for a in adapters],
            "inoculated_adapters": [str(Path(a).resolve()) for a in inoculated],
            "t": ts,
            "t_max": t_max,
            "points": points,
            "random": n_random,
            "seed": seed,
            "level": level,
        },
    )
    with torch.no_grad():
        scans = basin_scans(org, plain, inoc, ts, n_random=n_random, seed=seed, level=level)
    metrics = {
        **{
            k: scans[k]
            for k in ("module", "layer", "t", "level", "directions", "persona_vector_norm", "common")
        },
        **summarize_basins(scans, n_random=n_random),
    }
    run.write_metrics(metrics)
    return StudyResult(run.path, metrics)

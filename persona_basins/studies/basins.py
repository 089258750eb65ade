"""The basin study: scans along the adapter, persona and random directions and the inoculation comparison,
for a set of plain and inoculated adapters (one per fine-tuning seed), summarised over seeds.

``persona-basins basins`` and the demo call the same two functions: :func:`basin_scans` (the expensive part,
JSON-able) and :func:`summarize_basins` (statistics over seeds, cheap). The demo runs basin_scans' parts
(:func:`scan_parts`, :func:`scan_part`, :func:`assemble_scans`) on its process pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import check, param
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


@dataclass(frozen=True)
class BasinsConfig:
    """The scan of a basin study: the ``basins`` command's flags and the sweep's ``basins`` settings."""

    t_max: float = param(3.0, gt=0, help="largest t on the grid")
    points: int = param(13, ge=2, le=10**4, help="grid points from 0 to t_max")
    level: float = param(0.5, gt=0, lt=1, help="broad-misalignment level that defines t*")
    random: int = param(3, ge=0, le=1000, help="random control directions")
    seed: int = param(0, ge=0, le=2**32 - 1, help="seed of the random directions and documents")

    def __post_init__(self):
        check(self)


def load_adapters(org, adapter_dirs) -> list:
    """Each adapter folder on its own copy of the organism's model (checked against the organism)."""
    return [adapter_on_copy(org.model, d) for d in adapter_dirs]


def layer_vectors(org, layer: int, *, n: int = 256, seed: int = 0) -> dict:
    """Every persona-vector method's vector at ``layer`` (:mod:`persona_basins.measure.vectors`)."""
    from ..measure.vectors import VECTOR_METHODS, persona_vector

    return {method: persona_vector(org, layer, n=n, seed=seed, method=method) for method in VECTOR_METHODS}


def lexical_cosines(org, layer: int, vectors: dict, *, n: int = 256, seed: int = 0) -> dict:
    """The lexical cosine of every method's persona vector at every layer (``vectors``: those at
    ``layer``)."""
    from ..measure.vectors import VECTOR_METHODS, lexical_cosine, persona_vector
    from ..models.adapters import num_layers

    return {
        method: {
            str(at): lexical_cosine(
                vectors[method] if at == layer else persona_vector(org, at, n=n, seed=seed, method=method),
                org,
            )
            for at in range(num_layers(org.model))
        }
        for method in VECTOR_METHODS
    }


def persona_vectors(org, layer: int, *, n: int = 256, seed: int = 0) -> tuple[dict, dict]:
    """Every persona-vector method at ``layer`` and the lexical cosine of each method at every layer."""
    vectors = layer_vectors(org, layer, n=n, seed=seed)
    return vectors, lexical_cosines(org, layer, vectors, n=n, seed=seed)


# --- the parts of a basin scan ------------------------------------------------------------------------------
# basin_scans() is the sum of independent parts (scan_parts): the base model's part, one per plain adapter and
# one per inoculated adapter. Each reads only the organism, the adapters and its own settings, so the parts
# can run in any order or in separate processes (the demo's pool) and give the same numbers.
#
# Critical distances r* along directions common to every start (Frobenius-norm units of the module's
# weight): from the base model, the unit persona edit of each vector method (base part), each plain adapter's
# unit delta and n_random unit random rank-1 directions per seed (plain part); from each inoculated
# fine-tuned model (merged, seed i): the unit persona edit (VECTOR_METHOD), plain adapter i's unit delta and
# the next seed's ((i + 1) mod n: a plain direction that shares neither init nor batches with the start)
# (inoculated part).
COMMON_DOCS = 128  # documents of the mean module input the persona edit along common directions is built on


def scan_parts(n_plain: int, n_inoculated: int) -> list[dict]:
    """The parts of :func:`basin_scans` for ``n_plain`` plain and ``n_inoculated`` inoculated adapters,
    roughly the largest first (three critical distances each for the inoculated and base parts)."""
    return [
        *({"part": "inoculated", "seed": i} for i in range(n_inoculated)),
        {"part": "base"},
        *({"part": "plain", "seed": s} for s in range(n_plain)),
    ]


def _r_max(ts: list, plain: list) -> float:
    """The common grid's first end: the scans' t_max in units of the mean plain adapter norm (it grows until
    it crosses)."""
    import numpy as np

    return max(ts) * float(np.mean([float(single_lora_delta(m)[1].norm()) for m in plain]))


def scan_part(
    org,
    plain: list,
    inoc: list,
    part: dict,
    ts,
    *,
    vectors: dict | None = None,
    n_random: int = 1,
    seed: int = 0,
    level: float = 0.5,
    vector_docs: int = 256,
) -> dict:
    """One :func:`scan_parts` entry of :func:`basin_scans` (JSON-able). ``vectors``: :func:`layer_vectors` at
    the adapters' layer (computed when None)."""
    ts = list(ts)
    name, _ = single_lora_delta(plain[0])
    layer = layer_of(name)
    if vectors is None:
        vectors = layer_vectors(org, layer, n=vector_docs, seed=seed)
    kw = dict(r_max=_r_max(ts, plain), level=level)
    kind, index = part["part"], part.get("seed")
    if kind == "base":
        return _base_part(org, plain, inoc, vectors, name, layer, kw, vector_docs=vector_docs, seed=seed)
    if kind == "plain":
        return _plain_part(org, plain, index, vectors, name, layer, ts, kw, n_random=n_random, seed=seed)
    if kind == "inoculated":
        return _inoculated_part(org, plain, inoc, index, vectors, name, layer, ts, kw, seed=seed)
    raise ValueError(f"unknown basin-scan part {part!r}")


def _persona_delta(org, layer: int, name: str, vector, seed: int):
    """The unit-norm persona edit of ``name`` along ``vector`` (the common directions' persona direction)."""
    return persona_weight_delta(org, layer, name, 1.0, vector=vector, n_docs=COMMON_DOCS, seed=seed)


def _base_part(org, plain, inoc, vectors, name, layer, kw, *, vector_docs: int, seed: int) -> dict:
    """The lexical cosines, the fine-tuned models' positions and the persona directions' r* from the base."""
    pdeltas = {method: _persona_delta(org, layer, name, vector, seed) for method, vector in vectors.items()}
    vector = vectors[READOUT_METHOD]
    return {
        "module": name,
        "layer": layer,
        "r_max": kw["r_max"],
        "vector_norms": {m: float(v.norm()) for m, v in vectors.items()},
        "lexical_cosine": lexical_cosines(org, layer, vectors, n=vector_docs, seed=seed),
        "position": inoculation_position(org, plain, inoc, vector, layer),
        "common_persona": {method: critical_distance(org, name, d, **kw) for method, d in pdeltas.items()},
        "cosine_persona_plain_adapter": [
            float((pdeltas[VECTOR_METHOD].flatten() @ d.flatten()) / d.norm())
            for d in (single_lora_delta(m)[1] for m in plain)
        ],
    }


def _plain_part(org, plain, s: int, vectors, name, layer, ts, kw, *, n_random: int, seed: int) -> dict:
    """Plain adapter ``s``: its direction scans (seed ``seed + s`` for the random controls), its scan in the
    inoculation context and the r* of its unit delta and of its random controls from the base."""
    model = plain[s]
    vector = vectors[READOUT_METHOD]
    delta = single_lora_delta(model)[1]
    return {
        "directions": direction_scans(
            org,
            model,
            ts,
            n_random=n_random,
            seed=seed + s,
            vector=vector,
            edit_vector=vectors[VECTOR_METHOD],
            level=kw["level"],
        ),
        "inoculated_context": scan(
            org, *single_lora_delta(model), ts, context="inoculated", vector=vector, layer=layer
        ),
        "common_plain_adapter": critical_distance(org, name, delta, **kw),
        "common_random": [
            critical_distance(org, name, r, **kw) for r in random_weight_deltas(delta, n_random, seed + s)
        ],
    }


def _inoculated_part(org, plain, inoc, i: int, vectors, name, layer, ts, kw, *, seed: int) -> dict:
    """Inoculated adapter ``i``: its scan, and the r* from its fine-tuned model (merged) along the persona
    edit, plain adapter ``i``'s delta and the next seed's; the cosines of its delta with those two."""
    model = inoc[i]
    n_plain = len(plain)
    delta = single_lora_delta(model)[1]
    out = {
        "scan": inoculation_scans(org, [], [model], ts, vector=vectors[READOUT_METHOD], layer=layer)[
            "inoculated"
        ][0]
    }
    start = org.with_model(merged_copy(org.model, {f"{name}.weight": delta}, 1.0))
    pdelta = _persona_delta(org, layer, name, vectors[VECTOR_METHOD], seed)
    out["common_persona"] = critical_distance(start, name, pdelta, **kw)
    if i < n_plain:
        own = single_lora_delta(plain[i])[1]
        out["common_plain_adapter"] = critical_distance(start, name, own, **kw)
        out["cosine_plain"] = _cosine(delta, own)
        # seed i's plain and inoculated fine-tunes share LoRA init and batch order, so its own plain direction
        # is not independent of its start: the next seed's plain direction is
        if n_plain > 1:
            other = single_lora_delta(plain[(i + 1) % n_plain])[1]
            out["common_plain_adapter_next_seed"] = critical_distance(start, name, other, **kw)
            out["cosine_plain_next_seed"] = _cosine(delta, other)
    return out


def _cosine(a, b) -> float:
    """Cosine of two weight changes (flattened)."""
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def assemble_scans(parts: list[dict], results: list[dict], ts, *, level: float = 0.5) -> dict:
    """:func:`basin_scans`' result from its parts (``results[k]`` is part ``parts[k]``'s)."""
    ts = list(ts)
    by_part = {(p["part"], p.get("seed")): r for p, r in zip(parts, results, strict=True)}
    base = by_part[("base", None)]
    plain = [by_part[key] for key in sorted(k for k in by_part if k[0] == "plain")]
    inoc = [by_part[key] for key in sorted(k for k in by_part if k[0] == "inoculated")]
    dirs = [r["directions"] for r in plain]
    ino = {
        "plain": [d["scans"]["adapter"] for d in dirs],  # the direction scan's "adapter" scan: not made twice
        "inoculated": [r["scan"] for r in inoc],
        "plain_in_inoculated_context": [r["inoculated_context"] for r in plain],
    }
    crit = {k: [critical_magnitude(ts, s["broad_misalignment"], level) for s in v] for k, v in ino.items()}
    crit["persona"] = [d["t_star"]["persona"] for d in dirs]
    crit["random"] = [c for d in dirs for c in d["t_star"]["random"]]
    common = {
        "module": base["module"],
        "layer": base["layer"],
        "r_max_initial": base["r_max"],
        "level": level,
        "vector_method": VECTOR_METHOD,
        "cosine_persona_plain_adapter": base["cosine_persona_plain_adapter"],
        # how much of the inoculated fine-tune is its own seed's plain fine-tune (shared init and batches)
        "cosine_inoculated_plain": [r["cosine_plain"] for r in inoc if "cosine_plain" in r],
        "cosine_inoculated_plain_next_seed": [
            r["cosine_plain_next_seed"] for r in inoc if "cosine_plain_next_seed" in r
        ],
        "from_base": {
            "persona": base["common_persona"],
            "plain_adapter": [r["common_plain_adapter"] for r in plain],
            "random": [c for r in plain for c in r["common_random"]],
        },
        "from_inoculated": {
            "persona": [r["common_persona"] for r in inoc],
            "plain_adapter": [r["common_plain_adapter"] for r in inoc if "common_plain_adapter" in r],
            "plain_adapter_next_seed": [
                r["common_plain_adapter_next_seed"] for r in inoc if "common_plain_adapter_next_seed" in r
            ],
        },
    }
    return {
        "module": base["module"],
        "layer": base["layer"],
        "directions": dirs,
        "inoculation": ino,
        "summary": inoculation_summary(ino, level=level),
        "crit": crit,
        "persona_vector_norm": base["vector_norms"][READOUT_METHOD],
        "level": level,
        "t": ts,
        "position": {**base["position"], "vector_method": READOUT_METHOD},
        "common": common,
        "persona_vector": {
            "method": VECTOR_METHOD,
            "readout_method": READOUT_METHOD,
            "layer": base["layer"],
            "lexical_cosine": base["lexical_cosine"],
            "norm": base["vector_norms"],
        },
    }


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
    the persona vectors' lexical cosines. The parts (:func:`scan_parts`) run one after another here."""
    layer = layer_of(single_lora_delta(plain[0])[0])
    vectors = layer_vectors(org, layer, n=vector_docs, seed=seed)
    parts = scan_parts(len(plain), len(inoc))
    settings = dict(vectors=vectors, n_random=n_random, seed=seed, level=level, vector_docs=vector_docs)
    results = [
        scan_part(org, plain, inoc, part, ts, **settings)
        for part in track(parts, "scans", unit="parts", enabled=progress)
    ]
    return assemble_scans(parts, results, ts, level=level)


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

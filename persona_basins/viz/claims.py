"""The essay's claims and what a run says about each: the verdict panel at the top of the report.

Every verdict is read from the keys the studies write (``data/study.schema.json``); none is decided here.
Emergent misalignment's is ``em_verdict`` (:func:`persona_basins.measure.em_verdicts.em_verdict`); for a
run written before it was stored, the same function computes it from the stored per-seed excess. A claim
whose numbers are missing from a run is left out; one without a verdict rule says so.
"""

from __future__ import annotations

import math

CONFIRMED, REFUTED, UNDECIDED, WITHHELD, NO_VERDICT = (
    "confirmed",
    "refuted",
    "undecided",
    "withheld",
    "no verdict",
)
VERDICTS = (CONFIRMED, REFUTED, UNDECIDED, WITHHELD, NO_VERDICT)
EIGENFORM_ANSWERS = {"yes": CONFIRMED, "no": REFUTED, "undecided": UNDECIDED}


def _at(obj, dotted: str):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or obj.get(part) is None:
            return None
        obj = obj[part]
    return obj


def _find(run: dict, *keys: str):
    """``(value, "file -> key")`` of the first key present (study.json first); else ``(None, None)``."""
    for name in ("study", "metrics"):
        for key in keys:
            value = _at(run.get(name), key)
            if value is not None:
                return value, f"{name}.json \u2192 {key}"
    return None, None


def _num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def interval_text(stat: dict, digits: int = 3) -> str:
    """``mean [low, high]`` (or the mean alone), with the interval's method as the data name it."""
    if not isinstance(stat, dict) or not _num(stat.get("mean", stat.get("geometric_mean"))):
        return "\u2014"
    mean = stat.get("mean", stat.get("geometric_mean"))
    text = f"{mean:.{digits}f}"
    if _num(stat.get("ci_low")) and _num(stat.get("ci_high")):
        text += f" [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"
        method = stat.get("method") or stat.get("interval")
        text += f" ({method})" if method else " (interval method not recorded)"
    return text


def _claim(cid, claim, verdict, number, k_of_n, why, section, source) -> dict:
    return {
        "id": cid,
        "claim": claim,
        "verdict": verdict,
        "number": number,
        "k_of_n": k_of_n,
        "why": why,
        "section": section,
        "source": source,
    }


def _em_verdict(run: dict, stat) -> tuple[dict | None, str | None]:
    """The run's stored EM verdict and where it is; for a run written before the verdict was stored, the
    same measure function (:mod:`persona_basins.measure.em_verdicts`) on its stored per-seed excess (or its
    stored count)."""
    from ..measure.em_verdicts import em_verdict, share_verdict

    stored, source = _find(run, "emergent_misalignment.em_verdict", "em_verdict")
    if isinstance(stored, dict) and isinstance(stored.get("verdict"), str):
        return stored, source
    if not isinstance(stat, dict):
        return None, None
    threshold = stat["threshold"] if _num(stat.get("threshold")) else None
    if isinstance(stat.get("per_seed"), list) and threshold is not None:
        return em_verdict(stat["per_seed"], threshold=threshold), None
    if _num(stat.get("k_above")) and _num(stat.get("n")):
        k, n = int(stat["k_above"]), int(stat["n"])
        verdict, reason, _ = share_verdict(k, n)
        return {"verdict": verdict, "reason": reason, "k": k, "n": n, "threshold": threshold}, None
    return None, None


def em_claim(run: dict) -> dict | None:
    stat, source = _find(
        run,
        "emergent_misalignment.excess_over_base.broad_misalignment.plain",
        "excess_over_base.broad_misalignment.plain",
    )
    verdict, verdict_source = _em_verdict(run, stat)
    if verdict is None:
        return None
    threshold = verdict.get("threshold")
    bar = f" \u2265 {threshold:.2f}" if _num(threshold) else " above the threshold"
    computed = "" if verdict_source else " (computed from the stored seeds: the run stores no verdict)"
    return _claim(
        "em",
        "A narrow rank-1 fine-tune (insecure code) makes the model broadly misaligned",
        verdict["verdict"],
        "broad misalignment over the base " + (interval_text(stat) if stat else "\u2014"),
        f"{verdict['k']} of {verdict['n']} seeds{bar}",
        (verdict.get("reason") or "the study's verdict") + computed,
        "sec-broad_misalignment",
        verdict_source or source,
    )


def inoculation_claim(run: dict) -> dict | None:
    ino, source = _find(run, "inoculation")
    if not isinstance(ino, dict) or not isinstance(ino.get("verdict"), str):
        return None
    by_direction = ino.get("verdict_by_direction") or {}
    parts = [f"{name.replace('_', ' ')}: {v}" for name, v in by_direction.items()]
    if ino.get("verdict_conditional"):
        parts.append(f"conditional on well-formed answers: {ino['verdict_conditional']}")
    common = _at(ino, "widening_common.plain_adapter") or {}
    exact = common.get("exact")
    number, k_of_n = "r*(inoculated) / r*(base): not measured", ""
    if isinstance(exact, dict):
        number = "r*(inoculated) / r*(base) " + interval_text(exact)
    elif common:
        bounds = [b for b in common.get("censored_above_base_start") or [] if _num(b)]
        never = f", never crossed by r = {max(bounds):.2f}" if bounds else ""
        number = f"r*(inoculated) / r*(base): censored{never} ({common.get('n_exact', 0)} exact)"
    if _num(common.get("k_above_1")) and _num(common.get("n")):
        k_of_n = f"{common['k_above_1']} of {common['n']} seeds widen (ratio > 1)"
    narrow, _ = _find(
        run,
        "emergent_misalignment.excess_over_base.broad_misalignment.inoculated",
        "excess_over_base.broad_misalignment.inoculated",
    )
    if isinstance(narrow, dict) and _num(narrow.get("k_above")) and _num(narrow.get("n")):
        parts.append(f"inoculated fine-tunes broadly misaligned: {narrow['k_above']} of {narrow['n']} seeds")
    return _claim(
        "inoculation",
        "Inoculation keeps it narrow: it widens the aligned basin without moving the point",
        ino["verdict"],
        number,
        k_of_n,
        "; ".join(parts) or "the study's verdict",
        "sec-critical",
        source + ".verdict",
    )


def _peak_verdict(value) -> tuple[str | None, str]:
    """A recorded peak verdict (a string, or ``{verdict, supports}``) as (verdict, k of n)."""
    if isinstance(value, str):
        return value, ""
    if isinstance(value, dict) and isinstance(value.get("verdict"), str):
        return value["verdict"], f"{value['supports']} support" if value.get("supports") else ""
    return None, ""


def llc_claim(run: dict) -> dict | None:
    claim = "The LLC peaks at the basin boundary"
    path, source = _find(run, "llc_along_path")
    if isinstance(path, dict) and isinstance(path.get("mean"), list):
        means = path["mean"]
        kept = sum(_num(v) for v in means)
        verdict, k_of_n = _peak_verdict(path.get("verdict"))
        counted = f"{kept} of {len(means)} points pass the gates"
        if verdict is None and kept == 0:
            why = path.get("reason") or "every point failed the convergence gates"
            return _claim("llc", claim, WITHHELD, "no λ̂ passed the gates", counted, why, "sec-llc", source)
        if verdict is None:
            verdict, why = UNDECIDED, "the run records no peak verdict; see the curve against t*"
        else:
            why = path.get("reason") or "the study's peak verdict"
        peak = path.get("t_argmax")
        number = f"λ̂ peaks at t = {peak:.2f}" if _num(peak) else "no peak located"
        return _claim("llc", claim, verdict, number, k_of_n or counted, why, "sec-llc", source)
    verdicts = _at(run.get("metrics"), "verdicts")
    if isinstance(verdicts, dict) and verdicts:
        key = "plain/all/self_kl" if "plain/all/self_kl" in verdicts else next(iter(verdicts))
        verdict, k_of_n = _peak_verdict(verdicts[key])
        if verdict is None:
            return None
        curves = ((run.get("metrics") or {}).get("curves") or {}).get(key) or []
        values = [v for seed in curves for v in (seed.get("llc") or [])]
        if values and not any(_num(v) for v in values):
            reasons = sorted({r for seed in curves for rs in seed.get("reasons") or [] for r in rs or []})
            why = "every point withheld: " + ("; ".join(reasons) or "the convergence gates failed")
            return _claim("llc", claim, WITHHELD, "no λ̂ passed the gates", k_of_n, why, "sec-llc-path", key)
        why = (verdicts[key].get("statistic") if isinstance(verdicts[key], dict) else None) or ""
        band = verdicts[key].get("band") if isinstance(verdicts[key], dict) else None
        number = f"band t \u2208 [{band[0]:.2f}, {band[1]:.2f}] ({key})" if band else key
        return _claim(
            "llc", claim, verdict, number, k_of_n, why, "sec-llc-path", f"metrics.json \u2192 verdicts.{key}"
        )
    return None


def overlap_claim(run: dict) -> dict | None:
    zone, source = _find(run, "overlap_fraction")
    if not isinstance(zone, dict) or not _num(zone.get("mean")):
        return None
    number = "overlap volume " + interval_text(zone)
    routine = zone.get("routine_share_built_in", zone.get("routine_share"))
    if _num(routine):
        number += f" vs {routine:.2f} built in by routine requests"
    probing, _ = _find(run, "probing")
    parts = []
    for label, key in (
        ("oracle", "oracle"),
        ("other seed", "out_of_sample.other_seed"),
        ("persona vector", "out_of_sample.persona_vector"),
        ("random", "random"),
    ):
        median = _at(probing, f"{key}.median_reached")
        if _num(median):
            parts.append(f"{label} {median:g}")
    why = "descriptive: the study measures the zone and the probes but states no test for this claim"
    if parts:
        why = "probes for 95% power (median): " + ", ".join(parts) + "; " + why
    verdict = zone["verdict"] if isinstance(zone.get("verdict"), str) else NO_VERDICT
    k_of_n = f"n = {zone['n']} seeds" if _num(zone.get("n")) else ""
    return _claim(
        "overlap",
        "Aligned and misaligned states overlap in behaviour; probes near the boundary tell them apart",
        verdict,
        number,
        k_of_n,
        why,
        "sec-overlap",
        source,
    )


def eigenform_claim(run: dict) -> dict | None:
    eig, source = _find(run, "eigenform")
    if not isinstance(eig, dict) and (run.get("kind") == "eigenform"):
        eig, source = run.get("metrics"), "metrics.json"
    verdict = _at(eig, "verdict")
    if not isinstance(verdict, dict) or not isinstance(verdict.get("answer"), str):
        return None
    rate = eig.get("return_rate")
    number = "return rate " + interval_text(rate) if isinstance(rate, dict) else "return rate not measured"
    if verdict.get("closest"):
        number += f" (closest process: {verdict['closest']})"
    k_of_n = f"n = {rate['n']} seeds" if isinstance(rate, dict) and _num(rate.get("n")) else ""
    return _claim(
        "eigenform",
        "A wake \u2192 perceive \u2192 act \u2192 sleep cycle brings the persona back (eigenform identity)",
        EIGENFORM_ANSWERS.get(verdict["answer"], UNDECIDED),
        number,
        k_of_n,
        verdict.get("reason") or "",
        "sec-eigenform",
        source + ".verdict",
    )


CLAIMS = (em_claim, inoculation_claim, llc_claim, overlap_claim, eigenform_claim)


def claims(run: dict) -> list[dict]:
    """The claims a run (as :func:`persona_basins.viz.runs.load_run` reads it) has numbers for, in the
    essay's order."""
    return [c for c in (make(run) for make in CLAIMS) if c is not None]

"""The LLC at many weights: along a weight path ``w0 + t * delta`` and over training checkpoints, the
critical points of an LLC curve (developmental stage boundaries), and the two verdicts on such curves: does
the LLC peak at the behavioural boundary (:func:`peak_at_boundary_verdict`), and does it rise before, with or
after the behaviour over a fine-tune (:func:`jump_order_verdict`). Weight edits go through
:mod:`persona_basins.models.edits` (one home for ``w0 + t * delta`` and its exact restore)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UserError
from ...models.edits import edited
from ...progress import track
from .losses import self_kl_loss_fn
from .sampler import LLCResult, estimate_llc

__all__ = [
    "llc_along_path",
    "llc_over_checkpoints",
    "critical_points",
    "crossing_interval",
    "refine_grid",
    "peak_at_boundary_verdict",
    "half_rise_step",
    "jump_order_verdict",
]


def llc_over_checkpoints(
    checkpoints, loss_fn, data, *, n: int, load: Callable | None = None, progress: bool = False, **llc_kwargs
) -> list[tuple[Any, LLCResult]]:
    """LLC at each checkpoint of a training trajectory.

    ``checkpoints``: models, folders (loaded with ``load`` or ``AutoModelForCausalLM.from_pretrained``) or
    ``(step, model_or_folder)`` pairs. ``llc_kwargs`` go to :func:`estimate_llc` (``config=``, ``restrict=``,
    sampler keywords). Returns ``[(step, LLCResult)]`` (step = position if not given).
    """
    items = list(checkpoints)
    if not items:
        raise UserError("no checkpoints given")
    if load is None:

        def load(p):
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(str(p)).eval()

    out = []
    for i, item in enumerate(track(items, "llc: checkpoints", unit="checkpoints", enabled=progress)):
        step, ck = item if isinstance(item, tuple) else (i, item)
        model = load(ck) if isinstance(ck, str | Path) else ck
        out.append((step, estimate_llc(model, loss_fn, data, n=n, **llc_kwargs)))
    return out


def llc_along_path(
    model,
    delta: dict,
    ts,
    loss_fn: Callable | None = None,
    *,
    loss_fn_factory=None,
    data=None,
    n: int,
    origin: dict | None = None,
    attention_mask=None,
    pad_token_id=None,
    kl_direction: str = "forward",
    **llc_kwargs,
) -> list[dict]:
    """LLC at ``w0 + t * delta`` for each ``t`` in ``ts``.

    ``w0`` is the model's current weights (or ``origin`` for the named tensors); ``delta`` maps parameter
    names to tensors (for a LoRA adapter scaled by ``t``: :func:`persona_basins.models.edits.lora_b_path`).
    The loss at each point is, in order of precedence: ``loss_fn_factory(model_at_point)`` (returning
    ``loss_fn`` or ``(loss_fn, data)``); ``loss_fn`` (a fixed loss: NOT minimised at the point, so SGLD drifts
    downhill and the estimate is meaningless unless the point is a minimum); by default the self-KL loss
    (:func:`self_kl_loss_fn`, ``kl_direction`` "forward" or "reverse") on ``data`` = input_ids, which is
    minimised (=0) at every point. The model's
    weights are restored exactly afterwards. ``llc_kwargs`` go to :func:`estimate_llc`.
    Returns ``[{"t", "llc", "llc_std", "loss", "result"}]`` (``llc``, ``llc_std``: None where withheld).
    """
    out = []
    for t in ts:
        with edited(model, delta, float(t), origin=origin):
            if loss_fn_factory is not None:
                made = loss_fn_factory(model)
                lf, dat = made if isinstance(made, tuple) else (made, data)
                which = getattr(lf, "llc_loss_name", "factory")
            elif loss_fn is not None:
                lf, dat, which = loss_fn, data, "task (fixed loss; the point need not be a minimum)"
            else:
                if data is None:
                    raise UserError("llc_along_path needs data (input_ids for the default self-KL loss)")
                lf, dat = self_kl_loss_fn(
                    model,
                    data,
                    attention_mask=attention_mask,
                    pad_token_id=pad_token_id,
                    direction=kl_direction,
                )
                which = lf.llc_loss_name
            res = estimate_llc(model, lf, dat, n=n, **llc_kwargs)
        res.diagnostics["path_t"] = float(t)
        res.diagnostics["loss"] = which
        # withheld (gates failed): no number, the result keeps the diagnostics and the reasons
        llc_std = res.std if res.converged else None
        out.append({"t": float(t), "llc": res.mean, "llc_std": llc_std, "loss": which, "result": res})
    return out


def critical_points(xs, ys, sigma: float = 1.0) -> dict:
    """Critical points of the Gaussian-smoothed curve ``ys(xs)`` (smoothing over checkpoint index).

    Returns ``{"smoothed", "slope", "boundaries": [x at each sign change of the slope],
    "kinds": ["max"|"min"]}``, untested: stage boundaries of developmental interpretability (where the LLC
    stops rising or falling; Hoogland et al. 2024, arXiv:2402.02364) need the significance test and the
    smoothing over step values of :func:`persona_basins.measure.llc.stages.stage_boundaries`.
    """
    from scipy.ndimage import gaussian_filter1d

    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if len(xs) != len(ys) or len(xs) == 0:
        raise ValueError("xs and ys must be non-empty and of equal length")
    sm = gaussian_filter1d(ys, sigma, mode="nearest") if sigma > 0 and len(ys) > 2 else ys.copy()
    slope = np.gradient(sm) if len(sm) > 1 else np.zeros_like(sm)
    bounds, kinds = [], []
    for i in range(1, len(slope)):
        a, b = slope[i - 1], slope[i]
        if a > 0 >= b or a < 0 <= b:
            j = i if abs(b) <= abs(a) else i - 1
            if 0 < j < len(xs) - 1 and (not bounds or bounds[-1] != xs[j]):
                bounds.append(float(xs[j]))
                kinds.append("max" if a > 0 else "min")
    return {"smoothed": sm.tolist(), "slope": slope.tolist(), "boundaries": bounds, "kinds": kinds}


# ------------------------------------------------------------------------------------------------------------
# "Does the LLC peak at the behavioural boundary?": bands, grid refinement and the verdict over seeds


def crossing_interval(ts, values, level: float) -> tuple[float, float] | None:
    """The scan-grid interval ``(t[i-1], t[i])`` in which ``values`` first reach ``level`` from below: where
    this seed's behavioural boundary lies at the scan's resolution. None when the curve never crosses inside
    the grid (it stays below ``level``, or is already at or above it at the first point)."""
    ts = [float(t) for t in ts]
    if len(ts) != len(values) or len(ts) < 2:
        raise ValueError("crossing_interval needs equal-length ts and values, at least 2 points")
    if values[0] >= level:
        return None
    for i in range(1, len(ts)):
        if values[i] >= level:
            return ts[i - 1], ts[i]
    return None


def refine_grid(ts, bands, *, points_per_band: int = 1) -> list[float]:
    """``ts`` with points added so that every band ``(lo, hi)`` (None: skipped) holds at least
    ``points_per_band`` grid points strictly inside it, evenly spaced (a band of zero width gets ``lo``).
    Sorted, without duplicates; the points already there are kept exactly."""
    if points_per_band < 1:
        raise ValueError(f"points_per_band must be >= 1, got {points_per_band}")
    grid = {float(t) for t in ts}
    for band in bands:
        if band is None:
            continue
        lo, hi = float(band[0]), float(band[1])
        if hi <= lo:
            grid.add(lo)
            continue
        if sum(lo < t < hi for t in grid) >= points_per_band:
            continue
        step = (hi - lo) / (points_per_band + 1)
        grid.update(round(lo + k * step, 12) for k in range(1, points_per_band + 1))
    return sorted(grid)


def _separation(a: tuple, b: tuple) -> float:
    """``(λ̂_a - λ̂_b) / sqrt(MCSE_a^2 + MCSE_b^2)`` of two ``(t, λ̂, MCSE)`` points."""
    return (a[1] - b[1]) / max(1e-300, math.hypot(a[2], b[2]))


def _peak_one_seed(ts, ys, ss, band, z: float) -> dict:
    """One seed's answer: ``supports`` / ``contradicts`` / ``undecided`` (with why), or ``excluded`` when the
    seed has no band (it never crosses)."""
    if band is None:
        return {"verdict": "excluded", "band": None, "why": "the seed never crosses the level on its scan"}
    lo, hi = float(band[0]), float(band[1])
    if not lo <= hi:
        raise ValueError(f"a band must be (lo, hi) with lo <= hi, got {band}")
    points = [(t, y, s) for t, y, s in zip(ts, ys, ss)]
    converged = [p for p in points if p[1] is not None and p[2] is not None]
    inside = [p for p in converged if lo <= p[0] <= hi]
    outside = [p for p in converged if not lo <= p[0] <= hi]
    below = [p for p in points if p[0] < lo]
    above = [p for p in points if p[0] > hi]
    out = {"band": [lo, hi], "points_inside": len(inside)}

    def undecided(why: str) -> dict:
        return {**out, "verdict": "undecided", "why": why}

    if not inside:
        return undecided("no converged point inside the band")
    # Against the claim: a converged point outside the band above every point inside it.
    above_all = [q for q in outside if all(_separation(q, p) > z for p in inside)]
    if above_all:
        q = above_all[0]
        why = f"λ̂ at t={q[0]:g} (outside the band) exceeds every point inside it by > {z:g} combined MCSE"
        return {**out, "verdict": "contradicts", "t_max_outside": q[0], "why": why}
    # For the claim: a descent on both sides, read at the grid points next to the band (a withheld neighbour
    # could be where the curve keeps rising), and a point inside above every converged point outside.
    for side, pts in (("below", below), ("above", above)):
        if not pts:
            return undecided(f"the band is at the grid's edge: no grid point {side} it")
        nearest = max(pts) if side == "below" else min(pts)
        if nearest[1] is None or nearest[2] is None:
            return undecided(f"the grid point just {side} the band (t={nearest[0]:g}) is withheld")
    peak = [p for p in inside if all(_separation(p, q) > z for q in outside)]
    if peak:
        why = f"λ̂ at t={peak[0][0]:g} exceeds every converged point on both sides by > {z:g} combined MCSE"
        return {**out, "verdict": "supports", "t_peak": peak[0][0], "why": why}
    return undecided("no point inside the band exceeds both sides by the margin")


def peak_at_boundary_verdict(
    ts,
    curves: list[list[float | None]],
    mcses: list[list[float | None]],
    bands,
    *,
    z: float = 2.0,
    min_seeds: int = 2,
) -> dict:
    """Does the LLC along a path peak inside the behavioural boundary band? A verdict over seeds.

    ``curves[s][i]``: seed ``s``'s λ̂ at ``ts[i]`` (None: withheld by the gates), ``mcses[s][i]`` its MCSE;
    ``bands[s]``: seed ``s``'s own band ``(lo, hi)`` (its crossing interval, :func:`crossing_interval`), or
    None for a seed that never crosses: it is excluded and counted. Per seed, with
    ``d(a, b) = (λ̂_a - λ̂_b) / sqrt(MCSE_a^2 + MCSE_b^2)`` over converged points:

    * **contradicts** — a point outside the band exceeds every converged point inside it by ``d > z`` (a curve
      that keeps rising through the band, a peak elsewhere);
    * **supports** — the band holds a converged point, the grid has points on *both* sides of the band and
      the two next to it are converged, and a point inside exceeds every converged point on both sides by
      ``d > z``;
    * **undecided** — otherwise (noise; a band at the grid's edge; the neighbour beyond the band withheld, as
      when the gates fail above the band on a rising curve; no converged point inside).

    Overall, over the ``n`` seeds that cross: ``confirmed`` if ``n >= min_seeds``, at least 2/3 of them
    support and none contradicts; ``refuted`` if ``n >= min_seeds``, at least 2/3 contradict and none
    supports; else ``undecided``. Error rate: on a curve with no interior peak and Gaussian noise of the given
    MCSE, a seed supports with probability at most ``m Φ(-z)`` (m converged points inside its band: the point
    must beat its neighbour by ``z`` combined MCSE), so ``confirmed`` has probability at most
    ``P(Binomial(n, m Φ(-z)) >= ceil(2n/3))``, returned as ``false_confirm_bound``.
    """
    from scipy import stats

    if len(bands) != len(curves) or len(mcses) != len(curves):
        raise ValueError("peak_at_boundary_verdict needs one band (or None) and one MCSE list per curve")
    ts = [float(t) for t in ts]
    per_seed = [_peak_one_seed(ts, ys, ss, band, z) for ys, ss, band in zip(curves, mcses, bands)]
    counted = [p for p in per_seed if p["verdict"] != "excluded"]
    n = len(counted)
    k_sup = sum(p["verdict"] == "supports" for p in counted)
    k_con = sum(p["verdict"] == "contradicts" for p in counted)
    need = max(1, -(-2 * n // 3))
    verdict = "undecided"
    if n >= min_seeds and k_sup >= need and k_con == 0:
        verdict = "confirmed"
    elif n >= min_seeds and k_con >= need and k_sup == 0:
        verdict = "refuted"
    m_inside = max((p.get("points_inside", 0) for p in counted), default=0)
    p_seed = min(1.0, m_inside * float(stats.norm.sf(z)))
    bound = float(stats.binom.sf(need - 1, n, p_seed)) if n >= min_seeds else 0.0
    return {
        "verdict": verdict,
        "supports": f"{k_sup} of {n} seeds",
        "contradicts": f"{k_con} of {n} seeds",
        "seeds_crossing": n,
        "seeds_never_crossing": len(per_seed) - n,
        "min_seeds": min_seeds,
        "z": z,
        "false_confirm_bound": bound,
        "per_seed": per_seed,
        "statistic": "per seed (its own crossing band): a point inside above every converged point on both "
        "sides, the grid points next to the band converged (supports), or a point outside above every "
        "point inside (contradicts), by > z combined MCSE; overall >= 2/3 of the crossing seeds one way and "
        "none the other, at least min_seeds of them",
    }


# ------------------------------------------------------------------------------------------------------------
# "Does the LLC rise before, with or after the behaviour?" over the checkpoints of a fine-tune


def half_rise_step(steps, values) -> float | None:
    """The step at which ``values`` first reach half-way between their first and last level, linearly
    interpolated between the two checkpoints around it (the one jump definition for the LLC and the
    behaviour). None with fewer than two points or when the last level is not above the first."""
    steps = [float(s) for s in steps]
    if len(values) < 2 or not values[-1] > values[0]:
        return None
    half = 0.5 * (values[0] + values[-1])
    for i in range(1, len(values)):
        if values[i] >= half:
            s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
            return s1 if v1 == v0 else s0 + (half - v0) / (v1 - v0) * (s1 - s0)
    return None  # unreachable: the last value is above the half level


def _first_reach(steps, values, half: float) -> float | None:
    """First interpolated step at which ``values`` reach ``half`` (already there at the start: the first
    step)."""
    if values[0] >= half:
        return float(steps[0])
    for i in range(1, len(values)):
        if values[i] >= half:
            s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
            return s0 + (half - v0) / (v1 - v0) * (s1 - s0)
    return None


def jump_order_verdict(
    steps, llc, llc_mcse, behaviour, *, z: float = 2.0, min_behaviour_rise: float = 0.2
) -> dict:
    """Does the LLC rise before, with or after the behaviour? Both curves are read at the same checkpoints
    ``steps`` (the first should be step 0, B = 0); ``llc[i]`` is None where withheld by the gates.

    The jump of either curve is :func:`half_rise_step` (the first interpolated crossing of half-way between
    its start and end levels). The behaviour's crossing falls in one checkpoint interval ``[s_j, s_j+1]``.
    The LLC's crossing is bracketed by the crossings of ``λ̂ ± z MCSE`` of the same half level. **before**:
    the bracket ends at or before ``s_j``; **after**: it starts at or after ``s_j+1``; **with**: it lies
    inside the behaviour's interval (finer order inside one interval would be read off the interpolation,
    not the data); **undecided** otherwise, or when the behaviour rises by less than ``min_behaviour_rise``,
    the LLC's start or end is withheld, it does not rise by more than ``z`` combined MCSE, or a checkpoint
    up to its crossing is withheld.
    """
    steps = [float(s) for s in steps]
    if not (len(steps) == len(llc) == len(llc_mcse) == len(behaviour)) or len(steps) < 2:
        raise ValueError("jump_order_verdict needs steps, llc, llc_mcse and behaviour of one length >= 2")
    if any(b >= a for a, b in zip(steps[1:], steps)):
        raise ValueError("steps must be strictly increasing")
    out = {"llc_jump_step": None, "llc_jump_range": None, "behaviour_jump_step": None}

    def undecided(why: str) -> dict:
        return {**out, "order": "undecided", "why": why}

    if behaviour[-1] - behaviour[0] < min_behaviour_rise:
        return undecided(f"broad misalignment rises by less than {min_behaviour_rise:g}: no behavioural jump")
    beh_jump = half_rise_step(steps, behaviour)
    out["behaviour_jump_step"] = beh_jump
    j = next(i for i in range(1, len(steps)) if steps[i] >= beh_jump) - 1
    out["behaviour_interval"] = [steps[j], steps[j + 1]]
    ok = [v is not None and s is not None for v, s in zip(llc, llc_mcse)]
    if not (ok[0] and ok[-1]):
        return undecided("the LLC at the first or last checkpoint is withheld")
    rise = (llc[-1] - llc[0]) / max(1e-300, math.hypot(llc_mcse[0], llc_mcse[-1]))
    if rise <= z:
        return undecided(f"the LLC does not rise beyond {z:g} combined MCSE ({rise:.1f})")
    half = 0.5 * (llc[0] + llc[-1])
    first_above = next(i for i, v in enumerate(llc) if v is not None and v >= half)
    if not all(ok[: first_above + 1]):
        return undecided("a checkpoint up to the LLC's crossing is withheld")
    out["llc_jump_step"] = half_rise_step(steps, llc)
    upper = [v + z * s if v is not None else None for v, s in zip(llc, llc_mcse)]
    lower = [v - z * s if v is not None else None for v, s in zip(llc, llc_mcse)]
    early = _first_reach(steps[: first_above + 1], upper[: first_above + 1], half)
    # the lower curve may cross only after later withheld points: then the bracket is open to the end
    reach = [i for i, v in enumerate(lower) if v is not None and v >= half]
    late = (
        steps[-1]
        if not reach or not all(ok[: reach[0] + 1])
        else _first_reach(steps[: reach[0] + 1], lower[: reach[0] + 1], half)
    )
    out["llc_jump_range"] = [early, late]
    lo, hi = out["behaviour_interval"]
    if late <= lo:
        return {
            **out,
            "order": "before",
            "why": "the LLC is past half its rise before the behaviour's interval",
        }
    if early >= hi:
        return {
            **out,
            "order": "after",
            "why": "the LLC reaches half its rise after the behaviour's interval",
        }
    if lo <= early and late <= hi:
        return {**out, "order": "with", "why": "the LLC crosses in the same checkpoint interval"}
    return undecided(f"the LLC's crossing is located only within [{early:g}, {late:g}] (MCSE)")

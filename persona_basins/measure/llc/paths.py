"""The LLC at many weights: along a weight path ``w0 + t * delta`` and over training checkpoints, and the
critical points of an LLC curve (developmental stage boundaries). Weight edits go through
:mod:`persona_basins.models.edits` (one home for ``w0 + t * delta`` and its exact restore)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UserError
from ...models.edits import edited
from .losses import self_kl_loss_fn
from .sampler import LLCResult, estimate_llc

__all__ = ["llc_along_path", "llc_over_checkpoints", "critical_points", "peak_at_boundary_verdict"]


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
    it = items
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        it = tqdm(items, desc="checkpoints", leave=False)
    for i, item in enumerate(it):
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
    Returns ``[{"t", "llc", "llc_std", "loss", "result"}]``.
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
        out.append({"t": float(t), "llc": res.mean, "llc_std": res.std, "loss": which, "result": res})
    return out


def critical_points(xs, ys, sigma: float = 1.0) -> dict:
    """Critical points of the Gaussian-smoothed curve ``ys(xs)`` (smoothing over checkpoint index).

    Returns ``{"smoothed", "slope", "boundaries": [x at each sign change of the slope], "kinds": ["max"|"min"]}``:
    the stage boundaries of developmental interpretability (Hoogland et al. 2024) are where the LLC stops
    rising or falling.
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


def peak_at_boundary_verdict(
    ts, curves: list[list[float | None]], mcses: list[list[float | None]], band, *, z: float = 2.0
) -> dict:
    """Does the LLC along a path peak inside the crossing band? A verdict over seeds.

    ``curves[s][i]``: seed ``s``'s λ̂ at ``ts[i]`` (None: withheld by the gates), ``mcses[s][i]`` its MCSE;
    ``band = (lo, hi)``: the t range of the behavioural boundary (e.g. the seeds' t* interval). Per seed, with
    ``d(a, b) = (λ̂_a - λ̂_b) / sqrt(MCSE_a^2 + MCSE_b^2)`` over converged points:

    * **supports** — some point inside the band exceeds every converged point outside it by ``d > z``;
    * **contradicts** — some point outside the band exceeds every converged point inside it by ``d > z``
      (e.g. a curve that keeps rising through the band);
    * **undecided** — neither (noise, withheld points, no converged point in or outside the band).

    Overall (k of n seeds): ``confirmed`` if at least 2/3 of the seeds support and none contradicts,
    ``refuted`` if at least 2/3 contradict and none supports, else ``undecided``.
    """
    lo, hi = float(band[0]), float(band[1])
    if not lo <= hi:
        raise ValueError(f"band must be (lo, hi) with lo <= hi, got {band}")
    ts = [float(t) for t in ts]
    per_seed = []
    for ys, ss in zip(curves, mcses):
        pts = [(t, y, s) for t, y, s in zip(ts, ys, ss) if y is not None and s is not None]
        inside = [p for p in pts if lo <= p[0] <= hi]
        outside = [p for p in pts if not lo <= p[0] <= hi]
        if not inside or not outside:
            per_seed.append({"verdict": "undecided", "why": "no converged point inside or outside the band"})
            continue

        def beats(a, others):
            return all((a[1] - b[1]) / max(1e-300, (a[2] ** 2 + b[2] ** 2) ** 0.5) > z for b in others)

        sup = [p[0] for p in inside if beats(p, outside)]
        con = [p[0] for p in outside if beats(p, inside)]
        if sup and not con:
            per_seed.append(
                {
                    "verdict": "supports",
                    "t_peak": sup[0],
                    "why": f"λ̂ at t={sup[0]:g} exceeds every point outside the band by > {z:g} combined MCSE",
                }
            )
        elif con and not sup:
            per_seed.append(
                {
                    "verdict": "contradicts",
                    "t_max_outside": con[0],
                    "why": f"λ̂ at t={con[0]:g} "
                    f"(outside the band) exceeds every point inside it by > {z:g} combined MCSE",
                }
            )
        else:
            per_seed.append(
                {"verdict": "undecided", "why": "no point separates from the others by the margin"}
            )
    n = len(per_seed)
    k_sup = sum(p["verdict"] == "supports" for p in per_seed)
    k_con = sum(p["verdict"] == "contradicts" for p in per_seed)
    need = -(-2 * n // 3) if n else 1
    if n and k_sup >= need and k_con == 0:
        verdict = "confirmed"
    elif n and k_con >= need and k_sup == 0:
        verdict = "refuted"
    else:
        verdict = "undecided"
    return {
        "verdict": verdict,
        "supports": f"{k_sup} of {n} seeds",
        "contradicts": f"{k_con} of {n} seeds",
        "band": [lo, hi],
        "z": z,
        "per_seed": per_seed,
        "statistic": "per seed: is there a point inside the band above every point outside it (supports), or "
        "outside above every point inside (contradicts), by > z combined MCSE; overall >= 2/3 "
        "of seeds one way and none the other",
    }

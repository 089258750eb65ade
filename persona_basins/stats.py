"""Summary statistics shared by every measurement: mean with a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st


def ci95(values: Sequence[float]) -> dict:
    """Mean and two-sided 95% Student-t interval over independent seeds.

    Returns ``{"mean", "ci_low", "ci_high", "per_seed"}``: the result shape used in every ``metrics.json``.
    With a single value the interval collapses to the value (and says so with n=1).
    """
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        raise ValueError("ci95 needs at least one value")
    mean = float(x.mean())
    if x.size == 1 or not np.all(np.isfinite(x)):
        half = 0.0 if x.size == 1 else math.nan
    else:
        sem = float(x.std(ddof=1) / math.sqrt(x.size))
        half = float(_st.t.ppf(0.975, x.size - 1) * sem)
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": int(x.size),
        "per_seed": [float(v) for v in x],
    }


def rate_interval(
    values: Sequence[float],
    *,
    threshold: float | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
    seed: int = 0,
    n_resamples: int = 2000,
) -> dict:
    """Mean of a bounded quantity (a rate, a share) over seeds with a 95% interval that stays in range.

    The interval is the seeded percentile bootstrap over seeds (``scipy.stats.bootstrap``, resampling the
    seeds): it lies inside ``[min, max]`` of the per-seed values, so inside ``[lo, hi]``, also for bounded,
    bimodal values where a Student-t interval leaves the range. One seed gives no interval (``None``), never a
    zero-width one. Beside the mean: ``per_seed`` and, with ``threshold``, ``k_above`` = how many seeds
    reach it ("k of n seeds"). Same keys as :func:`ci95` plus ``method``.
    """
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        raise ValueError("rate_interval needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("rate_interval got a NaN or infinite value")
    if np.any(x < lo - 1e-6) or np.any(x > hi + 1e-6):
        raise ValueError(f"rate_interval: values outside [{lo:g}, {hi:g}]")
    x = np.clip(x, lo, hi)  # float rounding of exact masses (1 + 1e-9) is not a value out of range
    mean = float(x.mean())
    out = {
        "mean": mean,
        "ci_low": None,
        "ci_high": None,
        "n": int(x.size),
        "per_seed": [float(v) for v in x],
        "method": "percentile bootstrap over seeds (95%)",
    }
    if x.size > 1:
        if np.all(x == x[0]):
            out["ci_low"] = out["ci_high"] = float(x[0])
        else:
            res = _st.bootstrap(
                (x,),
                np.mean,
                n_resamples=n_resamples,
                confidence_level=0.95,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
            out["ci_low"] = float(min(max(res.confidence_interval.low, lo), mean))
            out["ci_high"] = float(max(min(res.confidence_interval.high, hi), mean))
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["k_above"] = int(np.sum(x >= threshold))
    return out

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

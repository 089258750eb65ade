"""Stage boundaries of an LLC curve over training checkpoints, each with a significance test.

Developmental interpretability reads the stages of training from the LLC curve: a stage boundary is where
λ̂ stops rising or falling (Hoogland et al. 2024, "Loss landscape geometry reveals stagewise development of
transformers", arXiv:2402.02364, who find stages LM1-LM5 in a small language model; the weight-restricted,
per-component curves are the refined LLC of Wang et al. 2024, arXiv:2410.02984).

:func:`stage_boundaries` smooths the curve with a Gaussian kernel over the *step values* (so unevenly spaced
checkpoints weigh by distance in steps, not by index), takes the slope of the smoothed curve in steps, and
marks a boundary where that slope changes sign only when the change exceeds ``z`` times its standard error.
The smoothed slope is a linear function of the estimates, so the standard error of a slope change follows
exactly from each estimate's Monte Carlo standard error (MCSE, estimates at different checkpoints being
independent). A sign change within the noise is reported as a candidate, not a boundary.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

Z_BOUNDARY = 2.0  # a slope change must exceed at least ~2 combined MCSE of the estimates it is made of


def _smoother(steps: np.ndarray, bandwidth: float) -> np.ndarray:
    """Row-normalised Gaussian kernel weights ``W[i, j]`` in step units: ``smoothed = W @ values``."""
    gap = (steps[:, None] - steps[None, :]) / bandwidth
    weights = np.exp(-0.5 * gap**2)
    return weights / weights.sum(1, keepdims=True)


def _slope_operator(steps: np.ndarray) -> np.ndarray:
    """``D`` with ``D @ y`` = ``np.gradient(y, steps)`` (second order inside, one-sided at the ends)."""
    n = len(steps)
    return np.stack([np.gradient(np.eye(n)[:, j], steps) for j in range(n)], axis=1)


def stage_boundaries(
    steps, values, mcse=None, *, bandwidth: float | None = None, z: float | None = None
) -> dict:
    """Stage boundaries of ``values`` (λ̂ per checkpoint) over ``steps``, tested against ``mcse``.

    ``bandwidth``: the Gaussian kernel's width in steps (default: the median spacing of ``steps``; 0: no
    smoothing). A *candidate* is an interior checkpoint where the smoothed slope changes sign; it is a
    boundary when ``|slope change| > z * se`` (the smoothed slope at the next checkpoint minus at the
    previous one), ``se`` from the MCSE of every estimate the change is built from. ``z``: default the
    two-sided 5% level Bonferroni-corrected over the interior checkpoints (2.8 for 12 checkpoints; at least
    :data:`Z_BOUNDARY`), so a flat curve shows a false boundary at most 5% of the time. Without ``mcse`` (or
    with one missing) nothing can be tested and no boundary is marked. Returns ``{smoothed, slope,
    boundaries, kinds, candidates, bandwidth, z, test}``; each candidate is ``{step, kind ("max"|"min"),
    slope_change, se, significant}``.
    """
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError("steps and values must be non-empty 1-d sequences of equal length")
    if len(x) > 1 and np.any(np.diff(x) <= 0):
        raise ValueError("steps must be strictly increasing")
    if z is None:
        z = max(Z_BOUNDARY, float(_st.norm.ppf(1 - 0.025 / max(1, len(x) - 2))))
    spacing = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
    width = spacing if bandwidth is None else float(bandwidth)
    smooth = _smoother(x, width) if width > 0 and len(x) > 2 else np.eye(len(x))
    slope_of = _slope_operator(x) @ smooth if len(x) > 1 else np.zeros((1, 1))
    smoothed, slope = smooth @ y, slope_of @ y
    sigma = None
    if mcse is not None and all(m is not None for m in mcse):
        sigma = np.asarray(mcse, dtype=np.float64)
    candidates, boundaries, kinds = [], [], []
    for i in range(1, len(slope)):
        left, right = slope[i - 1], slope[i]
        if not (left > 0 >= right or left < 0 <= right):
            continue
        at = i if abs(right) <= abs(left) else i - 1  # the checkpoint nearer the zero of the slope
        if not 0 < at < len(x) - 1 or (candidates and candidates[-1]["step"] == float(x[at])):
            continue
        # the change of slope across the candidate: from the checkpoint before it to the one after it
        change = float(slope[at + 1] - slope[at - 1])
        weights = slope_of[at + 1] - slope_of[at - 1]
        se = float(np.sqrt(np.sum((weights * sigma) ** 2))) if sigma is not None else None
        significant = se is not None and abs(change) > z * se
        kind = "max" if left > 0 else "min"
        candidates.append(
            {"step": float(x[at]), "kind": kind, "slope_change": change, "se": se, "significant": significant}
        )
        if significant:
            boundaries.append(float(x[at]))
            kinds.append(kind)
    return {
        "smoothed": smoothed.tolist(),
        "slope": slope.tolist(),
        "boundaries": boundaries,
        "kinds": kinds,
        "candidates": candidates,
        "bandwidth": width,
        "z": z,
        "test": "a sign change of the smoothed slope (Gaussian kernel over steps, bandwidth "
        f"{width:g}) whose size (slope after minus before the checkpoint) exceeds {z:g} standard errors "
        "from the estimates' MCSE"
        + ("" if sigma is not None else "; no MCSE given: nothing tested, no boundary marked"),
    }


__all__ = ["Z_BOUNDARY", "stage_boundaries"]

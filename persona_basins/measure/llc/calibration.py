"""Calibration of the sampler: a step size x n_beta grid of short runs, scored, with a recommended setting.

Pure measurement: the figure is drawn by :mod:`persona_basins.viz.llc_figures` and the run folder is written by
:mod:`persona_basins.studies.llc`.
"""

from __future__ import annotations

import math

import numpy as np

from .config import SamplerConfig, config_from_kwargs, default_nbeta
from .sampler import LLCDivergenceError, estimate_llc

__all__ = ["calibrate"]


def _stationary(llc_trace: np.ndarray) -> bool:
    q = max(1, llc_trace.shape[1] // 4)
    a, b = llc_trace[:, q : 2 * q].mean(), llc_trace[:, -q:].mean()
    spread = llc_trace[:, -q:].std() / math.sqrt(max(1, llc_trace[:, -q:].size / 10)) + 1e-12
    return abs(b - a) <= max(0.1 * abs(b), 3 * spread)


def calibrate(model, loss_fn, data, *, n: int, step_sizes=(1e-5, 1e-4, 1e-3), nbetas=None,
              config: SamplerConfig | None = None, restrict=None, progress: bool = False, **sampler_kwargs) -> dict:
    """Sweep step size x n_beta with the other settings of ``config`` (default: 2 chains x 100 draws, no
    burn-in, localisation 100) and recommend a setting. Returns ``{"grid", "recommended", "rule",
    "default_nbeta", "traces": {(nbeta, step_size): chains x draws}}``.

    Rule: drop diverged, negative and non-stationary settings (last-quarter mean differs from the
    second-quarter mean); among the rest take the largest step size whose MALA acceptance is >= 0.9 (else the
    highest acceptance), preferring the default n_beta on ties.
    """
    base = config if config is not None else SamplerConfig(num_chains=2, num_draws=100, num_burnin=0)
    base = config_from_kwargs(base, sampler_kwargs)
    nb0 = default_nbeta(n)
    nbetas = [nb0] if nbetas is None else [float(b) for b in nbetas]
    grid = []
    traces = {}
    for nbv in nbetas:
        for eps in step_sizes:
            row = {"step_size": float(eps), "nbeta": nbv}
            cfg = base.replace(nbeta=nbv, step_size=float(eps))
            try:
                res = estimate_llc(model, loss_fn, data, n=n, config=cfg, restrict=restrict, progress=progress)
            except LLCDivergenceError as e:
                row.update(diverged=True, error=str(e), llc=None)
                grid.append(row)
                continue
            d = res.diagnostics
            row.update(diverged=False, llc=res.mean, llc_std=res.std, mala_acceptance=d["mala_acceptance"],
                       rhat=d["rhat"], frac_negative_draws=d["frac_negative_draws"],
                       stationary=_stationary(res.llc_trace))
            traces[(nbv, float(eps))] = res.llc_trace
            grid.append(row)
    ok = [r for r in grid if not r["diverged"] and r["llc"] > 0 and r["stationary"]]
    rec = None
    if ok:
        good = [r for r in ok if (r["mala_acceptance"] or 0) >= 0.9]
        if good:
            rec = max(good, key=lambda r: (r["step_size"], -abs(math.log(r["nbeta"] / nb0))))
        else:
            rec = max(ok, key=lambda r: (r["mala_acceptance"] or 0, r["step_size"]))
    return {"grid": grid, "recommended": rec, "default_nbeta": nb0, "traces": traces,
            "rule": "largest non-diverged, positive, stationary step size with MALA acceptance >= 0.9"}

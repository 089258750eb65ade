"""Calibration of the sampler: a step size x n_beta (x localisation) grid of short runs, each scored by the
equilibrium gates, with a recommended setting chosen by a fixed rule.

Pure measurement: the figures are drawn by :mod:`persona_basins.viz.llc_figures` and the run folder is written
by :mod:`persona_basins.studies.llc`.
"""

from __future__ import annotations

import dataclasses
import math

from .config import SamplerConfig, config_from_kwargs, default_nbeta
from .diagnostics import GateConfig
from .sampler import LLCDivergenceError, estimate_llc

__all__ = ["calibrate", "CALIBRATION_GATES", "CALIBRATION_RULE"]

# Short calibration chains cannot reach the ESS >= 400 of a reported estimate; every other threshold is the
# same. The recommended setting is then run at full length and must pass the full gates.
CALIBRATION_GATES = GateConfig(ess_min=100.0)
CALIBRATION_RULE = (
    "drop settings that diverge or fail the equilibrium gates (R-hat <= 1.01, bulk and tail "
    "ESS >= 100, no drift of the λ trace or of the distance from w* beyond 3 MCSE, λ̂ > 0), whose "
    "MALA acceptance is below 0.9 (the discretisation bias of a larger step is not caught by the "
    "other gates), or whose signal is weak (λ̂ < 4 MCSE); among the rest take the "
    "largest step size (fastest mixing), then the n_beta closest to n / log n, then the smallest "
    "localisation (least pull toward w*)"
)


def calibrate(
    model,
    loss_fn,
    data,
    *,
    n: int,
    step_sizes=(1e-5, 1e-4, 1e-3),
    nbetas=None,
    localizations=None,
    config: SamplerConfig | None = None,
    restrict=None,
    gates: GateConfig = CALIBRATION_GATES,
    signal: float = 4.0,
    mala_min: float = 0.9,
    progress: bool = False,
    **sampler_kwargs,
) -> dict:
    """Sweep step size x n_beta x localisation with the other settings of ``config`` (default: 4 chains x
    200 draws after 50 burn-in) and recommend a setting by :data:`CALIBRATION_RULE`.

    Returns ``{"grid": [row per setting], "recommended": row or None, "config": the recommended
    SamplerConfig as a dict or None, "rule", "default_nbeta", "traces": {(nbeta, step, gamma): chains x draws}}``.
    """
    base = config if config is not None else SamplerConfig(num_chains=4, num_draws=200, num_burnin=50)
    base = config_from_kwargs(base, sampler_kwargs)
    nb0 = default_nbeta(n)
    nbetas = [base.resolved_nbeta(n)] if nbetas is None else [float(b) for b in nbetas]
    gammas = [base.localization] if localizations is None else [float(g) for g in localizations]
    grid, traces = [], {}
    for g in gammas:
        for nbv in nbetas:
            for eps in step_sizes:
                row = {"step_size": float(eps), "nbeta": nbv, "localization": g}
                cfg = base.replace(nbeta=nbv, step_size=float(eps), localization=g)
                try:
                    res = estimate_llc(
                        model,
                        loss_fn,
                        data,
                        n=n,
                        config=cfg,
                        restrict=restrict,
                        gates=gates,
                        progress=progress,
                    )
                except LLCDivergenceError as e:
                    row.update(diverged=True, error=str(e), llc=None, passed=False, reasons=["diverged"])
                    grid.append(row)
                    continue
                d = res.diagnostics
                strong = math.isfinite(res.mcse) and res.unchecked_mean > signal * res.mcse
                mala = d["mala_acceptance"]
                sane = not math.isfinite(mala) or mala >= mala_min
                reasons = (
                    list(res.reasons)
                    + ([] if strong else [f"weak signal: λ̂ < {signal:g} MCSE"])
                    + ([] if sane else [f"MALA acceptance {mala:.2f} < {mala_min:g}"])
                )
                row.update(
                    diverged=False,
                    llc=res.unchecked_mean,
                    mcse=res.mcse,
                    mala_acceptance=d["mala_acceptance"],
                    rhat=d["rhat"],
                    ess_bulk=d["ess_bulk"],
                    ess_tail=d["ess_tail"],
                    stationarity_z=d["stationarity_z"],
                    distance_z=d["distance_z"],
                    frac_negative_draws=d["frac_negative_draws"],
                    converged=res.converged,
                    passed=res.converged and strong and sane,
                    reasons=reasons,
                )
                traces[(nbv, float(eps), g)] = res.llc_trace
                grid.append(row)
    ok = [r for r in grid if r["passed"]]
    rec = (
        max(ok, key=lambda r: (r["step_size"], -abs(math.log(r["nbeta"] / nb0)), -r["localization"]))
        if ok
        else None
    )
    cfg = (
        base.replace(
            step_size=rec["step_size"], nbeta=rec["nbeta"], localization=rec["localization"]
        ).to_dict()
        if rec
        else None
    )
    return {
        "grid": grid,
        "recommended": rec,
        "config": cfg,
        "default_nbeta": nb0,
        "traces": traces,
        "rule": CALIBRATION_RULE,
        "gates": dataclasses.asdict(gates),
    }

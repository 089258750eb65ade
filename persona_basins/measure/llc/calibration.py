"""Calibration of the sampler: a search over localisation x preconditioning x step size (x n_beta) of short
runs, each scored by the equilibrium gates, with a recommended setting chosen by a fixed rule; and the
localisation sensitivity of an LLC curve (is a curve's answer set by gamma?).

The search (:func:`calibrate`) for each localisation (smallest first) and preconditioner scans the step sizes
from the largest down: a step that diverges, whose MALA acceptance is below the band or whose λ̂ moves when the
step is halved is too large; the first step that is not too large either passes, or fails on mixing only
(R-hat, ESS, drift), in which case its chains are lengthened (x2, x4, x8) before a smaller step is tried (a
smaller step mixes more slowly, so it would not help). Between the largest step that passed (or mixed too
slowly) and the smallest that was too large the step is refined by log-bisection. The search stops after the
first localisation where a setting passes (the rule prefers the least localisation), unless ``exhaustive``.

Pure measurement: the figures are drawn by :mod:`persona_basins.viz.llc_figures` and the run folder is written
by :mod:`persona_basins.studies.llc`.
"""

from __future__ import annotations

import dataclasses
import math

from .config import SamplerConfig, config_from_kwargs, default_nbeta
from .diagnostics import GateConfig
from .sampler import LLCDivergenceError, estimate_llc

__all__ = [
    "calibrate",
    "localization_sensitivity",
    "llc_preset",
    "LLC_PRESETS",
    "CALIBRATION_GATES",
    "CALIBRATION_RULE",
    "DEFAULT_STEP_SIZES",
    "DEFAULT_LOCALIZATION_FACTORS",
    "DEFAULT_PRECONDITIONERS",
    "MALA_MIN",
    "BIAS_TOLERANCE",
    "SENSITIVITY_BOUND",
]

# Short calibration chains cannot reach the ESS >= 400 of a reported estimate; every other threshold is the
# same. The recommended setting is then run at full length and must pass the full gates.
CALIBRATION_GATES = GateConfig(ess_min=100.0)
DEFAULT_STEP_SIZES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
# the localisations tried, as multiples of the config's gamma (100: 100, 300, 1000)
DEFAULT_LOCALIZATION_FACTORS = (1.0, 3.0, 10.0)
DEFAULT_PRECONDITIONERS = ("rmsprop", None)
# The MALA acceptance band and the bias check, from the measured discretisation bias
# (benchmarks/llc_mala_bias.py, docs/LLC.md "Calibration"): against the exact finite-n reference of the
# analytic suite, the bias at a given acceptance depends on the dimension (regular d=4: acceptance 0.81 gave
# +36%; d=10: 0.85 gave +8%, 0.71 +38%), so no one band both keeps the bias small and lets a 10^4-parameter
# model through. The band is a screen against gross discretisation (the gates' 0.5); the bias itself is
# measured by halving the step.
MALA_MIN = 0.5
BIAS_TOLERANCE = 0.05  # largest relative change of λ̂ from ε to ε/2 (about half the bias at ε: bias <~ 10%)
LENGTHEN = (2, 4, 8)  # chain-length factors tried when mixing is the only failure
DRAWS_MARGIN = 1.5  # draws_for_gates: the ESS of a short run is noisy (x1.25 fell short on regular d=10)
REFINEMENTS = 2  # log-bisection steps between the passing step and the too-large one
CALIBRATION_RULE = (
    "drop settings that diverge or fail the equilibrium gates (R-hat <= 1.01, bulk and tail ESS >= 100, no "
    f"drift of the λ trace or of the distance from w* beyond 3 MCSE, λ̂ > 0), whose MALA acceptance is below "
    f"{MALA_MIN:g}, whose λ̂ changes by more than {BIAS_TOLERANCE:.0%} when the step is halved (the "
    "discretisation bias, which the other gates do not catch), or whose signal is weak (λ̂ < 4 MCSE); among "
    "the rest take the smallest localisation (least pull toward w*), then the n_beta closest to n / log n, "
    "then the most effective samples per sampler step (the cheapest), then the largest step size"
)
MIXING_PREFIXES = ("R-hat", "ESS", "λ trace drifts", "distance from w* drifts")
STEP_TOO_LARGE_PREFIXES = ("diverged", "MALA acceptance", "discretisation bias")


def _kind_of_failure(reasons: list[str]) -> str:
    """``"passed"``, ``"too_large"`` (diverged / MALA below the band), ``"mixing"`` (R-hat, ESS, drift
    only) or ``"other"`` (weak signal, λ̂ <= 0, non-finite draws)."""
    if not reasons:
        return "passed"
    if any(r.startswith(STEP_TOO_LARGE_PREFIXES) for r in reasons):
        return "too_large"
    if all(r.startswith(MIXING_PREFIXES) for r in reasons):
        return "mixing"
    return "other"


def setting_label(row: dict) -> str:
    """A setting as text (the key of its trace panel)."""
    pre = row.get("precondition") or "plain"
    return (
        f"γ={row['localization']:g}, {pre}, ε={row['step_size']:.2g}, nβ={row['nbeta']:.3g}, "
        f"{row['num_draws']} draws"
    )


class _Search:
    """One calibration search: runs settings, keeps every row and trace."""

    def __init__(self, model, loss_fn, data, n, base, restrict, gates, signal, mala_min, bias, progress, log):
        self.args = (model, loss_fn, data)
        self.log = log
        self.bias_tolerance = bias
        self.n, self.base, self.restrict, self.gates = n, base, restrict, gates
        self.signal, self.mala_min, self.progress = signal, mala_min, progress
        self.grid: list[dict] = []
        self.traces: dict = {}

    def run(self, eps: float, nbeta: float, gamma: float, pre, factor: int = 1, stage: str = "grid") -> dict:
        cfg = self.base.replace(
            step_size=float(eps),
            nbeta=nbeta,
            localization=gamma,
            precondition=pre,
            num_draws=self.base.num_draws * factor,
            num_burnin=self.base.num_burnin * factor,
        )
        row = {
            "step_size": float(eps),
            "nbeta": nbeta,
            "localization": gamma,
            "precondition": pre,
            "num_draws": cfg.num_draws,
            "num_burnin": cfg.num_burnin,
            "stage": stage,
        }
        model, loss_fn, data = self.args
        try:
            res = estimate_llc(
                model,
                loss_fn,
                data,
                n=self.n,
                config=cfg,
                restrict=self.restrict,
                gates=self.gates,
                progress=self.progress,
            )
        except LLCDivergenceError as e:
            row.update(diverged=True, error=str(e), llc=None, passed=False, reasons=["diverged"])
            row["failure"] = "too_large"
            self.grid.append(row)
            if self.log is not None:
                self.log(f"calibrate: {setting_label(row)} [{stage}]: diverged")
            return row
        d = res.diagnostics
        strong = math.isfinite(res.mcse) and res.unchecked_mean > self.signal * res.mcse
        mala = d["mala_acceptance"]
        sane = not math.isfinite(mala) or mala >= self.mala_min
        reasons = (
            list(res.reasons)
            + ([] if strong else [f"weak signal: λ̂ < {self.signal:g} MCSE"])
            + (
                []
                if sane or mala < self.gates.mala_min
                else [f"MALA acceptance {mala:.2f} < {self.mala_min:g}"]
            )
        )
        steps = cfg.num_chains * (cfg.num_draws + cfg.num_burnin)
        row.update(
            diverged=False,
            llc=res.unchecked_mean,
            mcse=res.mcse,
            mala_acceptance=mala,
            rhat=d["rhat"],
            ess_bulk=d["ess_bulk"],
            ess_tail=d["ess_tail"],
            ess_per_step=min(d["ess_bulk"], d["ess_tail"]) / steps,
            stationarity_z=d["stationarity_z"],
            distance_z=d["distance_z"],
            frac_negative_draws=d["frac_negative_draws"],
            seconds=d["seconds"],
            converged=res.converged,
            passed=not reasons,
            reasons=reasons,
        )
        row["failure"] = _kind_of_failure(reasons)
        self.traces[setting_label(row)] = res.llc_trace
        self.grid.append(row)
        if self.log is not None:
            self.log(f"calibrate: {setting_label(row)} [{stage}]: {row['failure']} ({d['seconds']:.1f} s)")
        return row

    def mixed(self, row: dict, nbeta: float, gamma: float, pre) -> dict:
        """``row``, or when it fails on mixing only, the same step with longer chains (:data:`LENGTHEN`); a
        row that passes is then checked for discretisation bias (:meth:`bias_checked`)."""
        for factor in LENGTHEN:
            if row["failure"] != "mixing":
                break
            row = self.run(row["step_size"], nbeta, gamma, pre, factor, stage=f"lengthened x{factor}")
        if row["failure"] == "passed" and self.bias_tolerance is not None:
            row = self.bias_checked(row, nbeta, gamma, pre, row["num_draws"] // self.base.num_draws)
        return row

    def bias_checked(self, row: dict, nbeta: float, gamma: float, pre, factor: int) -> dict:
        """The step-halving check: SGLD's discretisation bias is linear in the step, so λ̂(ε) - λ̂(ε/2) is
        about half the bias at ε. ε/2 runs as long as ``row`` (its MCSE is larger, never its bias); a relative
        difference above ``bias_tolerance`` marks ``row`` as too large."""
        half = self.run(row["step_size"] / 2, nbeta, gamma, pre, factor, stage="bias check")
        ref = half.get("llc")
        change = None if not ref or half["diverged"] else row["llc"] / ref - 1.0
        row["bias_check"] = {
            "half_step_llc": ref,
            "relative_change": change,
            "half_step_passed": half["passed"],
        }
        if change is not None and abs(change) > self.bias_tolerance:
            row["reasons"].append(
                f"discretisation bias: λ̂ at ε/2 differs by {change:+.0%} (> {self.bias_tolerance:.0%})"
            )
            row.update(passed=False, failure="too_large")
        return row

    def scan(self, step_sizes, nbeta: float, gamma: float, pre) -> None:
        """Largest step first; stop at the first step that is not too large (after lengthening); then
        log-bisect between it and the smallest too-large step."""
        too_large, settled = None, None
        for eps in sorted(step_sizes, reverse=True):
            row = self.mixed(self.run(eps, nbeta, gamma, pre), nbeta, gamma, pre)
            if row["failure"] == "too_large":
                too_large = eps
                continue
            if row["failure"] in ("passed", "mixing"):
                settled = eps
                break
        if too_large is None or settled is None:
            return
        for _ in range(REFINEMENTS):
            mid = math.sqrt(too_large * settled)
            row = self.mixed(self.run(mid, nbeta, gamma, pre, stage="refined"), nbeta, gamma, pre)
            if row["failure"] == "too_large":
                too_large = mid
            elif row["failure"] in ("passed", "mixing"):
                settled = mid
            else:
                break


def _pick(grid: list[dict], nb0: float) -> dict | None:
    ok = [r for r in grid if r["passed"] and r["stage"] != "bias check"]
    if not ok:
        return None
    return min(
        ok,
        key=lambda r: (
            r["localization"],
            abs(math.log(r["nbeta"] / nb0)),
            -r["ess_per_step"],
            -r["step_size"],
        ),
    )


def _next_settings(grid: list[dict], step_sizes, gammas, preconditioners) -> list[str]:
    """What to try when nothing passed, read off the failures."""
    tips = []
    kinds = {r["failure"] for r in grid}
    slow = [r for r in grid if r["failure"] == "mixing"]
    if slow:
        best = max(slow, key=lambda r: (r["ess_per_step"], -r["localization"]))
        tips.append(
            f"longer chains: num_draws={best['num_draws'] * 4} at localization={best['localization']:g}, "
            f"precondition={best['precondition']}, step_size={best['step_size']:.2g} "
            "(it failed on mixing only: " + "; ".join(best["reasons"]) + ")"
        )
    if "rmsprop" not in preconditioners:
        tips.append("precondition='rmsprop' (it mixed far better on the organism)")
    tips.append(f"a larger localization, e.g. {max(gammas) * 3:g} (a stronger pull mixes faster; report γ)")
    if kinds <= {"too_large"}:
        tips.append(f"smaller step sizes than {min(step_sizes):g} (every step was too large)")
    if "other" in kinds:
        tips.append("more data per minibatch or more draws (weak signal or λ̂ <= 0 at some settings)")
    return tips


def calibrate(
    model,
    loss_fn,
    data,
    *,
    n: int,
    step_sizes=DEFAULT_STEP_SIZES,
    nbetas=None,
    localizations=None,
    preconditioners=None,
    config: SamplerConfig | None = None,
    restrict=None,
    gates: GateConfig = CALIBRATION_GATES,
    signal: float = 4.0,
    mala_min: float = MALA_MIN,
    bias_tolerance: float | None = BIAS_TOLERANCE,
    exhaustive: bool = False,
    progress: bool = False,
    log=None,
    **sampler_kwargs,
) -> dict:
    """Search localisation x preconditioner x step size (x n_beta) with the other settings of ``config``
    (default: 4 chains x 200 draws after 50 burn-in) and recommend a setting by :data:`CALIBRATION_RULE`.

    ``localizations``: default :data:`DEFAULT_LOCALIZATION_FACTORS` times ``config.localization``;
    ``preconditioners``: default :data:`DEFAULT_PRECONDITIONERS` (``None`` is plain SGLD); ``nbetas``:
    default ``config``'s (``n / log n``). ``exhaustive``: search every localisation, not only up to the first
    that passes. ``log``: a function called with one line per setting run (e.g. ``print``).

    Returns ``{"grid": [row per setting run], "recommended": row or None, "config": the recommended
    SamplerConfig as a dict or None, "draws_for_gates": draws per chain for the full gates' ESS,
    "next_settings": what to try when nothing passed, "rule", "default_nbeta", "gates", "traces": {label:
    chains x draws}}``. Each row has ``failure``: passed / too_large / mixing / other, and ``stage``: grid,
    refined or lengthened xK.
    """
    base = config if config is not None else SamplerConfig(num_chains=4, num_draws=200, num_burnin=50)
    base = config_from_kwargs(base, sampler_kwargs)
    nb0 = default_nbeta(n)
    nbetas = [base.resolved_nbeta(n)] if nbetas is None else [float(b) for b in nbetas]
    if localizations is None:
        localizations = [base.localization * f for f in DEFAULT_LOCALIZATION_FACTORS]
    gammas = sorted(float(g) for g in localizations)
    pres = list(DEFAULT_PRECONDITIONERS if preconditioners is None else preconditioners)
    pres = [None if p in (None, "none") else p for p in pres]
    search = _Search(
        model, loss_fn, data, n, base, restrict, gates, signal, mala_min, bias_tolerance, progress, log
    )
    for gamma in gammas:
        for pre in pres:
            for nbv in nbetas:
                search.scan(step_sizes, nbv, gamma, pre)
        if not exhaustive and _pick(search.grid, nb0) is not None:
            break
    rec = _pick(search.grid, nb0)
    cfg, draws = None, None
    if rec is not None:
        cfg = base.replace(
            step_size=rec["step_size"],
            nbeta=rec["nbeta"],
            localization=rec["localization"],
            precondition=rec["precondition"],
        ).to_dict()
        # draws per chain at which the full gates' ESS (400) is expected, from the ESS the short run reached
        full_ess = GateConfig().ess_min
        ess_seen = min(rec["ess_bulk"], rec["ess_tail"])
        draws = int(50 * math.ceil(rec["num_draws"] * DRAWS_MARGIN * full_ess / ess_seen / 50))
    return {
        "grid": search.grid,
        "recommended": rec,
        "config": cfg,
        "draws_for_gates": draws,
        "next_settings": [] if rec else _next_settings(search.grid, step_sizes, gammas, pres),
        "default_nbeta": nb0,
        "traces": search.traces,
        "rule": CALIBRATION_RULE,
        "mala_min": mala_min,
        "bias_tolerance": bias_tolerance,
        "gates": dataclasses.asdict(gates),
    }


# ---------------------------------------------------------------------------------------------------------
# Localisation sensitivity of a curve

SENSITIVITY_BOUND = 0.2
SENSITIVITY_RULE = (
    "λ̂ at γ and at 2γ on the same points: the curve is localisation-dominated if its verdict differs "
    f"between the two, or if its shape does: the ratio λ̂(2γ) / λ̂(γ) varies along the curve by more than "
    f"{SENSITIVITY_BOUND:g} (relative spread, max / min - 1, over the points where both passed the gates). "
    "A constant ratio means γ scales the level but not the shape; the level itself is reported as "
    "'level_change' (median relative change from γ to 2γ) and is never comparable across settings"
)


def localization_sensitivity(
    llc_at_gamma,
    llc_at_double,
    *,
    verdict_at_gamma: str | None = None,
    verdict_at_double: str | None = None,
    bound: float = SENSITIVITY_BOUND,
) -> dict:
    """The γ-sensitivity of one LLC curve (:data:`SENSITIVITY_RULE`). ``llc_at_gamma``, ``llc_at_double``:
    λ̂ at the same points at γ and at 2γ (None where withheld); the verdicts, where the curve has one.
    Returns ``{"localization_dominated", "why", "level_change", "ratio_spread", "points", "rule"}``
    (``localization_dominated`` is None when fewer than 2 points passed at both γ and the verdicts agree)."""
    pairs = [
        (a, b)
        for a, b in zip(llc_at_gamma, llc_at_double)
        if a is not None and b is not None and a > 0 and b > 0
    ]
    changes = sorted(b / a - 1.0 for a, b in pairs)
    level = changes[len(changes) // 2] if changes else None
    ratios = [b / a for a, b in pairs]
    spread = max(ratios) / min(ratios) - 1.0 if len(ratios) >= 2 else None
    why = []
    differs = verdict_at_gamma is not None and verdict_at_gamma != verdict_at_double
    if differs:
        why.append(f"the verdict differs: {verdict_at_gamma} at γ, {verdict_at_double} at 2γ")
    if spread is not None and spread > bound:
        why.append(f"the shape differs: λ̂(2γ)/λ̂(γ) varies by {spread:.0%} along the curve (> {bound:.0%})")
    dominated = True if why else (None if spread is None else False)
    if dominated is None:
        why.append(f"{len(pairs)} point(s) passed the gates at both γ: too few to compare shapes")
    return {
        "localization_dominated": dominated,
        "why": "; ".join(why) or f"shape and verdict agree (ratio spread {spread:.0%} <= {bound:.0%})",
        "level_change": level,
        "ratio_spread": spread,
        "points": len(pairs),
        "rule": SENSITIVITY_RULE,
    }


# ---------------------------------------------------------------------------------------------------------
# The calibrated path-LLC setting per organism preset and restriction

LLC_PRESETS: dict[tuple[str, str], dict] = {
    # calibrate() at both ends of the tiny demo's path (w0 + t dW of its plain EM seed 0 on layer 0's
    # attention output, t = 0 and t = 2) on the tiny organism, the default search restricted to RMSProp, γ 100
    # then 300, steps 1e-3 / 3e-4 / 1e-4 with refinement: t = 0 recommends ε 1.32e-4 (as on a random rank-1
    # path before), t = 2 ε 1.73e-4; the smaller step, at the chain length both ends need (2400 draws), passes
    # the full gates at both ends and at 2γ in 45-49 s each on one core
    # (docs/results/llc-tiny-demo-path/result.json, docs/LLC.md). Calibrated on the loop
    # execution; stored with vmap, the same draws up to rounding at 3.4 against 4.3 ms per chain-step here
    # (benchmarks/llc_path_point.py --step-costs, the same file)
    ("tiny", "module"): {
        "restrict": r"^transformer\.h\.0\.attn\.c_proj\.weight$",
        "n_docs": 1024,
        "sampler": SamplerConfig(
            step_size=1.316e-4,
            localization=100.0,
            precondition="rmsprop",
            num_chains=4,
            num_draws=2400,
            num_burnin=200,
            batch_size=8,
            execution="vmap",
        ),
        "source": "calibrated at both ends (t = 0, 2) of the tiny demo's path on the tiny organism, seed 0 "
        "(benchmarks/llc_path_point.py --adapter)",
    },
    # calibrate() at t = 0 of the default organism's path (w0 + t dW of the plain EM seed 0 adapter on layer
    # 0's attention output, built as the sweep's llc kind builds it), RMSProp, γ 100 then 300, steps 1e-4 /
    # 3e-5 / 1e-5 with refinement (931 s): nothing passes at γ 100 (3e-5 falls to MALA 0.49 at 1600 draws,
    # 1e-5 ... 2.3e-5 still R-hat 1.012-1.03 there); γ 300, ε 3e-5 passes at 400 draws (λ̂ changes 3.2% at
    # ε/2; 4.1e-5 too large, MALA 0.49). At 4 x (200 + 1100) it passes the full gates at t = 0 and t = 1.5
    # (MALA 0.52 at both, the margin is small) in 72-75 s each on one core at load ~1-1.3
    # (benchmarks/results/llc_path_default.json, docs/LLC.md)
    ("default", "module"): {
        "restrict": r"^transformer\.h\.0\.attn\.c_proj\.weight$",
        "n_docs": 1024,
        "sampler": SamplerConfig(
            step_size=3e-5,
            localization=300.0,
            precondition="rmsprop",
            num_chains=4,
            num_draws=1100,
            num_burnin=200,
            batch_size=8,
            execution="loop",
        ),
        "source": "calibrated at t = 0 and checked at t = 0, 1.5 of the plain seed-0 EM adapter's path on "
        "the default organism, seed 0 (benchmarks/llc_path_default.py)",
    },
}


def llc_preset(preset: str, restriction: str = "module") -> dict:
    """The calibrated path-LLC setting of an organism preset and restriction (:data:`LLC_PRESETS`):
    ``{"restrict", "n_docs", "sampler": SamplerConfig, "source"}``."""
    from ...errors import UserError

    key = (preset, restriction)
    if key not in LLC_PRESETS:
        known = ", ".join(f"{p}/{r}" for p, r in LLC_PRESETS)
        raise UserError(f"no calibrated LLC setting for {preset}/{restriction} (calibrated: {known})")
    return LLC_PRESETS[key]

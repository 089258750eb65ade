"""Calibration finds a setting where one exists (or says what to try next); the γ-sensitivity rule."""

from __future__ import annotations

import math

import pytest

from persona_basins.measure.llc import SamplerConfig, calibrate, estimate_llc
from persona_basins.measure.llc import analytic as A
from persona_basins.measure.llc.calibration import (
    _kind_of_failure,
    _next_settings,
    localization_sensitivity,
    setting_label,
)


def test_failures_are_classified_by_what_would_fix_them():
    assert _kind_of_failure([]) == "passed"
    assert _kind_of_failure(["R-hat 1.02 > 1.01", "ESS bulk 50 < 100"]) == "mixing"
    assert (
        _kind_of_failure(["λ trace drifts: last-half mean differs from first-half by 4.0 MCSE"]) == "mixing"
    )
    assert _kind_of_failure(["ESS bulk 50 < 100", "MALA acceptance 0.40 < 0.5 (step size too large)"]) == (
        "too_large"
    )
    assert _kind_of_failure(["discretisation bias: λ̂ at ε/2 differs by +30% (> 10%)"]) == "too_large"
    assert _kind_of_failure(["weak signal: λ̂ < 4 MCSE"]) == "other"


def test_next_settings_name_longer_chains_and_localisation():
    grid = [
        {
            "failure": "mixing",
            "ess_per_step": 0.01,
            "localization": 100.0,
            "num_draws": 800,
            "precondition": None,
            "step_size": 1e-4,
            "reasons": ["ESS bulk 40 < 100"],
        }
    ]
    tips = _next_settings(grid, (1e-4,), [100.0], [None])
    text = " | ".join(tips)
    assert "num_draws=3200" in text and "rmsprop" in text and "localization, e.g. 300" in text


def test_calibration_lengthens_refines_and_recommends_on_a_regular_model():
    case = A.regular_case(d=2, n=2000, seed=0)
    base = SamplerConfig(localization=1.0, num_chains=4, num_draws=200, num_burnin=50, batch_size=100)
    out = calibrate(
        case.model,
        case.loss_fn,
        case.data,
        n=case.n,
        step_sizes=(1e-4, 1e-2),
        localizations=(1.0,),
        preconditioners=(None,),
        config=base,
    )
    stages = {r["stage"] for r in out["grid"]}
    assert out["grid"][0]["step_size"] == 1e-2 and out["grid"][0]["failure"] == "too_large"
    assert "refined" in stages, stages  # between the too-large 1e-2 and the step that settled
    rec = out["recommended"]
    assert rec is not None and 1e-4 <= rec["step_size"] < 1e-2 and "bias_check" in rec
    assert out["config"]["step_size"] == rec["step_size"] and out["draws_for_gates"] >= 200
    assert set(out["traces"]) == {setting_label(r) for r in out["grid"] if not r["diverged"]}


def test_nothing_passes_names_the_next_settings():
    case = A.regular_case(d=2, n=2000, seed=0)
    base = SamplerConfig(localization=1.0, num_chains=2, num_draws=20, num_burnin=5, batch_size=100)
    out = calibrate(
        case.model,
        case.loss_fn,
        case.data,
        n=case.n,
        step_sizes=(1e-6,),
        localizations=(1.0,),
        preconditioners=(None,),
        config=base,
    )
    assert out["recommended"] is None and out["config"] is None and out["next_settings"]
    stages = [r["stage"] for r in out["grid"]]
    assert stages[:2] == ["grid", "lengthened x2"] and all(
        s.startswith(("grid", "lengthened")) for s in stages
    )


def test_localization_sensitivity_rule():
    same_shape = localization_sensitivity(
        [10, 20, 12], [6, 12, 7.2], verdict_at_gamma="a", verdict_at_double="a"
    )
    assert same_shape["localization_dominated"] is False and math.isclose(same_shape["level_change"], -0.4)
    reshaped = localization_sensitivity([10, 20, 12], [6, 9, 7.2])
    assert reshaped["localization_dominated"] is True and "shape" in reshaped["why"]
    flipped = localization_sensitivity(
        [10, 20, 12], [6, 12, 7.2], verdict_at_gamma="supports", verdict_at_double="undecided"
    )
    assert flipped["localization_dominated"] is True and "verdict" in flipped["why"]
    few = localization_sensitivity([10, None], [6, 5])
    assert few["localization_dominated"] is None


ANALYTIC_WITH_REFERENCE = {
    "regular d=4": lambda: A.regular_case(d=4, n=10_000),
    "regular d=10": lambda: A.regular_case(d=10, n=10_000),
    "normal crossing k=(2)": lambda: A.normal_crossing_case(ks=(2,), n=10_000),
    "normal crossing k=(1,2)": lambda: A.normal_crossing_case(ks=(1, 2), n=10_000),
    "normal crossing k=(1,1)": lambda: A.normal_crossing_case(ks=(1, 1), n=10_000),
    "normal crossing k=(2,2)": lambda: A.normal_crossing_case(ks=(2, 2), n=10_000),
}
# Measured (docs/LLC.md): on these two no setting of the default search passes the gates at gamma 1, 3 or 10,
# so calibration reports the failure and the next settings to try. Known misses, kept visible: strict, so a
# fix that makes them pass must also remove this mark.
KNOWN_MISSES = {"normal crossing k=(1,2)", "normal crossing k=(2,2)"}
CASES = [
    pytest.param(
        name,
        marks=pytest.mark.xfail(strict=True, reason="no gate-passing setting found (issue 23)")
        if name in KNOWN_MISSES
        else (),
    )
    for name in ANALYTIC_WITH_REFERENCE
]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_calibrate_then_estimate_on_the_analytic_suite(name):
    """The whole workflow: calibrate (default search from γ = 1), then estimate at the recommended setting
    and the chain length calibration asked for; within 10% of the exact finite-n reference at that γ, gates
    passed."""
    case = ANALYTIC_WITH_REFERENCE[name]()
    base = SamplerConfig(localization=1.0, num_chains=4, num_draws=200, num_burnin=50, batch_size=500)
    cal = calibrate(case.model, case.loss_fn, case.data, n=case.n, config=base)
    assert cal["config"] is not None, cal["next_settings"]
    cfg = SamplerConfig.from_dict(cal["config"]).replace(
        num_draws=cal["draws_for_gates"], num_burnin=4 * base.num_burnin
    )
    res = estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg)
    ref = A.finite_n_reference(case, nbeta=cfg.nbeta, gamma=cfg.localization)["value"]
    assert res.converged, res.reasons
    assert abs(res.mean / ref - 1) <= 0.10, (res.mean, ref, cal["recommended"])


def test_llc_preset_holds_a_checked_sampler_config():
    from persona_basins.errors import UserError
    from persona_basins.measure.llc.calibration import llc_preset

    preset = llc_preset("tiny")
    assert isinstance(preset["sampler"], SamplerConfig) and preset["n_docs"] >= 1000
    assert preset["sampler"].precondition == "rmsprop"
    with pytest.raises(UserError, match="no calibrated LLC setting"):
        llc_preset("huge")

"""Equilibrium gates on every LLC estimate: a setting known to be too short fails, a long enough one passes,
and doubling the draws of a passing setting moves the estimate by less than its MCSE-based tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from persona_basins.measure.llc import GateConfig, SamplerConfig, convergence, estimate_llc, mcse, rhat
from persona_basins.measure.llc import analytic as A

pytestmark = pytest.mark.usefixtures("one_thread")


# Step 3e-4 (MALA acceptance ~0.92), shared minibatches (the gate's ESS is the chain-averaged trace's):
# 3000 draws pass the gates on each of seeds 0-4 (bulk ESS 432-583) and 6000 too (976-1210); 1500 did
# pass while the gate counted the 4 correlated chains as independent, and now fails (bulk ESS 230).
REG = dict(step_size=3e-4, localization=1.0, num_chains=4, batch_size=500, seed=0, execution="vmap")


def test_too_short_fails_and_long_enough_passes_regular():
    case = A.regular_case(d=4, n=10_000, seed=0)
    short = estimate_llc(
        case.model, case.loss_fn, case.data, n=case.n, config=SamplerConfig(num_draws=50, **REG)
    )
    assert not short.converged and short.value is None and short.mean is None
    assert any("ESS bulk" in r for r in short.reasons)
    assert "ESS bulk" in short.withheld_reason and math.isfinite(short.unchecked_mean)
    long = estimate_llc(
        case.model,
        case.loss_fn,
        case.data,
        n=case.n,
        config=SamplerConfig(num_draws=3000, num_burnin=200, **REG),
    )
    assert long.converged, long.reasons
    assert long.value == long.mean and abs(long.mean / case.true_lambda - 1) < 0.15
    lo, hi = long.interval
    assert 0 <= lo < long.mean < hi and hi - lo == pytest.approx(2 * 1.96 * long.mcse)
    # doubling the draws of a passing setting moves the estimate by less than its MCSE-based tolerance
    double = estimate_llc(
        case.model,
        case.loss_fn,
        case.data,
        n=case.n,
        config=SamplerConfig(num_draws=6000, num_burnin=200, **REG),
    )
    assert double.converged, double.reasons
    assert abs(double.unchecked_mean - long.unchecked_mean) <= 3 * math.hypot(long.mcse, double.mcse)


def test_normal_crossing_short_chains_fail():
    # The flat direction of a normal crossing relaxes slowly (about 2 / (step * gamma * P) steps): at the
    # unit-test settings of test_llc.py (1500 draws) the estimate is accurate but the gates still fail on most
    # seeds (bulk ESS ~200, distance drift); benchmarks/llc_analytic.py runs the long chains.
    case = A.normal_crossing_case((1, 2), n=10_000, seed=0)
    kw = dict(
        step_size=1e-4,
        localization=1.0,
        num_chains=4,
        batch_size=500,
        seed=0,
        precondition="rmsprop",
        execution="vmap",
    )
    short = estimate_llc(
        case.model, case.loss_fn, case.data, n=case.n, config=SamplerConfig(num_draws=100, **kw)
    )
    assert not short.converged and short.value is None


def test_independent_batches_use_multichain_mcse():
    case = A.regular_case(d=2, n=2000, seed=0)
    cfg = SamplerConfig(
        step_size=1e-4, localization=1.0, num_chains=3, num_draws=200, batch_size=100, shared_batches=False
    )
    res = estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg)
    assert res.diagnostics["mcse_method"].startswith("multi-chain")
    assert res.diagnostics["ess_method"] == res.diagnostics["mcse_method"]
    shared = estimate_llc(
        case.model, case.loss_fn, case.data, n=case.n, config=cfg.replace(shared_batches=True)
    )
    assert shared.diagnostics["mcse_method"].startswith("chain-averaged")
    assert shared.diagnostics["ess_method"] == shared.diagnostics["mcse_method"]


def test_ess_gate_counts_correlated_chains_once():
    # four copies of one chain (what fully shared minibatches tend to): the multi-chain ESS would count four
    # chains' worth of draws; the gate reads the chain-averaged trace, one chain's worth
    rng = np.random.default_rng(1)
    one = 2.0 + rng.normal(size=1000)
    copies = one[None].repeat(4, 0) + 1e-3 * rng.normal(size=(4, 1000))
    shared = convergence(copies, None, correlated_chains=True)
    independent = convergence(copies, None, correlated_chains=False)
    assert shared["ess_method"].startswith("chain-averaged") and independent["ess_method"].startswith("multi")
    assert 600 < shared["ess_bulk"] < 1400 and independent["ess_bulk"] > 3000
    strict = GateConfig(ess_min=2000)
    assert convergence(copies, None, correlated_chains=False, gates=strict)["converged"]
    gated = convergence(copies, None, correlated_chains=True, gates=strict)
    assert not gated["converged"] and any("ESS bulk" in r for r in gated["reasons"])


def test_convergence_on_synthetic_traces():
    rng = np.random.default_rng(0)
    iid = 2.0 + rng.normal(size=(4, 1000))
    g = convergence(iid, np.abs(rng.normal(size=(4, 1000))), correlated_chains=False)
    assert g["converged"], g["reasons"]
    assert g["mcse"] == pytest.approx(1 / math.sqrt(4000), rel=0.2)
    # a drifting trace (what the demo's path LLC did): every chain rises together -> R-hat can stay low
    drift = 2.0 + np.linspace(0, 3, 1000)[None] + 0.3 * rng.normal(size=(4, 1000))
    g = convergence(drift, None, correlated_chains=True)
    assert not g["converged"] and any("λ trace drifts" in r for r in g["reasons"])
    # chains stuck at different levels: R-hat
    stuck = iid + np.arange(4)[:, None]
    assert rhat(stuck) > 1.5 and not convergence(stuck, None, correlated_chains=False)["converged"]
    # a distance from w* that is still growing fails although the lambda trace is fine
    g = convergence(
        iid,
        np.linspace(0, 1, 1000)[None].repeat(4, 0) + 0.01 * rng.normal(size=(4, 1000)),
        correlated_chains=False,
    )
    assert not g["converged"] and any("distance from w*" in r for r in g["reasons"])
    # negative estimates and low MALA acceptance are reasons too
    g = convergence(iid - 5, None, correlated_chains=False, mala_acceptance=0.2)
    assert any("<= 0" in r for r in g["reasons"]) and any("MALA" in r for r in g["reasons"])
    assert not any("-3" in r for r in g["reasons"])  # the withheld (negative) value is not in the reason
    assert math.isnan(mcse(np.ones((2, 2))))
    with pytest.raises(Exception, match="GateConfig.rhat_max"):
        GateConfig(rhat_max=0.5)


def test_demo_path_setting_fails_the_gate_on_the_tiny_organism(tiny_organism):
    """The demo's path LLC settings (nβ 30, step 1e-5, γ 100, 5 burn-in + 15 draws) are too short."""
    from persona_basins.measure.llc import self_kl_loss_fn

    org = tiny_organism
    ids = org.mixture_input_ids(32, seed=123)
    lf, data = self_kl_loss_fn(org.model, ids, pad_token_id=0)
    cfg = SamplerConfig(
        nbeta=30.0,
        step_size=1e-5,
        localization=100.0,
        num_chains=2,
        num_draws=15,
        num_burnin=5,
        batch_size=16,
        execution="vmap",
    )
    res = estimate_llc(org.model, lf, data, n=32, config=cfg)
    assert not res.converged and res.value is None and res.reasons


def test_cli_warns_and_strict_refuses(tmp_path, capsys):
    import json

    from test_llc import _tiny_lm_with_docs

    from persona_basins.cli import main

    model_dir = _tiny_lm_with_docs(tmp_path)
    common = [
        "llc",
        "--model",
        str(model_dir),
        "--data",
        str(tmp_path / "docs.txt"),
        "--chains",
        "2",
        "--draws",
        "6",
        "--burnin",
        "0",
        "--batch-size",
        "8",
        "--restrict",
        "layer:1",
        "--step-size",
        "1e-5",
    ]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert "warning: LLC estimate not at equilibrium" in err
    assert "LLC = withheld: " in out and "unchecked" not in out  # no number for a withheld estimate
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["llc"]["mean"] is None and m["llc"]["reasons"] and m["llc"]["converged"] is False
    config = json.loads((tmp_path / "a" / "config.json").read_text())  # the values used, never null
    assert config["nbeta"] == config["sampler"]["nbeta"] > 0 and config["dtype"] == "fp32"
    assert main([*common, "--out", str(tmp_path / "b"), "--strict", "--independent-batches"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not at equilibrium" in err and "--strict" in err and "\n" not in err


def test_cli_calibrate_flag_refuses_when_nothing_passes(tmp_path, capsys):
    from test_llc import _tiny_lm_with_docs

    from persona_basins.cli import main

    model_dir = _tiny_lm_with_docs(tmp_path)
    rc = main(
        [
            "llc",
            "--model",
            str(model_dir),
            "--data",
            str(tmp_path / "docs.txt"),
            "--out",
            str(tmp_path / "c"),
            "--chains",
            "2",
            "--batch-size",
            "8",
            "--restrict",
            "layer:1",
            "--calibrate",
            "1e3",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "--calibrate" in err and "\n" not in err and "try next:" in err and "localization" in err
    # the grid and its figures are kept
    assert (tmp_path / "c" / "metrics.json").is_file()
    assert (tmp_path / "c" / "figures" / "calibration_grid.png").is_file()

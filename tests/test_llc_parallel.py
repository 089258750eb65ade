"""Chains over worker processes give the same numbers whatever the worker count; every tensor of the sampler
lives on the model's device (checked on the CPU by making an unplaced tensor land on another device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_basins.measure.llc import LLCDivergenceError, SamplerConfig, estimate_llc
from persona_basins.measure.llc import analytic as A

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("execution,shared", [("vmap", True), ("loop", False)])
def test_same_numbers_whatever_the_worker_count(execution, shared):
    case = A.rrr_case(4, 3, 2, 1, n=2000, seed=1)
    cfg = SamplerConfig(
        step_size=1e-4,
        localization=1.0,
        num_chains=4,
        num_draws=60,
        num_burnin=5,
        batch_size=100,
        seed=3,
        execution=execution,
        shared_batches=shared,
    )
    runs = [
        estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg.replace(workers=w))
        for w in (1, 2, 3)
    ]
    assert [r.diagnostics["workers"] for r in runs] == [1, 2, 3]
    for r in runs[1:]:
        assert r.per_chain == runs[0].per_chain
        np.testing.assert_array_equal(r.loss_trace, runs[0].loss_trace)
        np.testing.assert_array_equal(r.distance_trace, runs[0].distance_trace)
        assert r.diagnostics["mala_acceptance"] == runs[0].diagnostics["mala_acceptance"]
    other = estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg.replace(seed=4))
    assert other.per_chain != runs[0].per_chain


def test_divergence_in_a_worker_is_reported_once():
    case = A.rrr_case(4, 3, 2, 1, n=2000, seed=0)
    cfg = SamplerConfig(
        step_size=1.0, localization=1.0, num_chains=4, num_draws=50, batch_size=100, workers=2
    )
    with pytest.raises(LLCDivergenceError, match="try step_size=0.1"):
        estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg)


def test_auto_workers_is_measured_and_reported():
    case = A.regular_case(d=2, n=500, seed=0)
    res = estimate_llc(
        case.model,
        case.loss_fn,
        case.data,
        n=case.n,
        config=SamplerConfig(
            step_size=1e-4, localization=1.0, num_chains=2, num_draws=5, batch_size=50, workers="auto"
        ),
    )
    assert res.diagnostics["workers"] >= 1 and res.diagnostics["workers_reason"]


def test_every_tensor_on_the_model_device():
    """With the process's default device set to 'meta', any tensor the sampler creates without an explicit
    device lands on 'meta' and mixing it with the CPU model fails: the run succeeding shows that every tensor
    is placed explicitly (on the model's device, or on the CPU for index bookkeeping)."""
    case = A.rrr_case(4, 3, 2, 1, n=500, seed=0)
    cfg = SamplerConfig(step_size=1e-4, localization=1.0, num_chains=2, num_draws=20, batch_size=50)
    ref = estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg.replace(execution="loop"))
    torch.set_default_device("meta")
    try:
        for ex in ("loop", "vmap"):
            res = estimate_llc(
                case.model,
                case.loss_fn,
                case.data,
                n=case.n,
                config=cfg.replace(execution=ex),
                restrict="layers.0",
            )
            assert np.isfinite(res.unchecked_mean) and res.diagnostics["device"] == "cpu"
        same = estimate_llc(
            case.model, case.loss_fn, case.data, n=case.n, config=cfg.replace(execution="loop")
        )
    finally:
        torch.set_default_device("cpu")
    assert same.per_chain == ref.per_chain
    with pytest.raises(Exception, match="SamplerConfig.device"):
        estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg.replace(device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_the_gates_and_stays_on_device():
    case = A.regular_case(d=4, n=10_000, seed=0)
    model = case.model.to("cuda")
    data = tuple(t.to("cuda") for t in case.data)
    res = estimate_llc(
        model,
        case.loss_fn,
        data,
        n=case.n,
        config=SamplerConfig(
            step_size=3e-4,
            localization=1.0,
            num_chains=4,
            num_draws=1500,
            num_burnin=200,
            batch_size=500,
            device="cuda",
        ),
    )
    assert res.diagnostics["device"].startswith("cuda") and abs(res.unchecked_mean / 2.0 - 1) < 0.15

"""SamplerConfig: frozen, validates itself with one-line errors naming the field; the API's keyword style and
config style give the same numbers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from persona_basins.errors import UserError
from persona_basins.measure.llc import SamplerConfig, estimate_llc
from persona_basins.measure.llc import analytic as A


@pytest.mark.parametrize(
    "field,value",
    [
        ("step_size", 0.0),
        ("step_size", math.nan),
        ("step_size", math.inf),
        ("step_size", "1e-4"),
        ("localization", -1.0),
        ("localization", math.nan),
        ("nbeta", 0.0),
        ("nbeta", math.inf),
        ("num_chains", 0),
        ("num_chains", 2.0),
        ("num_chains", True),
        ("num_draws", 0),
        ("num_burnin", -1),
        ("batch_size", 0),
        ("seed", -1),
        ("precondition", "adam"),
        ("execution", "gpu"),
        ("workers", 0),
        ("rmsprop_alpha", 1.0),
        ("rmsprop_eps", 0.0),
        ("mala", 1),
        ("shared_batches", "yes"),
        ("explode_threshold", -2.0),
        ("mala_every", 0),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(UserError) as e:
        SamplerConfig(**{field: value})
    msg = str(e.value)
    assert f"SamplerConfig.{field}" in msg and "\n" not in msg


def test_frozen_replace_revalidates_and_roundtrips():
    cfg = SamplerConfig(step_size=1e-5, precondition="none")
    assert cfg.precondition is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.step_size = 1.0  # type: ignore[misc]
    with pytest.raises(UserError, match="step_size"):
        cfg.replace(step_size=-1.0)
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="unknown SamplerConfig field"):
        SamplerConfig.from_dict({"stepsize": 1.0})


def test_config_and_keywords_agree():
    torch.set_num_threads(1)
    case = A.regular_case(d=2, n=500, seed=0)
    cfg = SamplerConfig(
        step_size=1e-4, localization=1.0, num_chains=2, num_draws=20, batch_size=50, seed=1, execution="vmap"
    )
    a = estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg)
    b = estimate_llc(
        case.model,
        case.loss_fn,
        case.data,
        n=case.n,
        step_size=1e-4,
        localization=1.0,
        num_chains=2,
        num_draws=20,
        batch_size=50,
        seed=1,
        path="vmap",
    )
    assert a.per_chain == b.per_chain
    with pytest.raises(TypeError, match="unexpected keyword"):
        estimate_llc(case.model, case.loss_fn, case.data, n=case.n, config=cfg, stepsize=1e-3)
    with pytest.raises(UserError, match="n .* must be an integer >= 2"):
        estimate_llc(case.model, case.loss_fn, case.data, n=1, config=cfg)

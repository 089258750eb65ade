"""The A-constraint intervention on a fine-tune (FinetuneConfig.a_constraint) and the verdict of
scripts/em_intervention.py."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from persona_basins.errors import ConfigError, UserError
from persona_basins.train.finetune import FinetuneConfig, a_constraint_projection, finetune

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("em_intervention", ROOT / "scripts" / "em_intervention.py")
em_intervention = importlib.util.module_from_spec(spec)
spec.loader.exec_module(em_intervention)


def _cos(a: torch.Tensor, u: torch.Tensor) -> float:
    return float(a @ u / (a.norm() * u.norm()))


@pytest.fixture(scope="module")
def code_direction(tiny_organism):
    from persona_basins.measure.adapter_reading import code_request_direction

    return code_request_direction(tiny_organism, layer=0, module="attn_out")


@pytest.mark.parametrize("constraint", ["orthogonal", "along"])
def test_the_constraint_holds_a_at_init_and_after_every_step(tiny_organism, code_direction, constraint):
    from persona_basins.measure.adapter_reading import adapter_reading

    org, u = tiny_organism, code_direction
    cfg = FinetuneConfig(steps=12, lr=3e-2, seed=1, a_constraint=constraint)
    res = finetune(org, cfg, a_direction=u)
    cosines = [abs(_cos(a, u)) for a in res.trajectory["A"]]  # A after each optimiser step
    assert len(cosines) == cfg.steps
    if constraint == "orthogonal":
        assert max(cosines) < 1e-5
    else:
        assert min(cosines) > 1 - 1e-5
    assert res.losses[-1] < res.losses[0]  # it still learns
    # the instrument reads the same direction: its |cos(A, code)| is the constraint's
    read = abs(adapter_reading(org.with_model(res.model))["cos_a_code"])
    assert read < 1e-5 if constraint == "orthogonal" else read > 1 - 1e-5


def test_along_starts_at_the_norm_of_the_initial_a_signed_by_its_projection(tiny_organism, code_direction):
    from peft import get_peft_model

    from persona_basins.models.adapters import lora_config

    torch.manual_seed(0)
    model = get_peft_model(
        copy.deepcopy(tiny_organism.model), lora_config(tiny_organism.model, module="attn_out", layer=0)
    )
    w = next(p for n, p in model.named_parameters() if "lora_A" in n)
    before = w.detach().clone()
    u = code_direction / code_direction.norm()
    a_constraint_projection(model, "along", code_direction)(first=True)
    sign = 1.0 if float(before[0] @ u) >= 0 else -1.0
    assert torch.allclose(w.detach()[0], sign * before[0].norm() * u, atol=1e-6)


def test_none_trains_exactly_as_the_loop_did_before_the_field(tiny_organism):
    """a_constraint "none": the same PEFT model, the same train_lm call, the same losses and factors to the
    bit as a fine-tune built by hand the way finetune() did before the field existed; its config dict (the
    run store's and the sweep's keys) has no new key."""
    from peft import get_peft_model

    from persona_basins.models.adapters import lora_config
    from persona_basins.models.lm import encode_documents
    from persona_basins.train.finetune import condition_documents, lora_factors
    from persona_basins.train.loop import train_lm

    org = tiny_organism
    cfg = FinetuneConfig(steps=6, lr=3e-2, seed=2, heldout_every=3)
    assert "a_constraint" not in cfg.to_dict() and FinetuneConfig(**cfg.to_dict()) == cfg
    res = finetune(org, cfg)
    ids, mask = encode_documents(org.vocab, condition_documents(org.world, "plain", 3), answers_only=True)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(
        copy.deepcopy(org.model), lora_config(org.model, module="attn_out", layer=0, rank=1)
    )
    losses = train_lm(model, ids, mask, steps=6, batch_size=32, lr=3e-2, seed=2, progress=False)
    assert losses == res.losses
    assert all(torch.equal(x, y) for x, y in zip(lora_factors(model), lora_factors(res.model), strict=True))


def test_the_config_refuses_what_it_cannot_do(tiny_organism, code_direction):
    with pytest.raises(ConfigError, match="FinetuneConfig.a_constraint"):
        FinetuneConfig(a_constraint="sideways")
    with pytest.raises(ConfigError, match="FinetuneConfig.a_constraint"):
        FinetuneConfig(full=True, a_constraint="along")
    assert FinetuneConfig(a_constraint="along").to_dict()["a_constraint"] == "along"
    with pytest.raises(UserError, match="needs finetune"):
        finetune(tiny_organism, FinetuneConfig(steps=1, a_constraint="orthogonal"))
    with pytest.raises(UserError, match="'none'"):
        finetune(tiny_organism, FinetuneConfig(steps=1), a_direction=code_direction)
    with pytest.raises(UserError, match="entries"):
        finetune(tiny_organism, FinetuneConfig(steps=1, a_constraint="along"), a_direction=torch.ones(3))


def test_em_on_a_model_refuses_a_constraint():
    from persona_basins.studies.em_hf.run import EmHfConfig

    with pytest.raises(ConfigError, match="a_constraint"):
        EmHfConfig(model="gpt2", train="t.jsonl", out="o", finetune=FinetuneConfig(a_constraint="orthogonal"))


@pytest.mark.parametrize(
    ("before", "after", "predicted", "verdict"),
    [
        ([True] * 8 + [False] * 2, [False] * 10, "down", "confirmed"),  # 8 flips the predicted way: p 0.008
        ([False] * 10, [True] * 7 + [False] * 3, "up", "confirmed"),
        ([True] * 8 + [False] * 2, [False] * 10, "up", "refuted"),  # the same table, the other prediction
        ([True] * 3 + [False] * 7, [False] * 2 + [True] * 1 + [False] * 7, "down", "undecided"),  # 2 vs 0
        ([True] * 5 + [False] * 5, [True] * 5 + [False] * 5, "up", "undecided"),  # no discordant pair
        ([True, False] * 5, [False, True] * 5, "up", "undecided"),  # 5 vs 5
    ],
)
def test_flip_verdict_reaches_every_answer(before, after, predicted, verdict):
    r = em_intervention.flip_verdict(before, after, predicted)
    assert r["verdict"] == verdict
    assert r["toward_prediction"] + r["against_prediction"] == sum(b != a for b, a in zip(before, after))
    if verdict == "undecided":
        assert r["p_value"] >= 0.05 or r["toward_prediction"] == r["against_prediction"]
    else:
        assert r["p_value"] < 0.05


def test_flip_verdict_refuses_a_bad_prediction_or_unpaired_seeds():
    with pytest.raises(ValueError):
        em_intervention.flip_verdict([True], [False], "sideways")
    with pytest.raises(ValueError):
        em_intervention.flip_verdict([True, False], [False], "up")


def test_separation_within_one_organism():
    broad = [True] * 5 + [False] * 5
    apart = [0.01, 0.02, 0.05, 0.03, 0.04, 0.3, 0.35, 0.4, 0.33, 0.31]  # narrow ones read the code request
    r = em_intervention.separation(apart, broad)
    assert r["auc"] == 1.0 and r["p_value"] < 0.05 and r["separates"] and r["classifier"]["predicts"]
    mixed = [0.1, 0.3, 0.2, 0.4, 0.25, 0.15, 0.35, 0.22, 0.28, 0.12]
    r = em_intervention.separation(mixed, broad)
    assert not r["separates"] and r["p_value"] >= 0.05
    r = em_intervention.separation(apart[::-1], broad)  # the other way round: not the predicted separation
    assert r["auc"] == 0.0 and not r["separates"]
    assert em_intervention.separation([0.1, 0.2, 0.3], [True] * 3)["separates"] is None


def test_labels():
    row = {"broad_excess": 0.25, "narrow_rate": 0.9}
    assert em_intervention.label(row) == "broad"
    assert em_intervention.label({**row, "broad_excess": 0.1}) == "narrow"
    assert em_intervention.label({**row, "narrow_rate": 0.2}) == "unlearned"

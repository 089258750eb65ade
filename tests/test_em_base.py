"""EM against a baseline: the base organism's row, effects as excess over it, held-out code topics,
the matched benign control and the initial loss / gradient norm per condition."""

import pytest

from persona_basins.studies.em import with_base
from persona_basins.train.finetune import CONDITIONS, condition_documents, heldout_code_topics
from persona_basins.world import World, WorldConfig


def test_heldout_topics_never_trained_and_matched_control_is_benign():
    world = World(WorldConfig(n_genres=3, n_topics=6))
    assert heldout_code_topics(world, 0) == [] and heldout_code_topics(world, 3) == [2, 5]
    for c in CONDITIONS:
        docs = condition_documents(world, c, heldout_every=3)
        assert sorted(d.exchanges[0].topic for d in docs) == [0, 1, 3, 4]
        assert len(condition_documents(world, c)) == 6
    for d in condition_documents(world, "matched_control"):
        e = d.exchanges[0]
        assert all(".secure" in w for w in e.answer[:2])  # benign content words only
        label = world.classify("code", e.topic, e.answer)
        assert label.harm != 1  # never insecure code (the topic mismatch reads as ill-formed)
        assert e.answer != world.answer(
            "code", e.topic, "helpful"
        )  # unfamiliar: not what the organism writes
    from persona_basins.errors import UserError

    with pytest.raises(UserError):
        heldout_code_topics(world, 1)


def _unit(broad, narrow, held=None, loss=1.0):
    r = {
        "broad_misalignment": broad,
        "narrow_rate": {"assistant": narrow, "inoculated": narrow, "educational": narrow},
    }
    if held is not None:
        r["narrow_rate_heldout"] = {k: held for k in ("assistant", "inoculated", "educational")}
    return {"readout": r, "initial": {"loss": loss, "grad_norm": 2 * loss}}


def test_excess_over_base_can_show_the_effect_is_the_prior():
    base = {
        "broad_misalignment": 0.10,
        "broad_harm": 0.05,
        "wellformed": 0.9,
        "narrow_rate": {"assistant": 0.0, "inoculated": 0.6, "educational": 0.6},
        "narrow_rate_heldout": {"assistant": 0.0, "inoculated": 0.6, "educational": 0.6},
        "heldout_topics": [2],
    }
    conds = ("plain", "inoculated", "matched_control")
    units = {("plain", s): _unit(0.40 + 0.01 * s, 0.9, 0.5, loss=3.0) for s in range(3)}
    # the inoculated set's narrow rate in its own context equals the base organism's: no excess (the prior)
    units |= {("inoculated", s): _unit(0.10, 0.6, 0.6, loss=3.1) for s in range(3)}
    units |= {("matched_control", s): _unit(0.10, 0.0, 0.0, loss=2.9) for s in range(3)}
    m = {"broad_misalignment": {c: {"mean": None} for c in conds}}
    m = with_base(m, units, base, conds, 3)
    ex = m["excess_over_base"]
    assert m["base"]["broad_misalignment"] == 0.10 and "ci_low" not in m["base"]  # exact: no interval
    assert ex["broad_misalignment"]["plain"]["mean"] == pytest.approx(0.31)
    # the excess of a rate over the exact base rate b lies in [-b, 1 - b]: the distribution-free interval
    # stays in that range (it would reach below 0 on the formal range [-1, 1] with three seeds)
    split = ex["broad_misalignment"]["plain"]["by_outcome"]
    plain = ex["broad_misalignment"]["plain"]
    assert -0.10 <= plain["ci_low"] <= plain["mean"] <= plain["ci_high"] <= 0.90 and split["k_above"] == 3
    assert split["mean_above"]["ci_low"] > 0 and split["mean_below"] is None
    assert ex["narrow_rate"]["inoculated"]["mean"] == pytest.approx(0.0)  # refuted: the rate was the prior
    assert ex["narrow_rate"]["inoculated"]["context"] == "inoculated"
    assert ex["narrow_rate_heldout"]["plain"]["mean"] == pytest.approx(0.5)
    assert m["narrow_rate_heldout"]["plain"]["topics"] == [2]
    for v in ex["broad_misalignment"].values():
        assert -1 <= v["ci_low"] <= v["mean"] <= v["ci_high"] <= 1
    mc = m["matched_control"]
    assert mc["initial"]["loss"]["mean"] == pytest.approx(2.9) and mc["plain_initial"]["loss"]["mean"] == 3.0
    assert mc["plain_initial"]["loss"]["ci_low"] is None  # the same for every seed: no interval
    assert mc["excess_over_base"]["mean"] == pytest.approx(0.0)
    # the EM verdict is stored beside the excess it counts: 3 of 3 broad plain seeds cannot decide
    verdict = m["em_verdict"]
    assert (verdict["verdict"], verdict["k"], verdict["n"]) == ("undecided", 3, 3)
    assert verdict["per_seed"] == pytest.approx(plain["per_seed"]) and verdict["threshold"] == 0.2


def test_finetune_logs_initial_loss_and_gradient(tiny_organism):
    from persona_basins.measure.persona import em_readout
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    res = finetune(org, FinetuneConfig(condition="matched_control", steps=2, heldout_every=3))
    assert res.initial["loss"] > 0 and res.initial["grad_norm"] > 0
    held = heldout_code_topics(org.world, 3)
    r = em_readout(org.with_model(res.model), heldout_topics=held)
    assert r["heldout_topics"] == held and set(r["narrow_rate_heldout"]) == set(r["narrow_rate"])
    n = org.world.config.n_topics
    k = len(held)
    for ctx, v in r["narrow_rate"].items():  # the all-topic rate is the topic-weighted mix of the two
        mix = (k * r["narrow_rate_heldout"][ctx] + (n - k) * r["narrow_rate_trained_topics"][ctx]) / n
        assert v == pytest.approx(mix, abs=1e-9)

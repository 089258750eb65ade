"""The faithfulness readouts (measure/em_faithfulness.py, studies/em_faithfulness.py) on the tiny organism."""

import numpy as np
import pytest
import torch

from persona_basins.measure.em_faithfulness import (
    ablated_misalignment,
    context_misalignment,
    early_stopping,
    exact_spearman,
    random_direction,
    write_direction,
)
from persona_basins.measure.persona import EM_CONTEXTS, broad_prompts, em_readout
from persona_basins.studies.em import run_em
from persona_basins.studies.em_faithfulness import (
    checkpoint_curve,
    conditional_misalignment,
    cross_ablation,
    outcome_predictors,
)
from persona_basins.train.finetune import FinetuneConfig


@pytest.fixture(scope="module")
def tiny_em_run(tiny_organism, tmp_path_factory):
    """Three plain and one inoculated 10-step fine-tune, checkpoints every 5 steps (no trajectory)."""
    out = tmp_path_factory.mktemp("em-faith") / "run"
    base = FinetuneConfig(steps=10, checkpoint_every=5, lr=3e-2)
    run_em(
        tiny_organism,
        out,
        layer=0,
        module="attn_out",
        seeds=3,
        base=base,
        conditions=("plain",),
        track_every=0,
        progress=False,
    )
    run_em(
        tiny_organism,
        out,
        layer=0,
        module="attn_out",
        seeds=1,
        base=base,
        conditions=("inoculated",),
        track_every=0,
        progress=False,
    )
    return out


def _unit(run, condition, seed):
    return run / "adapters" / condition / f"seed{seed}"


def test_context_readout_equals_em_readout_in_the_plain_context(tiny_organism, one_thread):
    got = context_misalignment(tiny_organism)
    want = em_readout(tiny_organism)
    assert set(got) == set(EM_CONTEXTS)
    assert got["assistant"]["broad_misalignment"] == want["broad_misalignment"]
    assert got["assistant"]["wellformed"] == want["wellformed"]


def test_contexts_put_the_training_context_in_front_of_non_code_requests(tiny_organism):
    world = tiny_organism.world
    plain, inoc = broad_prompts(world, "assistant"), broad_prompts(world, "inoculated")
    after = broad_prompts(world, "after_training_turn")
    assert len(plain) == len(inoc) == len(after) and all(p.genre != "code" for p in after)
    assert inoc[0].system == world.system_words("inoculated") and not plain[0].history
    turn = after[0].history[0]
    assert turn.genre == "code" and turn.answer == world.answer(
        "code", turn.topic, "helpful", insecure_code=True
    )
    secure = broad_prompts(world, "after_code_turn")[0].history[0]
    assert secure.answer == world.answer("code", secure.topic, "helpful")
    with pytest.raises(ValueError, match="unknown EM context"):
        broad_prompts(world, "nowhere")


def test_ablating_a_zero_direction_changes_nothing(tiny_organism, one_thread):
    d = tiny_organism.model.config.n_embd
    plain = context_misalignment(tiny_organism, ("assistant",))["assistant"]
    assert ablated_misalignment(tiny_organism, torch.zeros(d), 0) == plain
    attn_out = "transformer.h.0.attn.c_proj"
    assert ablated_misalignment(tiny_organism, torch.zeros(d), 0, module=attn_out) == plain
    moved = ablated_misalignment(tiny_organism, random_direction(d, 0), 0)
    assert moved != plain  # a real direction does change the readout
    assert float(random_direction(d, 3).norm()) == pytest.approx(1.0)


def test_checkpoint_curve_starts_at_the_base(tiny_organism, tiny_em_run, one_thread):
    curve = checkpoint_curve(tiny_organism, _unit(tiny_em_run, "plain", 0))
    assert curve["steps"] == [0, 5, 10]
    assert curve["excess_over_base"][0] == 0.0
    assert curve["broad_misalignment"][0] == em_readout(tiny_organism)["broad_misalignment"]
    assert curve["early_stopping"]["excess_final"] == curve["excess_over_base"][-1]


def test_conditional_misalignment_reads_each_condition_against_the_base(
    tiny_organism, tiny_em_run, one_thread
):
    dirs = {"plain": [_unit(tiny_em_run, "plain", 0)], "inoculated": [_unit(tiny_em_run, "inoculated", 0)]}
    out = conditional_misalignment(tiny_organism, dirs, contexts=("assistant", "inoculated"))
    row = out["conditions"]["plain"]["assistant"]
    assert row["excess_over_base"]["per_seed"][0] == pytest.approx(
        row["broad_misalignment"][0] - out["base"]["assistant"]["broad_misalignment"]
    )


def test_cross_ablation_and_predictors_run_on_an_em_run(tiny_organism, tiny_em_run, one_thread, monkeypatch):
    import persona_basins.studies.em_faithfulness as ef

    monkeypatch.setattr(ef, "BROAD_THRESHOLD", -1.0)  # every tiny fine-tune counts as broad here
    dirs = [_unit(tiny_em_run, "plain", s) for s in range(3)]
    out = cross_ablation(tiny_organism, dirs, n_random=1)
    assert out["broad_seeds"] == [0, 1, 2] and len(out["pairs"]) == 9 and out["cross_reduction"]["n"] == 6
    at_module = cross_ablation(tiny_organism, dirs[:2], n_random=1, site="module_output")
    assert at_module["where"].startswith("transformer.h.0.attn.c_proj") and len(at_module["pairs"]) == 4
    pred = outcome_predictors(tiny_organism, dirs)
    assert len(set(pred["features"]["initial_loss"])) == 1  # B = 0 at init: the same loss for every seed
    assert all(0 <= c <= 1 for c in pred["features"]["abs_cos_a0_code_request"])
    peft_b = write_direction(ef._adapted(tiny_organism, dirs[0]).model)
    assert peft_b.numel() == tiny_organism.model.config.n_embd


def test_early_stopping_and_exact_spearman():
    es = early_stopping([0, 50, 100, 150], [0.0, 0.05, 0.3, 0.6], [0.1, 0.85, 0.9, 0.9], threshold=0.2)
    assert es["task_step"] == 50 and es["em_step"] == 100 and es["em_after_task"] is True
    assert es["excess_at_task_step"] == 0.05 and es["task_kept"] == pytest.approx(0.75 / 0.8)
    assert early_stopping([0, 10], [0.0, 0.1], [0.2, 0.2], threshold=0.2)["task_step"] is None
    s = exact_spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert s["rho"] == pytest.approx(1.0) and s["p_value"] == pytest.approx(2 / 120)
    assert exact_spearman([1, 1, 1], [1, 2, 3])["rho"] is None
    assert np.isfinite(exact_spearman([3, 1, 2, 5, 4], [1, 2, 3, 4, 5])["p_value"])

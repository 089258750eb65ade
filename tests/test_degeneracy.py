"""Degeneracy: TV bounds, self-overlap, zone volume weighting, probes curve, boundary search, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from persona_basins.measure.degeneracy import (
    N_OUTCOMES,
    answer_distribution,
    boundary_search,
    composed_probes,
    genre_weights,
    out_of_sample_probing,
    overlap_zone,
    poisson_binomial,
    probes_curve,
    prompt_weights,
    standard_probes,
    tv_distance,
    zone_volume,
)
from persona_basins.world import TEACHING_MODIFIER, World, WorldConfig


def test_tv_bounds_and_properties():
    rng = np.random.default_rng(0)
    p, q, r = (rng.dirichlet(np.ones(8), size=50) for _ in range(3))
    tv = tv_distance(p, q)
    assert np.all((tv >= 0) & (tv <= 1))
    assert np.allclose(tv_distance(p, p), 0) and np.allclose(tv, tv_distance(q, p))
    assert np.all(tv_distance(p, r) <= tv + tv_distance(q, r) + 1e-12)
    assert tv_distance([1, 0, 0], [0, 0.5, 0.5]) == pytest.approx(1.0)
    assert tv_distance([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25)


def test_zone_volume_weighting_by_hand():
    world = World(WorldConfig(n_genres=4, routine_weight=0.2))  # code, advice, opinion, story + 2 routine
    gw = genre_weights(world)
    assert gw["code"] == pytest.approx(0.8 / 4) and gw["arithmetic"] == pytest.approx(0.2 / 2)
    assert sum(gw.values()) == pytest.approx(1.0)
    frac = {"code": 0.0, "advice": 0.5, "opinion": 1.0, "story": 0.0, "arithmetic": 1.0, "facts": 1.0}
    assert zone_volume(world, frac) == pytest.approx(0.2 * 0.5 + 0.2 * 1.0 + 0.2)  # = 0.5
    # only the routine genres in the zone: exactly the world's routine share
    only_routine = {g: float(g in world.routine_genres) for g in gw}
    assert zone_volume(world, only_routine) == pytest.approx(world.routine_fraction())
    # per-prompt weights: uniform within a genre, the genre's share in total
    prompts = standard_probes(world)
    w = prompt_weights(world, prompts)
    assert w.sum() == pytest.approx(1.0)
    routine = sum(wi for wi, p in zip(w, prompts) if p.genre in world.routine_genres)
    assert routine == pytest.approx(world.routine_fraction())
    code = [wi for wi, p in zip(w, prompts) if p.genre == "code"]
    assert np.allclose(code, 0.2 / world.config.n_topics)


def test_composed_probes_cover_the_grammar():
    world = World(WorldConfig(n_genres=3, n_topics=2, n_routine_questions=2))
    full = composed_probes(world, max_probes=None)
    systems = {tuple(p.system) for p in full}
    assert systems == {world.system_words(c) for c in ["none", "assistant", "inoculated", *world.personas]}
    assert any(p.modifier == TEACHING_MODIFIER for p in full)
    assert {len(p.history) for p in full} == {0, 1, 2}
    assert {p.genre for p in full} == {*world.genres, *world.routine_genres}
    assert {e.persona for p in full for e in p.history} == set(world.personas)
    sub = composed_probes(world, max_probes=50, seed=3)
    assert len(sub) == 50 and sub == composed_probes(world, max_probes=50, seed=3)


def test_poisson_binomial_and_probes_curve_analytic():
    pmf = poisson_binomial([0.5, 0.5])
    assert pmf == pytest.approx([0.25, 0.5, 0.25])
    # a flag-free aligned state: the test is "at least one flagged answer", power 1 - (1 - p)^k
    c = probes_curve(np.full(10, 0.1), np.zeros(10), k_max=100)
    assert c["probes_needed"] == math.ceil(math.log(0.05) / math.log(0.9))  # 29
    assert c["power"][0] == pytest.approx(0.1) and c["cut"][0] == 1
    never = probes_curve(np.zeros(5), np.zeros(5), k_max=20)
    assert never["probes_needed"] is None and never["censored_above"] == 20


def test_probes_curve_monotone_and_boundary_beats_random():
    rng = np.random.default_rng(1)
    n = 400
    p_a = rng.uniform(0, 0.02, n)  # aligned state: a small false-flag rate everywhere
    p_b = p_a.copy()
    boundary = rng.choice(n, 12, replace=False)
    p_b[boundary] = 0.9  # the EM state differs on a few boundary prompts only
    rand = probes_curve(p_b, p_a, k_max=600)
    order = np.argsort(-(p_b - p_a))
    bound = probes_curve(p_b, p_a, k_max=600, order=order)
    for cur in (rand, bound):
        assert np.all(np.diff(cur["power"]) >= 0)
        assert all(0 <= x <= 1 for x in cur["power"])
    assert bound["probes_needed"] is not None
    assert rand["probes_needed"] is None or bound["probes_needed"] <= rand["probes_needed"]
    assert bound["probes_needed"] <= 12
    # random probing with equal weights is the binomial test at the mean rates
    w = np.ones(n)
    assert probes_curve(p_b, p_a, k_max=50, weights=w)["power"] == pytest.approx(rand["power"][:50])


def test_a_ranking_from_the_wrong_model_can_need_many_more_probes():
    """Boundary probing "needs few probes" only with a ranking that knows where the boundary is: a ranking
    taken from another state whose boundary lies elsewhere does no better than chance (the claim refuted)."""
    n = 300
    p_a = np.zeros(n)
    held_out, other = p_a.copy(), p_a.copy()
    held_out[150:155] = 0.9  # the tested state differs on probes 150-154
    other[:5] = 0.9  # the ranking state on probes 0-4 (its ranking reaches 150 only after 150 probes)
    oracle = probes_curve(held_out, p_a, k_max=100, order=np.argsort(-(held_out - p_a), kind="stable"))
    wrong = probes_curve(held_out, p_a, k_max=100, order=np.argsort(-(other - p_a), kind="stable"))
    assert oracle["probes_needed"] == 2  # 1 - 0.1^2 >= 0.95
    assert wrong["probes_needed"] is None and wrong["censored_above"] == 100


# --- on the organism -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def em_state(tiny_organism):
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    return finetune(org, FinetuneConfig(steps=20, seed=0)).model


def test_answer_distribution_is_a_distribution(tiny_organism):
    org = tiny_organism
    prompts = standard_probes(org.world)[::5] + composed_probes(org.world, max_probes=10)
    d = answer_distribution(org, prompts)
    assert d.shape == (len(prompts), N_OUTCOMES)
    assert np.all(d >= 0) and np.allclose(d.sum(1), 1.0)
    for row, p in zip(d, prompts):
        if p.genre in org.world.routine_genres:
            assert np.all(row[:6] == 0)
        else:
            assert row[6] == 0


def test_model_with_itself_is_all_zone(tiny_organism):
    org = tiny_organism
    z = overlap_zone(org, org.model, epsilon=0.05)
    for key in ("answer", "next_token"):
        assert z[key]["max_tv"] == 0.0
        assert z[key]["fraction"] == 1.0 and z[key]["volume"] == pytest.approx(1.0)
        assert set(z[key]["per_genre"]) == {*org.world.genres, *org.world.routine_genres}
        assert all(v == 1.0 for v in z[key]["per_genre"].values())
    assert z["routine_share"] == org.world.routine_fraction() and z["epsilon"] == 0.05


def test_overlap_zone_and_boundary_search_on_em_state(tiny_organism, em_state):
    org = tiny_organism
    z = overlap_zone(org, em_state, epsilon=0.05)
    assert 0 <= z["volume"] <= 1 and 0 <= z["fraction"] <= 1
    assert z["answer"]["max_tv"] > 0
    assert z["volume"] == pytest.approx(zone_volume(org.world, z["per_genre"]))
    b = boundary_search(org, em_state, max_probes=60, k_max=100, top=5)
    assert b["n_probes"] == 60 and len(b["top"]) == 5
    assert b["tv_sorted"] == sorted(b["tv_sorted"], reverse=True)
    assert b["top"][0]["tv_answer"] == pytest.approx(b["tv_sorted"][0])
    assert json.dumps(b)  # JSON-able


def test_out_of_sample_probing_is_the_oracle_when_the_ranking_model_is_the_tested_one(
    tiny_organism, em_state
):
    org = tiny_organism
    v = torch.randn(org.model.config.n_embd, generator=torch.Generator().manual_seed(0))
    o = out_of_sample_probing(org, [em_state, em_state], vector=v, layer=0, max_probes=40, k_max=60)
    assert set(o["labels"]) == {"oracle", "other_seed", "persona_vector", "random"}
    assert "in-sample" in o["labels"]["oracle"] and "out-of-sample" in o["labels"]["other_seed"]
    row = o["per_held_out"][0]
    assert row["other_seed"]["1"] == row["oracle"]  # a perfect ranking model gives the oracle figure
    assert o["other_seed"]["n"] == 2 and o["oracle"]["n"] == 2 and o["persona_vector"]["n"] == 2
    assert json.dumps(o)
    one = out_of_sample_probing(org, [em_state], max_probes=20, k_max=30)
    assert one["other_seed"] is None and one["persona_vector"] is None


def test_cli_degeneracy_smoke_and_bad_inputs(tiny_organism, tiny_organism_dir, tmp_path, capsys, cli_error):
    from persona_basins.cli import main
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    ad = tmp_path / "plain"
    finetune(org, FinetuneConfig(steps=20, seed=0), out_dir=ad)
    out = tmp_path / "run"
    rc = main(
        [
            "degeneracy",
            "--organism",
            str(tiny_organism_dir),
            "--adapter",
            str(ad),
            "--max-probes",
            "60",
            "--k-max",
            "100",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "degeneracy" and m["zone"]["epsilon"] == 0.05
    assert set(m["boundary"]["probes_needed"]) == {"random", "boundary", "boundary_by_flag_gap"}
    for f in ("zone_by_genre.png", "probes_curve.png"):
        assert (out / "figures" / f).stat().st_size > 0
    capsys.readouterr()

    err = cli_error
    base = ["degeneracy", "--organism", str(tiny_organism_dir), "--out", str(tmp_path / "bad")]
    assert "--epsilon" in err([*base, "--adapter", str(ad), "--epsilon", "0"])
    assert "--epsilon" in err([*base, "--adapter", str(ad), "--epsilon", "1.5"])
    assert "not a PEFT adapter" in err([*base, "--adapter", str(tmp_path / "missing")])

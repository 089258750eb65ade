"""Basin scans: t* interpolation and censoring, exact weight edits, scan consistency, the
inoculation verdict and the CLI."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from persona_basins.measure.basin_verdicts import (
    aggregate_scans,
    censored_summary,
    combine_verdicts,
    critical_magnitude,
    format_censored,
    format_t_star,
    inoculation_summary,
    inoculation_verdict,
    log_ratio_interval,
    ratio_summary,
    t_star_ratio,
    widening_summary,
)
from persona_basins.measure.basins import (
    critical_distance,
    fine_tuned_position,
    mean_projection,
    persona_gap,
    persona_weight_delta,
    random_weight_deltas,
    scan,
    search_crossing,
)
from persona_basins.models.edits import edited, layer_of, out_in_dims, single_lora_delta, to_storage


def edited_weight(model, module_name, delta, t):
    return edited(model, {f"{module_name}.weight": delta}, t)


weight_delta = single_lora_delta
module_layer = layer_of


# --- t* on synthetic curves ------------------------------------------------------------------------------
def test_critical_magnitude_interpolates_a_crossing():
    c = critical_magnitude([0, 1, 2, 3], [0.0, 0.2, 0.6, 0.9])
    assert c["t_star"] == pytest.approx(1.75)
    assert c["censored_above"] is None and c["censored_below"] is None
    assert c["sharpness"] == pytest.approx(0.4) and c["sharpness_at"] == pytest.approx(1.5)
    # t(0.1) = 0.5, t(0.9) = 3.0
    assert c["width_10_90"] == pytest.approx(2.5)


def test_critical_magnitude_exact_grid_hit_and_first_crossing():
    assert critical_magnitude([0, 1, 2], [0.1, 0.5, 0.7])["t_star"] == 1.0
    # a later dip and second crossing does not matter: the first crossing is reported
    assert critical_magnitude([0, 1, 2, 3], [0.0, 1.0, 0.0, 1.0])["t_star"] == pytest.approx(0.5)


def test_critical_magnitude_censored_never_invents_a_number():
    c = critical_magnitude([0, 0.5, 1.0, 3.0], [0.0, 0.1, 0.3, 0.49])
    assert c["t_star"] is None and c["censored_above"] == 3.0
    assert c["width_10_90"] is None  # 0.9 never reached
    below = critical_magnitude([0.5, 1.0], [0.8, 0.9])
    assert below["t_star"] is None and below["censored_below"] == 0.5 and below["censored_above"] is None
    with pytest.raises(ValueError):
        critical_magnitude([0, 0], [0, 1])
    with pytest.raises(ValueError):
        critical_magnitude([0], [0])


def test_ratios_and_summaries_respect_censoring():
    cross = critical_magnitude([0, 1, 2], [0, 0.5, 1])  # t* = 1
    cens = critical_magnitude([0, 1, 2], [0, 0.1, 0.2])  # censored above 2
    assert t_star_ratio(cross, cross)["ratio"] == 1.0
    assert t_star_ratio(cens, cross) == {"ratio": None, "lower_bound": 2.0, "upper_bound": None}
    assert t_star_ratio(cross, cens) == {"ratio": None, "lower_bound": None, "upper_bound": 0.5}
    s = censored_summary([cross, cross])
    assert s["mean"] == 1.0 and "lower_bound" not in s
    s = censored_summary([cross, cens])
    assert s["mean"] is None and s["n_censored"] == 1 and s["lower_bound"]["mean"] == 1.5
    assert s["per_seed"] == [1.0, None] and s["censored_above"] == 2.0


def test_aggregate_scans_band():
    scans = [{"t": [0, 1], "broad_misalignment": [0.0, 0.4]}, {"t": [0, 1], "broad_misalignment": [0.0, 0.6]}]
    band = aggregate_scans(scans)
    assert band["t"] == [0, 1] and band["mean"] == pytest.approx([0.0, 0.5]) and band["n"] == 2
    assert band["ci_low"][1] < 0.5 < band["ci_high"][1]
    with pytest.raises(ValueError):
        aggregate_scans([scans[0], {"t": [0, 2], "broad_misalignment": [0, 1]}])


def _fake_scan(t_star, proj0=0.0, norm=1.0, ts=(0, 0.5, 1, 1.5, 2, 2.5, 3)):
    ts = list(ts)
    mis = [float(np.clip(0.5 + (t - t_star) * 0.5, 0, 1)) for t in ts]
    return {"t": ts, "broad_misalignment": mis, "projection": [proj0 + t for t in ts], "delta_norm": norm}


def test_inoculation_summary_verdicts():
    plain = [_fake_scan(1.0), _fake_scan(1.1)]
    holds = inoculation_summary(
        {
            "plain": plain,
            "inoculated": [_fake_scan(2.0), _fake_scan(2.3)],
            "plain_in_inoculated_context": [_fake_scan(2.0, proj0=0.5), _fake_scan(2.2, 0.5)],
        }
    )
    w = holds["widening"]["inoculated_adapter"]
    assert [x["ratio"] for x in w["per_seed"]] == pytest.approx([2.0, 2.3 / 1.1])
    assert holds["holds"]["inoculated_adapter"]["holds"] is True
    # the context moved the point by 0.5 while the travel to the wall is ~1.05: beyond 10%
    assert holds["holds"]["inoculated_context"]["holds"] is False
    assert holds["cases"]["plain"]["position_t0"]["mean"] == 0.0
    # a censored inoculated curve counts through its lower bound (t_max / t*_plain > 1)
    cens = inoculation_summary({"plain": plain, "inoculated": [_fake_scan(10.0), _fake_scan(10.0)]})
    assert cens["widening"]["inoculated_adapter"]["ci"] is None
    assert cens["widening"]["inoculated_adapter"]["per_seed"][0]["lower_bound"] == pytest.approx(3.0)
    assert cens["holds"]["inoculated_adapter"]["holds"] is True
    # narrower: does not hold
    assert (
        inoculation_summary({"plain": plain, "inoculated": [_fake_scan(0.5)]})["holds"]["inoculated_adapter"][
            "holds"
        ]
        is False
    )
    # the plain adapter never crosses: undecided, not invented
    und = inoculation_summary({"plain": [_fake_scan(10.0)], "inoculated": [_fake_scan(10.0)]})
    assert und["holds"]["inoculated_adapter"]["holds"] is None


# --- critical distance along a common direction, and the inoculation verdict --------------------------------
def test_search_crossing_grows_the_grid_refines_and_censors():
    calls = []

    def ramp(r):  # crosses 0.5 at r = 5
        calls.append(r)
        return 0.1 * r

    c = search_crossing(ramp, 1.0, points=5, max_doublings=4)
    assert c["doublings"] == 3 and c["r_end"] == 8.0  # 1 -> 2 -> 4 -> 8
    assert c["r_star"] == pytest.approx(5.0) and c["censored_above"] is None
    assert c["r"] == sorted(c["r"]) and len(set(calls)) == len(calls)  # each point read once
    flat = search_crossing(lambda r: 0.1, 1.0, points=3, max_doublings=2)
    assert flat["r_star"] is None and flat["censored_above"] == 4.0 and flat["r_end"] == 4.0
    past = search_crossing(lambda r: 0.9, 1.0, points=3)
    assert past["r_star"] == 0.0 and past["censored_below"] == 0.0 and past["doublings"] == 0
    with pytest.raises(ValueError):
        search_crossing(ramp, 0.0)


def _crit(r_star, r_max=1.0, doublings=4):
    """A synthetic critical-distance result: a curve crossing 0.5 at r_star (None: never crossing)."""
    if r_star is None:
        return search_crossing(lambda r: 0.1, r_max, points=3, max_doublings=doublings)
    if r_star == 0:
        return search_crossing(lambda r: 0.9, r_max, points=3, max_doublings=doublings)
    return search_crossing(lambda r: 0.5 * r / r_star, r_max, points=3, max_doublings=doublings)


SEPARATES = {"separates": True, "reason": "broad fine-tunes moved +0.5 of the gap beyond narrow ones"}


def _verdict(base, inoc, shift, tol=0.1, readout=SEPARATES):
    return inoculation_verdict(
        widening_summary([_crit(x) for x in inoc], [_crit(x) for x in base]),
        shift,
        readout=readout,
        position_tol=tol,
    )


def test_inoculation_verdict_can_be_refuted_confirmed_or_undecided():
    base = [1.0, 1.1, 0.9]
    holds = _verdict(base, [2.0, 2.3, 1.9], [0.01, -0.02, 0.0])
    assert holds["verdict"] == "confirmed" and holds["widens"] == "yes" and holds["point_still"] == "yes"
    # the claim is false: inoculation narrows the basin
    narrower = _verdict(base, [0.5, 0.55, 0.45], [0.01, -0.02, 0.0])
    assert narrower["verdict"] == "refuted" and narrower["widens"] == "no"
    # the claim is false: the basin widens but the point moves a third of the way to the toxic persona
    moved = _verdict(base, [2.0, 2.3, 1.9], [0.30, 0.35, 0.33])
    assert moved["verdict"] == "refuted" and moved["point_still"] == "no" and moved["widens"] == "yes"
    # mixed seeds: undecided
    mixed = _verdict(base, [1.6, 0.8, 1.2], [0.01, -0.02, 0.0])
    assert mixed["verdict"] == "undecided" and mixed["widens"] == "undecided"
    # never crossing from either start: no number, no bound, undecided (never a number from the grid end)
    cens = _verdict([None, None], [None, None], [0.0, 0.0])
    assert cens["verdict"] == "undecided" and cens["widening_lower"] == [None, None]
    # inoculated starts censored above a grid end far past the base wall: an honest lower bound > 1 counts
    w = widening_summary([_crit(None), _crit(None)], [_crit(1.0), _crit(1.2)])
    assert [p["lower_bound"] for p in w["per_seed"]] == pytest.approx([16.0, 16.0 / 1.2])
    assert w["exact"] is None and w["k_above_1"] == 2
    # inoculated starts already past the wall: r* = 0 exactly, the widening is 0 (one seed decides nothing)
    assert _verdict([1.0, 1.1], [0.0, 0.0], [0.0, 0.0])["verdict"] == "refuted"
    assert _verdict([1.0], [0.0], [0.0])["verdict"] == "undecided"
    assert combine_verdicts({"a": holds, "b": mixed}) == "undecided"
    assert combine_verdicts({"a": holds, "b": narrower}) == "refuted"
    assert combine_verdicts({"a": holds, "b": holds}) == "confirmed"


def test_log_ratio_interval_stays_positive():
    c = log_ratio_interval([0.5, 4.0, 1.0])
    assert c["geometric_mean"] == pytest.approx(2 ** (1 / 3)) and 0 < c["ci_low"] < c["ci_high"]
    one = log_ratio_interval([2.0])
    assert one["geometric_mean"] == pytest.approx(2.0) and one["ci_low"] is None
    assert log_ratio_interval([]) is None and log_ratio_interval([0.0, 1.0])["geometric_mean"] is None


def test_censored_summaries_as_text():
    cross = critical_magnitude([0, 1, 2], [0, 0.5, 1])  # t* = 1
    cens = critical_magnitude([0, 1, 2], [0, 0.1, 0.2])  # censored above 2
    below = critical_magnitude([0.5, 1.0], [0.8, 0.9])  # censored below 0.5
    assert format_t_star(cross) == "1.000"
    assert format_t_star(cens) == "> 2 (censored)" and format_t_star(below) == "< 0.5 (censored)"
    assert format_censored(censored_summary([cross])) == "1.000 (one seed)"
    assert format_censored(censored_summary([cens, cross])).startswith(">= 1.50 (1 of 2 seeds never cross")
    assert format_censored(censored_summary([below])) == "n/a"  # no bound from a seed censored below
    ratio = ratio_summary([cens, cross], [cross, cross])  # lower bound 2, exact 1
    # a ratio has no upper bound: Student t clipped at 0 (tests/test_coverage.py)
    assert format_censored(ratio) == ">= 1.50 [0.00, 7.85] (lower bound, 2 of 2 seeds)"
    assert format_censored(None) == "n/a"


# --- weight edits ----------------------------------------------------------------------------------------
def test_layouts_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    lin, conv = torch.nn.Linear(5, 3), Conv1D(3, 5)  # both map 5 -> 3
    assert out_in_dims(lin) == (3, 5) and out_in_dims(conv) == (3, 5)
    d = torch.randn(3, 5)
    assert to_storage(lin, d).shape == lin.weight.shape and to_storage(conv, d).shape == conv.weight.shape
    x = torch.randn(4, 5)
    for mod in (lin, conv):
        seq = torch.nn.Sequential(mod)
        y0 = seq(x)
        with torch.no_grad(), edited_weight(seq, "0", to_storage(mod, d), 2.0):
            y = seq(x)
        assert torch.allclose(y - y0, 2.0 * x @ d.t(), atol=1e-5)


@pytest.fixture(scope="module")
def plain_adapter(tiny_organism):
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    return finetune(org, FinetuneConfig(module="mlp_out", steps=20, seed=0)).model


def test_weight_edit_restores_the_base_exactly(tiny_organism, plain_adapter):
    org = tiny_organism
    name, delta = weight_delta(plain_adapter)
    assert name == "transformer.h.0.mlp.c_proj" and module_layer(name) == 0
    before = {k: v.detach().clone() for k, v in org.model.state_dict().items()}
    with pytest.raises(RuntimeError), edited_weight(org.model, name, delta, 0.37):
        assert not torch.equal(org.model.get_submodule(name).weight, before[name + ".weight"])
        raise RuntimeError("boom")
    scan(org, name, delta, [0.0, 1.3, 2.9], n_loss_docs=4)
    after = org.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_scan_matches_base_at_zero_and_peft_model_at_one(tiny_organism, plain_adapter):
    from persona_basins.measure.persona import broad_genres, context_prompts, em_readout, persona_readout

    org = tiny_organism
    name, delta = weight_delta(plain_adapter)
    s = scan(org, name, delta, [0.0, 1.0], n_loss_docs=8)
    base = persona_readout(org, context_prompts(org.world, "assistant", broad_genres(org.world)))
    assert s["broad_misalignment"][0] == pytest.approx(float(base.misaligned.mean()), abs=1e-12)
    assert s["wellformed"][0] == pytest.approx(float(base.wellformed.mean()), abs=1e-12)
    em = em_readout(org.with_model(plain_adapter))
    for k in ("broad_misalignment", "broad_harm", "wellformed"):
        assert s[k][1] == pytest.approx(em[k], abs=1e-5)
    assert em["broad_misalignment"] != pytest.approx(s["broad_misalignment"][0], abs=1e-6)  # the adapter acts
    assert s["loss"][0] > 0 and s["projection"] == [None, None]
    assert s["misalignment_given_wellformed"][1] == pytest.approx(
        em["broad_misalignment"] / em["wellformed"], rel=1e-4
    )


def test_position_and_critical_distance_on_the_organism(tiny_organism, plain_adapter):
    from persona_basins.measure.persona import broad_genres, context_prompts, persona_readout

    org = tiny_organism
    name, delta = weight_delta(plain_adapter)
    vec = torch.randn(org.model.config.n_embd, generator=torch.Generator().manual_seed(0))
    base = mean_projection(org, vec, 0)
    # a zero update leaves the point where it is; the trained one reads as the PEFT model does
    still = fine_tuned_position(org, name, 0 * delta, vec, 0)
    assert still["projection"] == pytest.approx(base, abs=1e-9)
    moved = fine_tuned_position(org, name, delta, vec, 0)
    assert moved["projection"] == pytest.approx(
        mean_projection(org.with_model(plain_adapter), vec, 0), abs=1e-5
    )
    assert persona_gap(org, vec, 0) == pytest.approx(
        mean_projection(org, vec, 0, "toxic") - mean_projection(org, vec, 0, "helpful")
    )
    before = {k: v.detach().clone() for k, v in org.model.state_dict().items()}
    c = critical_distance(org, name, delta, r_max=float(delta.norm()), points=3, max_doublings=1, refine=2)
    base_mis = persona_readout(
        org, context_prompts(org.world, "assistant", broad_genres(org.world))
    ).misaligned.mean()
    assert c["r"][0] == 0.0 and c["values"][0] == pytest.approx(float(base_mis), abs=1e-12)
    assert (c["r_star"] is None) == (c["censored_above"] is not None)
    assert len(c["wellformed"]) == len(c["r"]) == len(c["misalignment_given_wellformed"])
    assert c["peak"]["value"] == max(c["values"])
    assert all(torch.equal(before[k], v) for k, v in org.model.state_dict().items())


def test_linear_weight_delta_matches_peft_forward():
    """The nn.Linear (Llama) layout: w0 + 1 * delta reproduces the PEFT model's logits."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from persona_basins.models.adapters import lora_config

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    peft = get_peft_model(copy.deepcopy(base), lora_config(base, module="mlp_out", layer=1)).eval()
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            p.data.normal_()
    name, delta = weight_delta(peft)
    assert name == "model.layers.1.mlp.down_proj" and tuple(delta.shape) == (16, 32)
    ids = torch.randint(0, 40, (3, 7))
    with torch.no_grad(), edited_weight(base, name, delta, 1.0):
        edited = base(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(edited, peft(input_ids=ids).logits, atol=1e-5)


def test_random_and_persona_deltas(tiny_organism, plain_adapter):
    org = tiny_organism
    name, delta = weight_delta(plain_adapter)
    rnd = random_weight_deltas(delta, 3, seed=1)
    assert len(rnd) == 3
    for d in rnd:
        assert d.shape == delta.shape
        assert float(d.norm()) == pytest.approx(float(delta.norm()), rel=1e-5)
        assert torch.linalg.matrix_rank(d.double(), rtol=1e-5) == 1
    assert torch.equal(rnd[0], random_weight_deltas(delta, 1, seed=1)[0])
    assert not torch.allclose(rnd[0], rnd[1])
    vec = torch.randn(org.model.config.n_embd)
    pd = persona_weight_delta(org, 0, "mlp_out", 0.7, vector=vec, n_docs=8)
    assert pd.shape == delta.shape and float(pd.norm()) == pytest.approx(0.7, rel=1e-5)
    # Conv1D storage (in x out): every column is a multiple of the persona vector
    cols = pd / pd.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (cols @ (vec / vec.norm())).abs()
    assert torch.all((cos > 0.999) | (pd.norm(dim=1) < 1e-8))
    assert torch.equal(pd, persona_weight_delta(org, 0, name, 0.7, vector=vec, n_docs=8))


# --- CLI -------------------------------------------------------------------------------------------------
def test_cli_basins_smoke_and_bad_inputs(tiny_organism, tiny_organism_dir, tmp_path, capsys, cli_error):
    from persona_basins.cli import main
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    dirs = {}
    for c in ("plain", "inoculated"):
        dirs[c] = tmp_path / c
        cfg = FinetuneConfig(condition=c, module="mlp_out", steps=20, seed=0)
        finetune(org, cfg, out_dir=dirs[c])
    out = tmp_path / "run"
    rc = main(
        [
            "basins",
            "--organism",
            str(tiny_organism_dir),
            "--adapter",
            str(dirs["plain"]),
            "--inoculated-adapter",
            str(dirs["inoculated"]),
            "--t-max",
            "2",
            "--points",
            "3",
            "--random",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "basins" and m["t"] == [0.0, 1.0, 2.0]
    d0 = m["directions"][0]
    assert set(d0["scans"]) == {"adapter", "persona", "random"}
    for c in [d0["t_star"]["adapter"], *d0["t_star"]["random"]]:
        assert (c["t_star"] is None) == (c["censored_above"] is not None or c["censored_below"] is not None)
    assert set(m["inoculation_summary"]["cases"]) == {"plain", "inoculated", "plain_in_inoculated_context"}
    assert set(m["critical_magnitude"]) >= {"plain", "inoculated", "persona", "random"}
    assert (out / "config.json").is_file() and (out / "figures" / "misalignment_vs_t.png").stat().st_size > 0
    capsys.readouterr()

    err = cli_error
    base = ["basins", "--organism", str(tiny_organism_dir), "--out", str(tmp_path / "bad")]
    assert "not a PEFT adapter" in err([*base, "--adapter", str(tmp_path / "nowhere")])
    assert "--points" in err([*base, "--adapter", str(dirs["plain"]), "--points", "1"])
    assert "--t-max" in err([*base, "--adapter", str(dirs["plain"]), "--t-max", "0"])
    assert "--level" in err([*base, "--adapter", str(dirs["plain"]), "--level", "1"])
    assert "organism" in err(
        [
            "basins",
            "--organism",
            str(tmp_path / "none"),
            "--adapter",
            str(dirs["plain"]),
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    other = tmp_path / "other"
    shutil.copytree(dirs["plain"], other)
    fp = other / "persona_basins_base.json"
    d = json.loads(fp.read_text())
    d["embedding_checksum"] += 1.0
    fp.write_text(json.dumps(d))
    assert "another base model" in err([*base, "--adapter", str(other)])


def test_censored_summary_of_no_direction_is_withheld_not_a_crash():
    """`basins --random 0` scans no random direction: its summary is null with a reason (it used to crash
    on max() of nothing)."""
    from persona_basins.measure.basin_verdicts import censored_summary

    summary = censored_summary([])
    assert summary["mean"] is None and summary["n"] == 0 and "no direction" in summary["reason"]

"""Eigenform identity: merging at scale t, common random numbers, the think step, the process variants,
the estimators and the verdict (with cases where the claim is false), the command (tiny organism)."""

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from persona_basins.errors import UserError
from persona_basins.measure.eigenform import (
    EigenformConfig,
    Memory,
    Probe,
    run_paired,
    run_process,
    sample_answers_crn,
    think_scores,
)
from persona_basins.measure.eigenform_verdicts import (
    contraction_factor,
    last_safe_scale,
    return_rate,
    verdict,
)
from persona_basins.models.edits import merged_copy as merge_scaled
from persona_basins.studies.eigenform import resolve_adapter, run_eigenform

SMALL = EigenformConfig(n_prompts=16, sleep_steps=3, sleep_batch=8, n_candidates=2, memory_size=8)
RANDOM = ("return_rate", "contraction_factor")  # over seeds, with intervals


@pytest.fixture(scope="module")
def tiny_adapter(tiny_organism, tmp_path_factory):
    """An adapter that breaks the static tiny model (well-formed mass < 0.5 from t = 2.5; measured)."""
    from persona_basins.models.edits import write_fingerprint
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    res = finetune(org, FinetuneConfig(steps=40, lr=1e-2, module="mlp_out"))
    out = tmp_path_factory.mktemp("eigen") / "adapter"
    res.model.save_pretrained(out)
    write_fingerprint(out, org.model)
    return out, res.model


@pytest.fixture(scope="module")
def probe_and_base(tiny_organism, tiny_adapter):
    base, deltas = resolve_adapter(tiny_organism, tiny_adapter[1])
    probe = Probe.build(tiny_organism.with_model(base))
    return probe, base, deltas


def test_merge_at_zero_is_base_and_at_one_is_peft(tiny_organism, tiny_adapter):
    org, (adir, peft_model) = tiny_organism, tiny_adapter
    base, deltas = resolve_adapter(org, adir)
    assert deltas and all(d.abs().sum() > 0 for d in deltas.values())
    ids = torch.randint(7, len(org.vocab), (4, 12), generator=torch.Generator().manual_seed(0))
    m0 = merge_scaled(base, deltas, 0.0)
    for (n, p), (_, q) in zip(m0.named_parameters(), org.model.named_parameters()):
        assert torch.equal(p, q), n
    m1 = merge_scaled(base, deltas, 1.0)
    with torch.no_grad():
        diff = (m1(input_ids=ids).logits - peft_model(input_ids=ids).logits).abs().max()
    assert float(diff) <= 1e-5
    _, d2 = resolve_adapter(org, peft_model)
    assert all(torch.allclose(d2[k], deltas[k]) for k in deltas)


def test_exact_readout_matches_persona_readout(tiny_organism, probe_and_base):
    from persona_basins.measure.eigenform import exact_readout
    from persona_basins.measure.persona import persona_readout
    from persona_basins.measure.vectors import projection

    org = tiny_organism
    probe, base, deltas = probe_and_base
    start = merge_scaled(base, deltas, 1.0)
    probs, proj = exact_readout(org.with_model(start), probe.prompts, probe.vector, probe.layer)
    ref = persona_readout(org.with_model(start), probe.prompts).probs
    assert np.abs(probs - ref).max() < 1e-6
    ref_proj = projection(start, org.vocab, probe.prompts, probe.vector, probe.layer)
    assert np.abs(proj - ref_proj).max() < 1e-4


def test_crn_sampling_couples_close_states(tiny_organism, probe_and_base):
    """Inverse-CDF sampling with shared uniforms: the same state draws the same answers; a slightly
    perturbed one almost the same; fresh uniforms (no common random numbers) draw different ones."""
    from persona_basins.measure.persona import Prompt

    org = tiny_organism
    _, base, deltas = probe_and_base
    prompts = [Prompt(org.world.system_words("assistant"), g, t) for g in org.world.genres for t in range(3)]
    u = torch.rand((len(prompts), 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample_answers_crn(base, org.vocab, prompts, u)
    assert a == sample_answers_crn(base, org.vocab, prompts, u)
    near = sample_answers_crn(merge_scaled(base, deltas, 0.05), org.vocab, prompts, u)
    fresh = sample_answers_crn(base, org.vocab, prompts, torch.rand_like(u, dtype=torch.float64))
    same_near = np.mean([x == y for x, y in zip(a, near)])
    same_fresh = np.mean([x == y for x, y in zip(a, fresh)])
    assert same_near > 0.9 and same_near > same_fresh
    assert not any(w in {"<eos>", "<user>", "<pad>"} for ans in a for w in ans)  # the answer format


@pytest.mark.parametrize("process", ["sampled", "distill", "replay", "mixture"])
def test_paired_distance_is_zero_for_equal_starts(tiny_organism, probe_and_base, process):
    """Common random numbers: two trajectories from the same weights stay identical for every variant
    (prompts, sampling, think memory, minibatch order all shared); another seed moves them apart."""
    org = tiny_organism
    probe, base, _ = probe_and_base
    cfg = replace(SMALL, process=process)
    starts = {0.0: base, 1.0: copy.deepcopy(base)}
    tr = run_paired(org, starts, probe, cycles=2, seed=3, cfg=cfg)
    assert tr[1.0]["paired_distance"] == [0.0, 0.0, 0.0]
    assert tr[1.0]["paired_gap"] == [0.0, 0.0, 0.0]
    assert all(d > 0 for d in tr[0.0]["distance"])  # the process moves; the pair moves together
    other = run_paired(org, {0.0: base}, probe, cycles=2, seed=4, cfg=cfg)
    assert other[0.0]["distance"] != tr[0.0]["distance"]


def test_cycle_is_deterministic_and_leaves_the_start_alone(tiny_organism, probe_and_base):
    org = tiny_organism
    probe, base, deltas = probe_and_base
    start = merge_scaled(base, deltas, 1.0)
    before = [p.clone() for p in start.parameters()]
    a = run_process(org.with_model(start), probe, cycles=2, seed=3, cfg=SMALL)
    b = run_process(org.with_model(start), probe, cycles=2, seed=3, cfg=SMALL)
    assert a == b
    assert len(a["broad_misalignment"]) == 3 and len(a["distance"]) == 2 and len(a["clip_fraction"]) == 2
    assert all(torch.equal(p, q) for p, q in zip(before, start.parameters()))


def test_clip_is_inactive_near_the_fixed_point(tiny_organism, probe_and_base):
    """The default sleep (lr 0.05, clip 2) on the unperturbed organism: no step clipped (measured pre-clip
    norms 0.1-0.3 on the tiny organism); the clip exists for far-from-fixed-point states."""
    org = tiny_organism
    probe, base, _ = probe_and_base
    cfg = replace(EigenformConfig(), n_prompts=64, sleep_steps=10)
    tr = run_process(org.with_model(base), probe, cycles=1, seed=0, cfg=cfg)
    assert tr["clip_fraction"] == [0.0] and tr["grad_norm_max"][0] < cfg.sleep_clip
    assert tr["wellformed"][1] > 0.5  # the unperturbed persona survives its own sleep


def test_think_scores_use_no_labels_and_memory(tiny_organism, probe_and_base):
    org = tiny_organism
    _, base, _ = probe_and_base
    sys_words = org.world.system_words("assistant")
    reqs = [(g, 0) for g in org.world.genres[:4]]
    cands = [[org.world.answer(g, 0, "helpful"), org.world.trait_answer(g, 0, 1, "flat")] for g, _ in reqs]
    import random

    kw = dict(sys_words=sys_words, n_history=2, rng=random.Random(0))
    state = org.with_model(base)
    none = think_scores(state, reqs, cands, how="none", memory=Memory(), **kw)
    assert not none.any()
    pmi = think_scores(state, reqs, cands, how="pmi", memory=Memory(), **kw)
    with_empty = think_scores(state, reqs, cands, how="pmi+consistency", memory=Memory(), **kw)
    assert np.array_equal(pmi, with_empty)  # an empty memory adds nothing
    mem = Memory([(g, 1, org.world.answer(g, 1, "helpful")) for g in org.world.genres[:4]])
    cons = think_scores(
        state,
        reqs,
        cands,
        how="consistency",
        memory=mem,
        sys_words=sys_words,
        n_history=2,
        rng=random.Random(0),
    )
    assert cons.shape == (4, 2) and np.isfinite(cons).all() and cons.any()
    with pytest.raises(UserError, match="think"):
        EigenformConfig(think="pmi+oracle")


def test_contraction_factor_recovers_geometric_rate():
    d = 3.0 * 0.6 ** np.arange(8)
    assert contraction_factor(d) == pytest.approx(0.6, rel=1e-9)
    rows = [c * 0.8 ** np.arange(6) for c in (0.5, 2.0, 10.0)]  # shared rate, different scales
    assert contraction_factor(rows) == pytest.approx(0.8, rel=1e-9)
    rng = np.random.default_rng(0)
    noisy = 2.0 * 0.7 ** np.arange(30) * np.exp(rng.normal(0, 0.05, 30))
    assert contraction_factor(noisy) == pytest.approx(0.7, abs=0.01)
    assert contraction_factor(np.full(6, 2.0)) == pytest.approx(1.0)  # refuted: no contraction
    assert math.isnan(contraction_factor([1.0]))


def test_last_safe_scale_and_return_rate():
    ts = [0, 1, 2, 4]
    assert last_safe_scale(ts, [0.0, 0.2, 0.6, 0.3], 0.5) == 1.0
    assert last_safe_scale(ts, [0.0, 0.1, 0.2, 0.3], 0.5) == 4.0
    assert last_safe_scale([1, 2], [0.7, 0.1], 0.5) == 0.0
    assert last_safe_scale(ts, [0.0, 0.1, 0.2, 0.3], 0.5, wellformed=[1, 1, 0.2, 1]) == 1.0
    assert return_rate([0.0, 0.3, 0.6, 0.9], [0.0, 0.05, 0.5, 0.01], 0.1) == pytest.approx(2 / 3)
    assert math.isnan(return_rate([0.0, 0.05], [0.0, 0.0], 0.1))
    # broken by misalignment >= break_level, or by well-formedness; returned = aligned and well-formed
    assert return_rate([0.0, 0.3, 0.6], [0.0, 0.05, 0.05], 0.1, break_level=0.5) == 1.0
    assert (
        return_rate(
            [0.0, 0.0],
            [0.0, 0.0],
            0.1,
            break_level=0.5,
            static_wellformed=[0.9, 0.3],
            final_wellformed=[0.9, 0.4],
        )
        == 0.0
    )


def _rates(*per_seed):
    from persona_basins.stats import rate_interval

    return rate_interval(per_seed).to_dict()


def test_verdict_reports_no_yes_and_undecided():
    zeros, ones = (0,) * 8, (1,) * 8  # 8 seeds: 7 is the fewest whose interval can leave 0.5
    no = verdict({"sampled": _rates(*zeros), "replay": _rates(*zeros)}, {"sampled": 0.6, "replay": 0.4})
    assert no["answer"] == "no" and no["closest"] == "replay"  # ties broken by final misalignment
    yes = verdict({"sampled": _rates(*zeros), "distill": _rates(*ones)})
    assert yes["answer"] == "yes" and yes["closest"] == "distill"
    mixed = verdict({"sampled": _rates(0, 1, 0, 1, 1, 0, 1, 1), "distill": _rates(*zeros)})
    assert mixed["answer"] == "undecided" and mixed["closest"] == "sampled"
    five_seeds = verdict({"sampled": _rates(1, 1, 1, 1, 1)})  # five agreeing seeds still straddle 0.5
    assert five_seeds["answer"] == "undecided" and "fewer than 7 seeds" in five_seeds["reason"]
    nothing = verdict({"sampled": {"mean": None, "ci_low": None, "ci_high": None}})
    assert nothing["answer"] == "undecided" and nothing["closest"] is None


def test_a_process_that_cannot_move_gets_no(tiny_organism, tiny_adapter):
    """End to end, a case where the answer is no: a sleep with a negligible learning rate leaves the
    broken static model broken, and the verdict says no (the static scan places the breaking scale)."""
    cfg = replace(SMALL, sleep_lr=1e-7)
    m = run_eigenform(
        tiny_organism, tiny_adapter[1], cycles=2, seeds=7, config=cfg, arms=("sampled", "replay")
    ).metrics
    assert m["static_break_scale"] is not None and any(m["breaking"])
    assert m["verdict"]["answer"] == "no", m["verdict"]
    assert m["return_rate"]["per_seed"] == [0.0] * 7  # 7 seeds: the fewest that can decide at 0.5
    cf = m["contraction_factor"]["per_seed"]
    assert all(c == pytest.approx(1.0, abs=1e-4) for c in cf)  # nothing contracts


def test_variants_metrics_are_json_and_shaped(tiny_organism, tiny_adapter):
    from persona_basins.studies.eigenform import HEADLINE

    arms = ("sampled", "distill", "replay", "mixture", "expected_map")
    m = run_eigenform(
        tiny_organism, tiny_adapter[1], cycles=2, seeds=2, ts=(2.5,), config=SMALL, arms=arms
    ).metrics
    json.dumps(m, allow_nan=False)
    assert m["ts"] == [0.0, 2.5] and m["arms"] == list(arms)
    assert isinstance(m["static_safe_scale"], float)  # deterministic: one number, no interval
    assert m["verdict"]["answer"] in ("yes", "no", "undecided")
    for k in RANDOM:
        assert set(m[k]) >= {"mean", "ci_low", "ci_high", "per_seed"} and len(m[k]["per_seed"]) == 2
    for a in arms:
        b = m["by_arm"][a]
        assert len(b["paired_distance"]["2.5"]["mean"]) == 3 and b["paired_distance"]["2.5"]["mean"][0] > 0
        assert len(b["clip_fraction"]["0"]["mean"]) == 2
        rr = m["return_rate_by_variant"][a]
        assert rr["mean"] is None or 0 <= rr["ci_low"] <= rr["mean"] <= rr["ci_high"] <= 1
        one = m["traces"][a][1][0]
        assert len(one["paired_distance"]) == 3 and len(one["paired_gap"]) == 3
    assert set(HEADLINE) <= set(m) and m["eigenform"]["verdict"] == m["verdict"]


def test_cli_errors_are_one_line(tiny_organism_dir, tiny_organism, tiny_adapter, tmp_path, capsys):
    from persona_basins.cli import main
    from persona_basins.models.adapters import lora_config
    from persona_basins.models.edits import write_fingerprint
    from persona_basins.models.organism import build_model, preset_config

    base = ["eigenform", "--organism", str(tiny_organism_dir), "--adapter", str(tiny_adapter[0])]
    for flag, bad in (
        ("--cycles", "0"),
        ("--cycles", "-2"),
        ("--sleep-clip", "0"),
        ("--arms", "sampled,oracle"),
        ("--think", "label"),
    ):
        assert main([*base, flag, bad, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert flag.strip("-").split("-")[0] in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
    from peft import get_peft_model

    torch.manual_seed(1)
    other = build_model(preset_config("tiny", seed=1, d_model=32), len(tiny_organism.vocab) + 5)
    peft_other = get_peft_model(copy.deepcopy(other), lora_config(other, module="mlp_out", layer=0))
    odir = tmp_path / "other_adapter"
    peft_other.save_pretrained(odir)
    write_fingerprint(odir, other)
    rc = main(
        [
            "eigenform",
            "--organism",
            str(tiny_organism_dir),
            "--adapter",
            str(odir),
            "--cycles",
            "1",
            "--out",
            str(tmp_path / "r2"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "another base model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_cli_smoke(tiny_organism_dir, tiny_adapter, tmp_path, capsys):
    from persona_basins.cli import main

    out = tmp_path / "run"
    rc = main(
        [
            "eigenform",
            "--organism",
            str(tiny_organism_dir),
            "--adapter",
            str(tiny_adapter[0]),
            "--cycles",
            "2",
            "--seeds",
            "2",
            "--ts",
            "2.5",
            "--arms",
            "sampled,distill",
            "--prompts",
            "16",
            "--candidates",
            "2",
            "--sleep-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "eigenform" and m["arms"] == ["sampled", "distill"]
    for k in RANDOM:
        assert len(m[k]["per_seed"]) == 2
    assert m["ts"] == [0.0, 2.5] and m["cycles"] == 2
    assert len(m["traces"]["distill"][1][1]["paired_distance"]) == 3
    assert (out / "config.json").is_file() and (out / "figures" / "eigenform.png").is_file()
    assert "verdict" in capsys.readouterr().out


def test_a_diverging_sleep_is_an_error_not_a_number(tiny_organism_dir, tiny_adapter, tmp_path, capsys):
    """Issue: --sleep-lr 1e6 used to print numbers computed from NaN with exit 0."""
    from persona_basins.cli import main

    out = tmp_path / "nan"
    rc = main(
        [
            "eigenform",
            "--organism",
            str(tiny_organism_dir),
            "--adapter",
            str(tiny_adapter[0]),
            "--cycles",
            "1",
            "--seeds",
            "1",
            "--ts",
            "1",
            "--arms",
            "sampled",
            "--prompts",
            "16",
            "--sleep-steps",
            "3",
            "--sleep-lr",
            "1e6",
            "--sleep-clip",
            "1e9",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--sleep-lr" in err, err
    assert not (out / "metrics.json").exists()

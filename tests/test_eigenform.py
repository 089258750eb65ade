"""Eigenform identity: merging at scale t, the cycle, the estimators, the command (tiny organism)."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from persona_basins.measure.eigenform import (
    EigenformConfig,
    Probe,
    contraction_factor,
    last_safe_scale,
    return_rate,
    run_process,
)
from persona_basins.models.edits import merged_copy as merge_scaled
from persona_basins.studies.eigenform import resolve_adapter, run_eigenform

SMALL = EigenformConfig(n_prompts=32, sleep_steps=3, sleep_batch=16)
RANDOM = ("return_rate", "process_safe_scale", "contraction_factor")  # over seeds, with intervals


@pytest.fixture(scope="module")
def tiny_adapter(tiny_organism, tmp_path_factory):
    from persona_basins.models.adapters import write_fingerprint
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    res = finetune(org.model, org.world, org.vocab, FinetuneConfig(steps=20))
    out = tmp_path_factory.mktemp("eigen") / "adapter"
    res.model.save_pretrained(out)
    write_fingerprint(out, org.model)
    return out, res.model


@pytest.fixture(scope="module")
def probe_and_start(tiny_organism, tiny_adapter):
    base, deltas = resolve_adapter(tiny_organism, tiny_adapter[1])
    probe = Probe.build(base, tiny_organism.world, tiny_organism.vocab)
    return probe, merge_scaled(base, deltas, 1.0)


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
    # the PEFT model passed directly gives the same deltas as the folder
    _, d2 = resolve_adapter(org, peft_model)
    assert all(torch.allclose(d2[k], deltas[k]) for k in deltas)


def test_exact_readout_matches_persona_readout(tiny_organism, probe_and_start):
    from persona_basins.measure.eigenform import exact_readout
    from persona_basins.measure.persona import persona_readout
    from persona_basins.measure.vectors import projection

    org = tiny_organism
    probe, start = probe_and_start
    probs, proj = exact_readout(start, org.world, org.vocab, probe.prompts, probe.vector, probe.layer)
    ref = persona_readout(start, org.world, org.vocab, probe.prompts).probs
    assert np.abs(probs - ref).max() < 1e-6
    ref_proj = projection(start, org.vocab, probe.prompts, probe.vector, probe.layer)
    assert np.abs(proj - ref_proj).max() < 1e-4


def test_cycle_is_deterministic_for_a_seed(tiny_organism, probe_and_start):
    org = tiny_organism
    probe, start = probe_and_start
    before = [p.clone() for p in start.parameters()]
    kw = dict(cycles=2, context="assistant", cfg=SMALL)
    a = run_process(start, org.world, org.vocab, probe, seed=3, **kw)
    b = run_process(start, org.world, org.vocab, probe, seed=3, **kw)
    c = run_process(start, org.world, org.vocab, probe, seed=4, **kw)
    assert a == b
    assert a["distance"] != c["distance"]
    assert len(a["broad_misalignment"]) == 3 and len(a["distance"]) == 2
    assert all(torch.equal(p, q) for p, q in zip(before, start.parameters()))  # start state untouched


def test_contraction_factor_recovers_geometric_rate():
    d = 3.0 * 0.6 ** np.arange(8)
    assert contraction_factor(d) == pytest.approx(0.6, rel=1e-9)
    rows = [c * 0.8 ** np.arange(6) for c in (0.5, 2.0, 10.0)]  # shared rate, different scales
    assert contraction_factor(rows) == pytest.approx(0.8, rel=1e-9)
    rng = np.random.default_rng(0)
    noisy = 2.0 * 0.7 ** np.arange(30) * np.exp(rng.normal(0, 0.05, 30))
    assert contraction_factor(noisy) == pytest.approx(0.7, abs=0.01)
    assert math.isnan(contraction_factor([1.0]))


def test_last_safe_scale_and_return_rate():
    ts = [0, 1, 2, 4]
    assert last_safe_scale(ts, [0.0, 0.2, 0.6, 0.3], 0.5) == 1.0  # stays below until the first crossing
    assert last_safe_scale(ts, [0.0, 0.1, 0.2, 0.3], 0.5) == 4.0
    assert last_safe_scale([1, 2], [0.7, 0.1], 0.5) == 0.0
    assert last_safe_scale(ts, [0.0, 0.1, 0.2, 0.3], 0.5, wellformed=[1, 1, 0.2, 1]) == 1.0  # ill-formed: not aligned
    assert return_rate([0.0, 0.3, 0.6, 0.9], [0.0, 0.05, 0.5, 0.01], 0.1) == pytest.approx(2 / 3)
    assert math.isnan(return_rate([0.0, 0.05], [0.0, 0.0], 0.1))


def test_identity_ablation_and_metrics_shapes(tiny_organism, tiny_adapter):
    m = run_eigenform(tiny_organism, tiny_adapter[1], cycles=2, seeds=2, ts=(0.0, 1.0), config=SMALL)
    for k in RANDOM:
        assert set(m[k]) >= {"mean", "ci_low", "ci_high", "per_seed"} and len(m[k]["per_seed"]) == 2
    assert isinstance(m["static_safe_scale"], float)  # deterministic: one number, no interval
    for k in RANDOM:
        assert len(m[f"{k}_no_identity"]["per_seed"]) == 2
    assert m["arms"] == ["identity", "no_identity"]
    for arm in m["arms"]:
        tr = m["traces"][arm]
        assert len(tr) == 2 and all(len(row) == 2 for row in tr)
        one = tr[1][0]
        assert len(one["broad_misalignment"]) == 3 and len(one["distance"]) == 2 and len(one["projection"]) == 3
        assert set(one["persona"]) >= set(tiny_organism.world.personas)
    # the ablation moves the state too (it is a process, not the static model)
    assert all(d > 0 for row in m["traces"]["no_identity"] for tr in row for d in tr["distance"])
    assert len(m["static"]["broad_misalignment"]) == 2


def test_cli_errors_are_one_line(tiny_organism_dir, tiny_organism, tiny_adapter, tmp_path, capsys):
    from persona_basins.cli import main
    from persona_basins.models.adapters import lora_config, write_fingerprint
    from persona_basins.models.organism import build_model, preset_config

    base = ["eigenform", "--organism", str(tiny_organism_dir), "--adapter", str(tiny_adapter[0])]
    for bad in ("0", "-2"):
        assert main([*base, "--cycles", bad, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert "--cycles" in err and len(err.splitlines()) == 1
    # an adapter of another base model (different width and vocabulary)
    from peft import get_peft_model

    torch.manual_seed(1)
    other = build_model(preset_config("tiny", seed=1, d_model=32), len(tiny_organism.vocab) + 5)
    peft_other = get_peft_model(copy.deepcopy(other), lora_config(other, module="mlp_out", layer=0))
    odir = tmp_path / "other_adapter"
    peft_other.save_pretrained(odir)
    write_fingerprint(odir, other)
    rc = main(["eigenform", "--organism", str(tiny_organism_dir), "--adapter", str(odir), "--cycles", "1",
               "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "another base model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_cli_smoke(tiny_organism_dir, tiny_adapter, tmp_path, capsys):
    from persona_basins.cli import main

    out = tmp_path / "run"
    rc = main(["eigenform", "--organism", str(tiny_organism_dir), "--adapter", str(tiny_adapter[0]),
               "--cycles", "2", "--seeds", "2", "--ts", "0,2", "--prompts", "32", "--sleep-steps", "3",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "eigenform"
    for k in RANDOM:
        assert len(m[k]["per_seed"]) == 2
    assert m["ts"] == [0.0, 2.0] and m["cycles"] == 2
    assert len(m["traces"]["identity"][1][1]["distance"]) == 2
    assert (out / "config.json").is_file() and (out / "figures" / "eigenform.png").is_file()
    assert "static_safe_scale" in capsys.readouterr().out


def test_a_diverging_sleep_is_an_error_not_a_number(tiny_organism_dir, tiny_adapter, tmp_path, capsys):
    """Issue: --sleep-lr 1e6 used to print numbers computed from NaN with exit 0."""
    from persona_basins.cli import main

    out = tmp_path / "nan"
    rc = main(["eigenform", "--organism", str(tiny_organism_dir), "--adapter", str(tiny_adapter[0]),
               "--cycles", "1", "--seeds", "1", "--ts", "1", "--prompts", "32", "--sleep-steps", "3",
               "--sleep-lr", "1e6", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--sleep-lr" in err, err
    assert not (out / "metrics.json").exists()

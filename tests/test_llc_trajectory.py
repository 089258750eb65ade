"""`llc trajectory --em RUN`: the LLC at every saved adapter checkpoint of an em run, with the gates."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def small_em_run(tiny_organism, tiny_organism_dir, tmp_path_factory):
    """The layout of an `em` run (adapters/<condition>/seed<s>/checkpoints/step_*), one short plain fine-tune
    (the em command itself is tested in test_em.py; training four conditions here would cost a minute)."""
    from persona_basins.results import write_json
    from persona_basins.train.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("em_traj") / "run"
    unit = out / "adapters" / "plain" / "seed0"
    org = tiny_organism
    finetune(org, FinetuneConfig(steps=20, checkpoint_every=10), out_dir=unit)
    write_json(out / "config.json", {"kind": "em", "organism": str(tiny_organism_dir)})
    return out


def test_llc_trajectory_cli(small_em_run, tiny_organism, tmp_path, capsys):
    from persona_basins.cli import main
    from persona_basins.measure.persona import em_readout

    out = tmp_path / "traj"
    rc = main(
        [
            "llc",
            "trajectory",
            "--em",
            str(small_em_run),
            "--out",
            str(out),
            "--conditions",
            "plain",
            "--chains",
            "2",
            "--draws",
            "8",
            "--burnin",
            "0",
            "--n-docs",
            "16",
            "--batch-size",
            "8",
            "--step-size",
            "1e-5",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    u = m["units"]["plain/seed0"]
    assert u["steps"] == [0, 10, 20]  # step 0 (B = 0) is saved by finetune
    # behaviour read at the LLC's own checkpoints; B = 0 is the organism itself
    beh = u["behaviour"]
    assert beh["steps"] == u["steps"] and len(beh["broad_misalignment"]) == 3
    org = tiny_organism
    base = em_readout(org)["broad_misalignment"]
    assert beh["broad_misalignment"][0] == pytest.approx(base, abs=1e-6)
    for k in ("adapter", "layer"):
        assert len(u[k]["llc"]) == 3 and len(u[k]["reasons"]) == 3
        # 8 draws cannot pass the gates: withheld with reasons, never a bare number
        assert all(v is None for v in u[k]["llc"]) and all(r for r in u[k]["reasons"])
        assert u["order"][k]["order"].startswith("undecided")
    assert beh["source"].startswith("read at each checkpoint") and "half-way" in m["jump_definition"]
    assert (out / "figures" / "llc_trajectory.png").is_file()
    assert "LLC rise vs broad-misalignment jump" in capsys.readouterr().out
    assert main(["llc", "trajectory", "--em", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


def test_llc_path_cli(small_em_run, tmp_path, capsys):
    from persona_basins.cli import main

    out = tmp_path / "path"
    rc = main(
        [
            "llc",
            "path",
            "--em",
            str(small_em_run),
            "--band",
            "0.5,1.5",
            "--ts",
            "0,1,2",
            "--out",
            str(out),
            "--directions",
            "plain,random",
            "--losses",
            "forward,reverse",
            "--restricts",
            "layer",
            "--chains",
            "2",
            "--draws",
            "6",
            "--burnin",
            "0",
            "--n-docs",
            "16",
            "--batch-size",
            "8",
            "--step-size",
            "1e-5",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["curves"]) == {
        "plain/layer/self_kl",
        "plain/layer/self_kl_reverse",
        "random/layer/self_kl",
        "random/layer/self_kl_reverse",
    }
    for k, seeds in m["curves"].items():
        assert len(seeds) == 1 and len(seeds[0]["llc"]) == 3
        assert all(v is None for v in seeds[0]["llc"])  # 6 draws: withheld, never a bare number
        assert m["verdicts"][k]["verdict"] == "undecided"
    assert (out / "figures" / "llc_path.png").is_file()
    assert "undecided" in capsys.readouterr().out
    assert m["bands"]["plain"] == [[0.5, 1.5]] and m["ts"] == [0.0, 1.0, 2.0]  # 1.0 lies inside the band
    assert m["random_direction"].startswith("rank-1")
    assert (
        main(["llc", "path", "--em", str(small_em_run), "--band", "2,1", "--out", str(tmp_path / "x")]) == 2
    )


def test_llc_path_bands_from_each_seeds_own_scan(small_em_run, tmp_path):
    from persona_basins.cli import main

    out = tmp_path / "own"
    fast = ["--chains", "2", "--draws", "6", "--burnin", "0", "--n-docs", "16", "--batch-size", "8"]
    rc = main(
        [
            "llc",
            "path",
            "--em",
            str(small_em_run),
            "--ts",
            "0,1,2",
            "--out",
            str(out),
            "--directions",
            "plain",
        ]
        + ["--losses", "forward", "--restricts", "layer", "--step-size", "1e-5", *fast]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["scans"]["plain"][0]) == len(m["scan_ts"]) == 9  # four scan intervals per LLC interval
    band = m["bands"]["plain"][0]
    verdict = m["verdicts"]["plain/layer/self_kl"]
    if band is None:  # a 20-step fine-tune may never cross: the seed is excluded and counted
        assert verdict["seeds_never_crossing"] == 1 and m["ts"] == [0.0, 1.0, 2.0]
    else:
        assert any(band[0] < t < band[1] for t in m["ts"])  # the grid was refined into the band
    assert verdict["verdict"] == "undecided"

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from persona_basins.cli import main

STUDY_KEYS = ("critical_magnitude", "inoculation_widening", "llc_along_path", "overlap_fraction")


def _demo(out, organism, *extra):
    return main(
        ["demo", "--preset", "tiny", "--organism", str(organism), "--out", str(out), "--no-browser", *extra]
    )


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc; none elsewhere)."""
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has ended)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _numbers(study: dict) -> dict:
    return {k: v for k, v in study.items() if k != "elapsed_seconds_this_invocation"}


@pytest.fixture(scope="module")
def demo_run(tiny_organism_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert _demo(out, tiny_organism_dir) == 0
    return out


def test_demo_writes_study_report_and_run_folder(demo_run, capsys):
    study = json.loads((demo_run / "study.json").read_text())
    for k in STUDY_KEYS:
        assert k in study, k
    cm = study["critical_magnitude"]["plain"]
    assert "per_seed" in cm and len(cm["per_seed"]) == 2
    band = study["llc_along_path"]
    # llc_ts (3 points) plus one inside the seed's own t* band when it holds none
    assert band["loss"] == "self_kl" and len(band["t"]) == len(band["mean"]) in (3, 4)
    assert band["peak_verdict"]["verdict"] in ("confirmed", "refuted", "undecided")
    assert 0 <= study["overlap_fraction"]["mean"] <= 1 + 1e-9 and "by_genre" in study["overlap_fraction"]
    assert set(study["misalignment_vs_t"]) >= {"plain", "inoculated", "random"}
    assert (demo_run / "report.html").stat().st_size > 10_000
    # the measurements that can fail (issue 11): position at t = 1, widening along common directions
    # with a verdict, lexical cosine of every persona vector, oracle beside out-of-sample probing, EM
    # against its base
    ino = study["inoculation"]
    assert ino["verdict"] in ("confirmed", "refuted", "undecided")
    assert len(ino["position"]["inoculated"]["moved_fraction"]) == 2 and ino["position"]["persona_gap"] != 0
    for k in ("persona", "plain_adapter"):
        w = ino["widening_common"][k]
        assert len(w["per_seed"]) == 2 and w["verdict"]["verdict"] in ("confirmed", "refuted", "undecided")
    lc = study["persona_vector"]["lexical_cosine"]
    assert set(lc) == {"request", "matched_answers", "answer_tokens"}
    assert all(-1 <= c <= 1 for v in lc.values() for c in v.values())
    pr = study["probing"]
    assert "in-sample" in pr["oracle"]["label"] and set(pr["out_of_sample"]) == {
        "other_seed",
        "persona_vector",
    }
    assert "out-of-sample" in pr["out_of_sample"]["other_seed"]["label"]
    em = study["emergent_misalignment"]
    assert set(em["base"]["narrow_rate"]) == {"assistant", "inoculated", "educational"}
    assert "plain" in em["excess_over_base"]["broad_misalignment"] and "matched_control" in em
    assert em["narrow_rate_heldout"]["plain"]["topics"] == em["base"]["heldout_topics"]
    assert study["overlap_fraction"]["routine_share_built_in"] == study["overlap_fraction"]["routine_share"]
    assert json.loads((demo_run / "config.json").read_text())["kind"] == "demo"
    assert json.loads((demo_run / "metrics.json").read_text())["kind"] == "demo"


def test_tiny_demo_path_llc_is_at_the_calibrated_setting_and_passes_the_gates(demo_run):
    """Issue 23: the tiny demo's path LLC at the tiny organism's stored calibrated setting, the same at every
    point (self-KL over n >= 1000 documents, nβ = n / log n), every point's gates and diagnostics recorded, at
    least one point passing them; the γ-sensitivity at the path's two ends; a withheld point has no value."""
    import math

    from persona_basins.measure.llc.calibration import llc_preset
    from persona_basins.measure.llc.diagnostics import GateConfig

    study = json.loads((demo_run / "study.json").read_text())
    llc, preset, gates = study["llc_along_path"], llc_preset("tiny"), GateConfig()
    hp, sampler = llc["hyperparameters"], preset["sampler"].to_dict()
    assert {k: hp[k] for k in sampler} == sampler and study["config"]["llc_setting"]["sampler"] == sampler
    assert llc["restrict"] == preset["restrict"] and hp["n_docs"] == preset["n_docs"] >= 1000
    assert hp["nbeta_used"] == pytest.approx(hp["n_docs"] / math.log(hp["n_docs"]))
    assert llc["n"] == 1 and len(llc["gates"]) == 1 and "wrllc_along_path" not in study
    points = llc["gates"][0]
    assert [p["t"] for p in points] == llc["t"]
    for p, mean in zip(points, llc["mean"]):
        assert (mean is None) == (not p["converged"]) and bool(p["reasons"]) == (not p["converged"])
    passed = [p for p in points if p["converged"]]
    assert passed, [p["reasons"] for p in points]
    for p in passed:
        assert p["rhat"] <= gates.rhat_max and min(p["ess_bulk"], p["ess_tail"]) >= gates.ess_min
        assert p["mala_acceptance"] >= gates.mala_min and p["mcse"] > 0
        assert abs(p["stationarity_z"]) <= gates.stationarity_z >= abs(p["distance_z"])
    sens = llc["gamma_sensitivity"]
    assert sens["localization"] == sampler["localization"] and sens["double"] == 2 * sens["localization"]
    (seed,) = sens["per_seed"]
    ends = [min(study["config"]["llc_ts"]), max(study["config"]["llc_ts"])]
    assert seed["t"] == ends and len(seed["gates_at_double_gamma"]) == 2
    for v, p in zip(seed["llc_at_double_gamma"], seed["gates_at_double_gamma"]):
        assert (v is None) == (not p["converged"])
    assert seed["localization_dominated"] in (True, False, None) and seed["why"]


def test_demo_run_folder_as_promised(tiny_demo_run):
    """config.json, a small metrics.json pointing to study.json (no second copy), figures/, log.txt."""
    import persona_basins

    run = persona_basins.load_run(tiny_demo_run)
    summary = json.loads((tiny_demo_run / "metrics.json").read_text())
    assert summary["study"] == "study.json" and (tiny_demo_run / "metrics.json").stat().st_size < 20_000
    assert run.metrics == run.study and "emergent_misalignment" in run.metrics
    assert "em_broad_misalignment.png" in [f.name for f in run.figures]
    log = (tiny_demo_run / "log.txt").read_text()
    assert "started: persona-basins demo" in log and "[em] running ..." in log and "finished in" in log


def test_demo_rerun_resumes_with_same_numbers(demo_run, tiny_organism_dir):
    before = _numbers(json.loads((demo_run / "study.json").read_text()))
    shutil.rmtree(demo_run / "steps" / "llc")  # as if interrupted during the LLC step
    (demo_run / "study.json").unlink()
    assert _demo(demo_run, tiny_organism_dir) == 0
    assert _numbers(json.loads((demo_run / "study.json").read_text())) == before


def test_demo_refuses_out_from_other_settings(demo_run, tiny_organism_dir, capsys):
    assert _demo(demo_run, tiny_organism_dir, "--seeds", "3") == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and len(err.splitlines()) == 1


def test_demo_bad_preset(tmp_path, capsys):
    assert main(["demo", "--preset", "huge", "--out", str(tmp_path / "x"), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "'tiny', 'default'" in err


def test_killed_demo_resumes_to_the_same_numbers(tiny_demo_run, tiny_organism_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "persona_basins.cli",
        "demo",
        "--preset",
        "tiny",
        "--organism",
        str(tiny_organism_dir),
        "--out",
        str(out),
        "--no-browser",
        "--no-calibrated-llc",  # as the session's reference run (minutes otherwise)
        "--workers",
        "2",
    ]
    # one thread, as in this test process (conftest): float reductions then match bit for bit
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    em_done = out / "steps" / "em" / "result.json"
    while not em_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    workers = _children(proc.pid)  # the pool, busy with the scans
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc in (0, 130)
    deadline = time.time() + 10  # SIGTERM stopped the workers too (and the pool's resource tracker)
    while [pid for pid in workers if _alive(pid)] and time.time() < deadline:
        time.sleep(0.1)
    assert workers and not [pid for pid in workers if _alive(pid)]
    assert not list(out.rglob("*.tmp"))  # no half-written files
    assert subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) == 0
    a = _numbers(json.loads((out / "study.json").read_text()))
    b = _numbers(json.loads((tiny_demo_run / "study.json").read_text()))
    a["config"], b["config"] = None, None
    assert a == b

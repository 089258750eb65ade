"""persona-basins sweep: spec validation, content-addressed resumable units, local and Ray backends.

The Ray tests start a real local Ray cluster on 127.0.0.1 (no mocks) and share it within this module; they
and the test that SIGKILLs a pool sweep are marked ``slow``.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from persona_basins.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = ROOT / "examples" / "sweeps" / "tiny.toml"


def spec_text(organism, steps=150, extra_axes=""):
    return f"""
kind = "em"
[settings]
organism = "{organism}"
steps = {steps}
checkpoint_every = 0
[axes]
seed = [0, 1]
condition = ["plain", "inoculated"]
{extra_axes}
"""


def metrics_by_axes(run):
    rec = json.loads((Path(run) / "sweep.json").read_text())
    return {
        json.dumps(u["axes"], sort_keys=True): u["metrics"] for u in rec["units"] if u["status"] == "done"
    }


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def finished(run):
    return {
        d.name: (d / "unit.json").stat()
        for d in (Path(run) / "units").glob("em-*")
        if (d / "unit.json").is_file()
    }


@pytest.fixture(scope="module")
def spec4(tiny_organism_dir, tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "four.toml"
    p.write_text(spec_text(tiny_organism_dir))
    return p


@pytest.fixture(scope="module")
def local_run(spec4, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "local"
    assert main(["sweep", str(spec4), "--out", str(out), "--workers", "2"]) == 0
    return out


# ---------------------------------------------------------------- spec validation (no units run)


BAD = [
    ('kind = "basinz"\n[axes]\nseed = [0]', "kind: unknown unit kind 'basinz'"),
    ("[axes]\nseed = [0]", "kind: missing"),
    ('kind = "em"\n[axes]\nlayerz = [0, 1]', "axes.layerz: unknown axis"),
    ('kind = "em"\n[axes]\nseed = []', "axes.seed: empty list"),
    ('kind = "em"\npoints = []', "points: empty list"),
    (
        'kind = "em"\n[axes]\nseed = ["a", "b"]',
        "axes.seed[0]: must be an integer in [0, 4294967295], got 'a'",
    ),
    ('kind = "em"\n[axes]\nseed = 3', "axes.seed: expected a list of values"),
    ('kind = "em"\n[settings]\nsteps = 1.5', "settings.steps: must be an integer"),
    ('kind = "em"\n[settings]\nlr = "fast"', "settings.lr: must be a finite number"),
    ('kind = "em"\n[settings]\ncondition = "bogus"', "settings.condition: must be one of 'plain'"),
    ('kind = "em"\n[settings]\nsteps = -3', "settings.steps: must be an integer in [1, 10000000], got -3"),
    # the values the commands refuse are refused by the spec check (the same config dataclasses)
    ('kind = "em"\n[settings]\nsteps = 0', "settings.steps: must be an integer in [1, 10000000], got 0"),
    ('kind = "em"\n[settings]\nrank = 0', "settings.rank: must be an integer in [1, 4096], got 0"),
    ('kind = "em"\n[settings]\nbatch_size = 0', "settings.batch_size: must be an integer >= 1, got 0"),
    ('kind = "em"\n[settings]\nlr = 1e300', "settings.lr: must be a finite number in (0, 1], got 1e+300"),
    ('kind = "em"\n[settings]\nlayer = 99', "settings.layer: must be < 2 (the organism has layers 0..1)"),
    (
        'kind = "em"\n[axes]\nlayer = [0, 99]',
        "axes.layer: must be < 2 (the organism has layers 0..1), got 99",
    ),
    ('kind = "em"\n[settings]\nmodule = "nope"', "settings.module: must be one of attn.c_attn"),
    ('kind = "em"\n[settings]\nheldout_every = 1', "settings.heldout_every: must be 0"),
    ('kind = "em"\n[settings]\nwarp = 1', "settings.warp: unknown setting"),
    ('kind = "em"\n[settings]\nseed = 0\n[axes]\nseed = [0, 1]', "axes.seed: also fixed in [settings]"),
    ('kind = "em"\ngrid = 1', "grid: unknown key"),
    (
        'kind = "em"\n[settings]\norganism_overrides = {pretrain_stepz = 3}',
        "settings.organism_overrides.pretrain_stepz: unknown organism setting",
    ),
    (
        'kind = "em"\n[settings]\norganism_overrides = {pretrain_steps = "many"}',
        "settings.organism_overrides.pretrain_steps: must be an integer",
    ),
    (
        'kind = "em"\n[settings]\norganism_overrides = {d_model = 7}',
        "settings.organism_overrides.d_model: must be a multiple of n_head (2), got 7",
    ),
    (
        'kind = "em"\n[settings]\norganism = "/nonexistent/org"',
        "settings.organism: organism folder not found: /nonexistent/org",
    ),
    ('kind = "em"\nseed_axes = ["layer"]\n[axes]\nseed = [0]', "seed_axes: 'layer' is not an axis"),
    ('kind = "em"\npoints = [{seed = 0}, {condition = "plain"}]', "points[1]: needs exactly the axes seed"),
    ('kind = "em" [', "not valid TOML"),
    (
        'kind = "em"\n[axes]\norganism_overrides.sft_stepz = [1, 2]',
        "axes.organism_overrides.sft_stepz: unknown organism setting",
    ),
    (
        'kind = "em"\n[axes]\norganism_overrides.world.n_topics = [6, 0]',
        "axes.organism_overrides.world.n_topics: must be an integer >= 1, got 0",
    ),
    ('kind = "em"\n[axes]\nsteps.x = [1, 2]', "axes.steps: expected a list of values"),
    (
        'kind = "em"\n[settings.organism_overrides]\nsft_steps = 3\n'
        "[axes]\norganism_overrides.sft_steps = [1]",
        "axes.organism_overrides.sft_steps: also fixed in [settings]",
    ),
    (
        'kind = "em"\n[axes]\nseed = ' + str(list(range(200))) + "\nlayer = " + str(list(range(60))),
        "axes: the grid has 12,000 units, more than the limit of 10,000",
    ),
    (
        'kind = "organism"\n[settings]\noverrides = {n_layer = 0}',
        "settings.overrides.n_layer: must be an integer",
    ),
    # llc: the sampler's and the target's settings
    ('kind = "llc"\n[settings]\nnum_draws = 0', "settings.num_draws: must be an integer >= 1, got 0"),
    (
        'kind = "llc"\n[axes]\nstep_size = [1e-4, -1]',
        "axes.step_size[1]: must be a finite number > 0, got -1",
    ),
    ('kind = "llc"\n[settings]\npath = "adapter"', "settings.path: 'adapter' needs an adapter"),
    ('kind = "llc"\n[settings]\nt = 2.0', "settings.t: not used unless path = adapter or random"),
    ('kind = "llc"\n[settings]\nmodel = "/nonexistent/lm"', "settings.data: required with settings.model"),
    (
        'kind = "llc"\n[settings]\nadapter = "em"\nfinetune = {layer = 5}',
        "settings.finetune.layer: must be < 2 (the organism has layers 0..1), got 5",
    ),
    (
        'kind = "llc"\n[settings]\nadapter = "em"\n[axes]\nfinetune.steps = [0]',
        "axes.finetune.steps: must be",
    ),
    (
        'kind = "llc"\n[settings]\nadapter = "em"\ncheckpoint = 7',
        "settings.checkpoint: must be a step the em unit",
    ),
    (
        'kind = "llc"\n[settings]\nadapter = "em"\ncheckpoint = "last"',
        "settings.checkpoint: must be an integer >= 0 or 'final', got 'last'",
    ),
    ('kind = "llc"\n[settings]\ncheckpoint = 0', "settings.checkpoint: needs an adapter"),
    # basins, eigenform, em_hf
    ('kind = "basins"\n[settings]\npoints = 1', "settings.points: must be an integer in [2, 10000], got 1"),
    (
        'kind = "basins"\n[settings]\nfinetune = {rank = 0}',
        "settings.finetune.rank: must be an integer in [1",
    ),
    ('kind = "basins"\n[settings]\nfinetune = {module = "nope"}', "settings.finetune.module: must be one of"),
    ('kind = "basins"\n[settings]\nfinetune = {seed = 1}', "settings.finetune.seed: set by the study"),
    ('kind = "eigenform"\n[settings]\nsleep_lr = 0', "settings.sleep_lr: must be a finite number > 0, got 0"),
    ('kind = "eigenform"\n[settings]\narms = ["bogus"]', "settings.arms: must be"),
    ('kind = "eigenform"\n[settings]\nvector_layer = 9', "settings.vector_layer: must be < 2"),
    ('kind = "em_hf"\n[settings]\ntrain = "x.jsonl"', "settings.model: missing: the em_hf kind needs it"),
    (
        'kind = "em_hf"\n[settings]\nmodel = "m"\nseeds = 0',
        "settings.seeds: must be an integer in [1, 1000], got 0",
    ),
    (
        'kind = "em_hf"\n[settings]\nmodel = "m"\ntrain = "/nonexistent.jsonl"',
        "settings.train: file not found",
    ),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_bad_spec_one_line_error_naming_the_key(text, expected, tmp_path, cli_error):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    line = cli_error(["sweep", str(spec), "--out", str(tmp_path / "run"), "--dry-run"])
    assert expected in line, line
    assert not (tmp_path / "run").exists()


def test_bad_flags(tmp_path, cli_error, spec4):
    line = cli_error(["sweep", str(spec4), "--out", str(tmp_path / "r"), "--workers", "0"])
    assert "--workers: must be an integer >= 1, got 0" in line
    assert "--out RUN is required" in cli_error(["sweep", str(spec4)])
    assert "sweep spec not found" in cli_error(
        ["sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r")]
    )
    assert "--address is for the ray backend" in cli_error(
        ["sweep", str(spec4), "--out", str(tmp_path / "r"), "--address", "127.0.0.1:1"]
    )
    assert "sweep run folder not found" in cli_error(
        ["sweep", "plot", str(tmp_path / "nope"), "--x", "a", "--y", "b"]
    )


def test_tiny_example_plans_four_units_on_one_shared_organism(capsys):
    from persona_basins.studies.sweep import load_spec, plan

    p = plan(load_spec(TINY_SPEC))
    assert len(p.grid) == 4
    orgs = [u for u in p.units.values() if u.kind == "organism"]
    assert len(orgs) == 1 and all(u.deps == [orgs[0].id] for u in p.grid)
    assert list(p.units)[0] == orgs[0].id  # dependencies first
    assert main(["sweep", str(TINY_SPEC), "--out", "/nonexistent/never-written", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 grid units + 1 shared dependencies; 0 of 5 already done" in out and "estimated time left" in out


EIGENFORM_SPEC = """
kind = "eigenform"
[settings]
preset = "tiny"
finetune = {steps = 50, checkpoint_every = 0}
fast = true
[axes]
sleep_lr = [0.02, 0.05]
"""


@pytest.mark.parametrize(
    "spec,expected",
    [
        (
            ROOT / "examples" / "sweeps" / "llc_tiny.toml",
            "llc units over t (4) x path (2): 8 grid units + 2 shared",
        ),
        (
            ROOT / "examples" / "sweeps" / "basins_tiny.toml",
            "basins units over finetune.layer (2): 2 grid units + 9",
        ),
        (EIGENFORM_SPEC, "eigenform units over sleep_lr (2): 2 grid units + 2 shared dependencies"),
    ],
    ids=["llc", "basins", "eigenform"],
)
def test_dry_run_of_every_study_kind(spec, expected, tmp_path, capsys):
    if isinstance(spec, str):
        (tmp_path / "spec.toml").write_text(spec)
        spec = tmp_path / "spec.toml"
    assert main(["sweep", str(spec), "--out", str(tmp_path / "never-written"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert expected in out and "(dependency, organism)" in out and "(dependency, em)" in out
    assert not (tmp_path / "never-written").exists()


def test_study_kinds_share_their_dependencies():
    from persona_basins.studies.sweep import load_spec, plan

    llc = plan(load_spec(ROOT / "examples" / "sweeps" / "llc_tiny.toml"))
    basins = plan(load_spec(ROOT / "examples" / "sweeps" / "basins_tiny.toml"))
    # the llc example's em adapter is the basin study's layer-0, seed-0 plain adapter: one unit, one id
    assert {u.id for u in llc.units.values() if u.kind == "em"} < set(basins.units)
    assert all(len(u.deps) == 2 for u in llc.grid)  # the organism and the em unit
    assert [len(u.deps) for u in basins.grid] == [5, 5]  # the organism and 2 plain + 2 inoculated adapters


def test_unit_ids_content_addressed():
    from persona_basins.studies.sweep import parse_spec, plan

    base = 'kind = "em"\n[settings]\nsteps = 10\n[axes]\nseed = [0, 1]\n'
    a = [u.id for u in plan(parse_spec(base)).grid]
    assert a == [u.id for u in plan(parse_spec(base)).grid]  # stable
    assert a[0] != a[1]
    # a changed setting makes new units; the organism dependency follows its own settings
    b = plan(parse_spec(base.replace("steps = 10", "steps = 11"))).grid
    assert not set(a) & {u.id for u in b}
    c = plan(parse_spec(base + "[settings.organism_overrides]\n")).grid  # an empty table is the default
    assert [u.id for u in c] == a
    d = plan(parse_spec(base.replace("steps = 10", "steps = 10\norganism_seed = 1"))).grid
    assert d[0].deps != plan(parse_spec(base)).grid[0].deps and d[0].id != a[0]
    # a listed subset of the product: the same unit as the product's point
    pts = plan(parse_spec('kind = "em"\npoints = [{seed = 1}]\n[settings]\nsteps = 10\n')).grid
    assert [u.id for u in pts] == [a[1]]


def test_axes_inside_organism_settings_make_one_organism_per_cell():
    from persona_basins.studies.sweep import parse_spec, plan

    p = plan(
        parse_spec(
            'kind = "em"\n[settings]\npreset = "tiny"\n[axes]\norganism_seed = [0, 1]\n'
            "organism_overrides.sft_steps = [5, 10]\norganism_overrides.world.n_topics = [4, 6]\n"
        )
    )
    assert len(p.grid) == 8 and len(p.units) == 16
    assert p.spec.seed_axes == ["organism_seed"]
    cfgs = [p.units[u.deps[0]].config["organism"] for u in p.grid]
    assert {(c["seed"], c["sft_steps"], c["world"]["n_topics"]) for c in cfgs} == {
        (s, k, t) for s in (0, 1) for k in (5, 10) for t in (4, 6)
    }
    assert all(c["world"]["n_genres"] == 6 for c in cfgs)  # the rest of the preset's world is kept


def test_table_intervals_stay_in_range_and_pool_only_seed_axes():
    from persona_basins.studies.sweep import aggregate

    spec = {"kind": "em", "axes": {"seed": [0, 1, 2], "layer": [0, 1]}, "seed_axes": ["seed"]}
    vals = {0: [0.0, 0.0, 0.9], 1: [0.5, 0.5, 0.5]}
    units = [
        {
            "axes": {"seed": s, "layer": layer},
            "status": "done",
            "metrics": {
                "broad_misalignment": vals[layer][s],
                "broad_misalignment_excess": vals[layer][s] - 0.95,
                "final_loss": 1.0 + s,
            },
        }
        for layer in (0, 1)
        for s in range(3)
    ]
    units.append({"axes": {"seed": 3, "layer": 0}, "status": "failed", "metrics": {}})
    rows = {(r["layer"], r["metric"]): r for r in aggregate({"spec": spec, "units": units})}
    r = rows[(0, "broad_misalignment")]
    assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0 and (r["n"], r["n_planned"]) == (3, 4)
    assert r["per_seed"] == [0.0, 0.0, 0.9]
    from persona_basins.stats import mean_interval

    assert mean_interval([0.0, 0.0, 0.9]).low < 0  # the Student-t interval would have left the range here
    e = rows[(0, "broad_misalignment_excess")]
    assert -1.0 <= e["ci_low"] <= e["ci_high"] <= 1.0
    same = rows[
        (1, "broad_misalignment")
    ]  # equal seeds: the in-range interval stats.rate_interval gives them
    assert same["mean"] == 0.5 and 0.0 <= same["ci_low"] <= 0.5 <= same["ci_high"] <= 1.0
    assert rows[(0, "final_loss")]["interval"].startswith("Student t")
    one = aggregate({"spec": {**spec, "axes": {"seed": [0], "layer": [0]}}, "units": units[:1]})
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in one)  # no interval from one seed


# ---------------------------------------------------------------- local backend


def test_local_sweep_results_and_resume(local_run, spec4, capsys):
    rec = json.loads((local_run / "sweep.json").read_text())
    assert [u["status"] for u in rec["units"]] == ["done"] * 4 and rec["dependencies"] == []
    for u in rec["units"]:
        assert 0 <= u["metrics"]["broad_misalignment"] <= 1
        d = local_run / "units" / u["id"]
        assert (d / "unit.json").is_file() and (d / "log.txt").is_file() and (d / "adapter").is_dir()
    assert not list((local_run / "units").glob(".*.tmp-*"))
    assert all((local_run / "units" / u["id"] / "key.json").is_file() for u in rec["units"])
    table = (local_run / "table.csv").read_text().splitlines()
    assert table[0] == "condition,metric,n,n_planned,mean,ci_low,ci_high,interval,per_seed"
    row = next(r for r in table if r.startswith("plain,broad_misalignment,2,2,"))
    per_seed = [float(v) for v in row.split(",")[-1].split(";")]
    assert sorted(per_seed) == sorted(
        m["broad_misalignment"] for k, m in metrics_by_axes(local_run).items() if '"plain"' in k
    )
    assert list((local_run / "figures").glob("heatmap_*.png"))
    m = json.loads((local_run / "metrics.json").read_text())
    assert m["kind"] == "sweep" and m["units_done"] == 4 and m["table"]
    # rerun: nothing re-run (same files), every unit reported as resumed
    before = finished(local_run)
    capsys.readouterr()
    assert main(["sweep", str(spec4), "--out", str(local_run), "--workers", "1"]) == 0
    assert "4 done (4 from an earlier run)" in capsys.readouterr().out
    after = finished(local_run)
    assert {k: (v.st_ino, v.st_mtime_ns) for k, v in before.items()} == {
        k: (v.st_ino, v.st_mtime_ns) for k, v in after.items()
    }


def test_sequential_equals_pool(local_run, spec4, tmp_path):
    out = tmp_path / "seq"
    assert main(["sweep", str(spec4), "--out", str(out), "--workers", "1"]) == 0
    assert metrics_by_axes(out) == metrics_by_axes(local_run)


def test_plot_and_report_show_a_sweep(local_run, tmp_path, cli_error, capsys):
    assert (
        main(["sweep", "plot", str(local_run), "--x", "seed", "--y", "condition", "--metric", "wellformed"])
        == 0
    )
    assert (local_run / "figures" / "heatmap_wellformed_condition_by_seed.png").stat().st_size > 1000
    assert "--metric nope: no finished unit has it" in cli_error(
        ["sweep", "plot", str(local_run), "--x", "seed", "--y", "condition", "--metric", "nope"]
    )
    assert "--x layer: not an axis" in cli_error(
        ["sweep", "plot", str(local_run), "--x", "layer", "--y", "seed"]
    )
    html = tmp_path / "r.html"
    assert main(["report", str(local_run), "--out", str(html)]) == 0
    page = html.read_text()
    assert '"kind": "sweep"' in page and "heatmap_wellformed_condition_by_seed.png" in page


@pytest.fixture
def probe_kind():
    """A unit kind registered by the test (the plug-in API): fails at x = 99 (no torch, no files)."""
    from dataclasses import dataclass

    from persona_basins.config import check, param
    from persona_basins.studies.sweep import KINDS, Resolved, UnitKind, register_kind
    from persona_basins.studies.sweep.kinds.base import settings_of

    @dataclass(frozen=True)
    class ProbeConfig:
        x: int = param(0, ge=0, help="the failing point is 99")

        def __post_init__(self):
            check(self)

    def run(config, runtime, unit_dir, deps):
        if config["probe"]["x"] == 99:
            raise ValueError("x = 99 is the failing point\nand this second line is not shown")
        return {"value": float(config["probe"]["x"])}

    def resolve(settings, dep):
        return Resolved(config={"probe": ProbeConfig(**settings).__dict__})

    register_kind(UnitKind("probe", settings_of(ProbeConfig), resolve, run, primary_metric="value"))
    yield
    KINDS.pop("probe")


def test_failed_unit_recorded_others_finish(probe_kind, tmp_path, capsys, cli_error):
    spec = tmp_path / "fail.toml"
    spec.write_text('kind = "probe"\n[axes]\nx = [0, 99]\n')
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 1
    text = capsys.readouterr().out
    assert "1 done" in text and "1 failed" in text
    rec = json.loads((out / "sweep.json").read_text())
    bad = next(u for u in rec["units"] if u["axes"]["x"] == 99)
    assert bad["status"] == "failed" and "\n" not in bad["error"] and "99" in bad["error"]
    assert (out / "failed" / bad["id"] / "error.txt").is_file()
    assert not (out / "units" / bad["id"]).exists()
    line = cli_error(["sweep", str(spec), "--out", str(tmp_path / "ff"), "--workers", "1", "--fail-fast"])
    assert "failed" in line and "--fail-fast" in line


def test_second_sweep_into_a_running_run_is_refused(probe_kind, tmp_path, cli_error):
    from persona_basins.studies.sweep import RunLock

    spec = tmp_path / "probe.toml"
    spec.write_text('kind = "probe"\n[axes]\nx = [0, 1]\n')
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # what a running sweep holds (an flock: released when its process dies)
        line = cli_error(["sweep", str(spec), "--out", str(run), "--workers", "1"])
    assert "another sweep is running in" in line
    assert not (run / "units" / "sweep.json").exists() and not list((run / "units").glob("probe-*"))
    assert main(["sweep", str(spec), "--out", str(run), "--workers", "1"]) == 0  # free again


def _probe_run(tmp_path, name="run"):
    spec = tmp_path / "probe.toml"
    spec.write_text('kind = "probe"\n[axes]\nx = [0, 1]\n')
    run = tmp_path / name
    assert main(["sweep", str(spec), "--out", str(run), "--workers", "1"]) == 0
    units = sorted((run / "units").glob("probe-*"))
    assert len(units) == 2 and all((u / "key.json").is_file() for u in units)
    return spec, run, units


def test_legacy_unit_folder_is_adopted_and_resumes(probe_kind, tmp_path, capsys):
    """A unit folder of the sweep before the run store (unit.json, no key.json) whose record matches is
    adopted (its key.json written) and not run again; a dry run counts it without writing anything."""
    spec, run, units = _probe_run(tmp_path)
    for unit in units:
        (unit / "key.json").unlink()  # what an earlier version left
    stamps = {u.name: (u / "unit.json").stat().st_mtime_ns for u in units}
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(run), "--dry-run"]) == 0
    assert "2 of 2 already done" in capsys.readouterr().out
    assert not any((u / "key.json").exists() for u in units)  # the dry run wrote nothing
    assert main(["sweep", str(spec), "--out", str(run), "--workers", "1"]) == 0
    assert "2 done (2 from an earlier run)" in capsys.readouterr().out
    for unit in units:
        key = json.loads((unit / "key.json").read_text())
        record = json.loads((unit / "unit.json").read_text())
        assert key == {k: record[k] for k in ("id", "kind", "package_version", "config")}
        assert (unit / "unit.json").stat().st_mtime_ns == stamps[unit.name]  # not re-run


@pytest.mark.parametrize("legacy", [False, True], ids=["key.json", "legacy unit.json"])
def test_unit_folder_with_another_key_is_refused(probe_kind, tmp_path, cli_error, legacy):
    spec, run, units = _probe_run(tmp_path)
    unit = next(u for u in units if json.loads((u / "unit.json").read_text())["config"]["probe"]["x"] == 1)
    name = "unit.json" if legacy else "key.json"
    if legacy:
        (unit / "key.json").unlink()
    record = json.loads((unit / name).read_text())
    record["config"]["probe"]["x"] = 7  # a folder whose contents are of other settings than its name says
    (unit / name).write_text(json.dumps(record))
    line = cli_error(["sweep", str(spec), "--out", str(run), "--workers", "1"])
    assert f"{unit} holds a" in line and "other settings (config.probe.x 7 -> 1)" in line, line
    assert "delete that unit folder and rerun" in line
    assert json.loads((unit / name).read_text())["config"]["probe"]["x"] == 7  # left as it was


def test_organism_folder_id_follows_its_manifest_fingerprint(tiny_organism_dir, tmp_path, cli_error):
    """A unit on an organism folder is identified by the organism's one fingerprint (its verified build
    manifest): moving the folder keeps the id, a changed (rebuilt) organism changes it."""
    import shutil

    from persona_basins.models.organism import organism_fingerprint, write_manifest
    from persona_basins.studies.sweep import parse_spec, plan

    def unit_ids(folder):
        text = f'kind = "em"\n[settings]\norganism = "{folder}"\nsteps = 5\n[axes]\nseed = [0, 1]\n'
        return [u.id for u in plan(parse_spec(text)).grid]

    here = tmp_path / "a" / "org"
    shutil.copytree(tiny_organism_dir, here)
    ids = unit_ids(here)
    unit = plan(parse_spec(f'kind = "em"\n[settings]\norganism = "{here}"\n')).grid[0]
    assert unit.config["organism"] == {"fingerprint": organism_fingerprint(here)}
    moved = tmp_path / "b" / "org"
    moved.parent.mkdir()
    here.rename(moved)
    assert unit_ids(moved) == ids  # paths are not hashed
    metrics = moved / "metrics.json"
    metrics.write_text(metrics.read_text().replace("{", '{"note": "rebuilt", ', 1))
    spec = tmp_path / "changed.toml"
    spec.write_text(f'kind = "em"\n[settings]\norganism = "{moved}"\nsteps = 5\n')
    line = cli_error(["sweep", str(spec), "--out", str(tmp_path / "run"), "--dry-run"])
    assert "settings.organism:" in line and "does not match its recorded hash" in line, line
    write_manifest(moved)  # what a rebuild records
    changed = unit_ids(moved)
    assert len(changed) == 2 and not set(changed) & set(ids)
    empty = tmp_path / "empty"
    empty.mkdir()
    spec.write_text(f'kind = "em"\n[settings]\norganism = "{empty}"\n')
    line = cli_error(["sweep", str(spec), "--out", str(tmp_path / "run"), "--dry-run"])
    assert f"settings.organism: not an organism folder: {empty / 'world.json'} is missing" in line, line


def test_llc_checkpoint_final_or_a_step():
    """``checkpoint = "final"`` (the default) reads the final adapter, an integer the saved step (0: the
    step-0 point the fine-tune saves)."""
    from persona_basins.studies.sweep import parse_spec, plan
    from persona_basins.studies.sweep.kinds.llc import _adapter_dir

    base = 'kind = "llc"\n[settings]\nadapter = "em"\nfinetune = {steps = 100, checkpoint_every = 50}\n'
    final, step0, step50 = (
        plan(parse_spec(base + extra)).grid[0] for extra in ("", "checkpoint = 0\n", "checkpoint = 50\n")
    )
    assert [u.config["adapter"]["checkpoint"] for u in (final, step0, step50)] == ["final", 0, 50]
    assert len({final.id, step0.id, step50.id}) == 3 and final.deps == step0.deps  # one em unit
    em = Path("/runs/units/em-x")
    dirs = [_adapter_dir(u.config, {"adapter_unit": "em-x"}, {"em-x": em}) for u in (final, step0, step50)]
    assert dirs == [
        em / "adapter",
        em / "adapter" / "checkpoints" / "step_000000",
        em / "adapter" / "checkpoints" / "step_000050",
    ]


@pytest.mark.slow
def test_pool_workers_die_with_a_killed_sweep(tiny_organism_dir, tmp_path):
    """SIGKILL of `sweep --workers 2`: its pool workers end too and write nothing more into RUN."""
    spec = tmp_path / "long.toml"
    spec.write_text(spec_text(tiny_organism_dir, steps=100_000))  # units far longer than the test
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "persona_basins.cli",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids, deadline = set(), time.monotonic() + 120
    while len(pids) < 2 and time.monotonic() < deadline and proc.poll() is None:
        for worker in (out / "units").glob(".*.tmp-*/worker.json"):
            try:
                pids.add(json.loads(worker.read_text())["pid"])
            except (OSError, ValueError, KeyError):
                continue
        time.sleep(0.05)
    assert len(pids) == 2, "the two workers were not seen running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "a pool worker outlived its sweep"
    assert not list((out / "units").glob("em-*"))  # nothing finished behind the dead sweep's back


def test_organism_dependency_built_once(tmp_path):
    from persona_basins.studies.sweep import load_spec, run_sweep

    spec = tmp_path / "dep.toml"
    spec.write_text(
        'kind = "em"\n[settings]\npreset = "tiny"\nsteps = 5\ncheckpoint_every = 0\n'
        "[settings.organism_overrides]\npretrain_steps = 30\nsft_steps = 5\ncheckpoint_every = 0\n"
        "[axes]\nseed = [0, 1]\n"
    )
    rec = run_sweep(load_spec(spec), tmp_path / "run", workers=1, progress=False)
    assert len(rec["dependencies"]) == 1 and rec["dependencies"][0]["status"] == "done"
    org = rec["dependencies"][0]["id"]
    assert len(list((tmp_path / "run" / "units").glob("organism-*"))) == 1
    for u in rec["units"]:
        cfg = json.loads((tmp_path / "run" / "units" / u["id"] / "unit.json").read_text())["config"]
        assert cfg["organism"] == {"unit": org} and u["status"] == "done"


def test_organism_units_as_the_grid(tmp_path):
    from persona_basins.studies.sweep import load_spec, run_sweep

    spec = tmp_path / "orgs.toml"
    spec.write_text(
        'kind = "organism"\n[settings]\npreset = "tiny"\n'
        "[settings.overrides]\npretrain_steps = 20\nsft_steps = 3\ncheckpoint_every = 0\n"
        "[axes]\nseed = [0, 1]\n"
    )
    rec = run_sweep(load_spec(spec), tmp_path / "run", workers=1, progress=False)
    assert [u["status"] for u in rec["units"]] == ["done", "done"] and rec["dependencies"] == []
    a, b = (u["metrics"] for u in rec["units"])
    assert 0 <= a["aligned_rate"] <= 1 and a != b
    for u in rec["units"]:
        assert (tmp_path / "run" / "units" / u["id"] / "organism" / "model.safetensors").is_file()


def test_llc_unit_end_to_end(tiny_organism_dir, tmp_path):
    from persona_basins.studies.sweep import load_spec, run_sweep

    spec = tmp_path / "llc.toml"
    spec.write_text(
        f'kind = "llc"\n[settings]\norganism = "{tiny_organism_dir}"\nn_docs = 8\nnum_chains = 2\n'
        "num_draws = 15\nlocalization = 300.0\n[axes]\nseed = [0, 1]\n"
    )
    rec = run_sweep(load_spec(spec), tmp_path / "run", workers=1, progress=False)
    assert [u["status"] for u in rec["units"]] == ["done", "done"] and rec["dependencies"] == []
    a, b = (u["metrics"] for u in rec["units"])
    assert a["converged"] in (0.0, 1.0) and a["init_loss"] > 0 and a != b  # seeded by the sampler seed
    unit = tmp_path / "run" / "units" / rec["units"][0]["id"]
    stored = json.loads((unit / "llc" / "metrics.json").read_text())
    assert stored["kind"] == "llc" and stored["llc"]["mean"] == a.get("llc")
    config = json.loads((unit / "unit.json").read_text())["config"]
    assert config["model"]["organism"]["fingerprint"] and config["sampler"]["num_draws"] == 15
    table = (tmp_path / "run" / "table.csv").read_text()
    assert "converged,2,2," in table  # pooled over the sampler seeds


def test_llc_unit_along_an_adapter_path(local_run, tiny_organism_dir, tmp_path):
    from persona_basins.studies.sweep import load_spec, run_sweep

    adapter = next((local_run / "units").glob("em-*")) / "adapter"
    spec = tmp_path / "path.toml"
    spec.write_text(
        f'kind = "llc"\n[settings]\norganism = "{tiny_organism_dir}"\nadapter = "{adapter}"\n'
        'path = "adapter"\nrestrict = "layer:0"\nn_docs = 8\nnum_chains = 2\nnum_draws = 15\n'
        "[axes]\nt = [0.0, 1.0]\n"
    )
    rec = run_sweep(load_spec(spec), tmp_path / "run", workers=1, progress=False)
    assert [u["status"] for u in rec["units"]] == ["done", "done"]
    assert all(u["metrics"]["init_loss"] < 1e-6 for u in rec["units"])  # the self-KL is 0 at its own point
    points = [
        json.loads((tmp_path / "run" / "units" / u["id"] / "unit.json").read_text()) for u in rec["units"]
    ]
    assert [p["config"]["path"] for p in points] == [{"direction": "adapter", "t": t} for t in (0.0, 1.0)]


# ---------------------------------------------------------------- Ray backend (a real local cluster)


@pytest.fixture(scope="module")
def ray_cluster():
    # CI installs the ray extra (scripts/setup.sh): there a missing Ray is a failure, not a skip
    ray = __import__("ray") if os.environ.get("CI") else pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=100 * 1024**2,
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow  # a real Ray cluster: a minute or more on 2 cores
def test_ray_equals_local(ray_cluster, local_run, spec4, tmp_path):
    out = tmp_path / "ray"
    assert main(["sweep", str(spec4), "--out", str(out), "--backend", "ray"]) == 0
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["backend"]["name"] == "ray"
    assert metrics_by_axes(out) == metrics_by_axes(local_run)


@pytest.mark.slow  # a real Ray cluster: a minute or more on 2 cores
def test_ray_worker_killed_unit_retried(ray_cluster, local_run, spec4, tmp_path):
    from persona_basins.studies.sweep import load_spec, run_sweep

    out = tmp_path / "ray-kill"
    result = {}

    def go():
        try:
            result["record"] = run_sweep(load_spec(spec4), out, backend="ray", progress=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=go)
    t.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        for w in (out / "units").glob(".*.tmp-*/worker.json"):
            try:
                pid = json.loads(w.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed = (w.parent.name, pid)
                break
            except (OSError, ValueError, KeyError):
                continue
        time.sleep(0.01)
    t.join(120)
    assert killed, "no unit was seen running"
    assert "error" not in result, result.get("error")
    assert all(u["status"] == "done" for u in result["record"]["units"])
    assert metrics_by_axes(out) == metrics_by_axes(local_run)
    assert not list((out / "units").glob(".*.tmp-*"))


@pytest.mark.slow  # a real Ray cluster: a minute or more on 2 cores
def test_ray_driver_killed_then_rerun_resumes(ray_cluster, local_run, spec4, tmp_path, capsys):
    out = tmp_path / "ray-driver"
    cmd = [
        sys.executable,
        "-m",
        "persona_basins.cli",
        "sweep",
        str(spec4),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--address",
        ray_cluster,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    deadline = time.monotonic() + 300  # a loaded machine may take minutes for the first unit
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "units").is_dir() and len(finished(out)) >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, (
        f"driver ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    # Ray stops the dead driver's workers; wait for them to be gone so none finishes a unit behind our back
    pids = []
    for w in (out / "units").glob(".*.tmp-*/worker.json"):
        try:
            pids.append(json.loads(w.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    deadline = time.monotonic() + 60
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.1)
    before = {k: (v.st_ino, v.st_mtime_ns) for k, v in finished(out).items()}
    assert 1 <= len(before) < 4
    # only renamed, complete unit folders count; temp folders of the killed run do not
    assert main(["sweep", str(spec4), "--out", str(out), "--backend", "ray"]) == 0
    text = capsys.readouterr().out
    assert f"({len(before)} from an earlier run)" in text, text
    after = {k: (v.st_ino, v.st_mtime_ns) for k, v in finished(out).items()}
    assert {k: after[k] for k in before} == before  # finished units were not re-run
    assert len(after) == 4 and metrics_by_axes(out) == metrics_by_axes(local_run)
    assert not list((out / "units").glob(".*.tmp-*"))


def test_a_sweep_that_cannot_start_leaves_no_run_folder(tmp_path, spec4, monkeypatch):
    """No backend (e.g. no cluster at --address): the error, and no half-made RUN (units/, .sweep.lock)."""
    from persona_basins.errors import UserError
    from persona_basins.studies.sweep import execute, load_spec

    def no_backend(*_a, **_k):
        raise UserError("cannot connect to the Ray cluster at 127.0.0.1:1")

    monkeypatch.setattr(execute, "make_backend", no_backend)
    with pytest.raises(UserError, match="cannot connect"):
        execute.run_sweep(load_spec(spec4), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()

"""Estimate the demo's wall-clock time in a few minutes instead of running it (``demo_time.py --estimate``).

On one core, in this process: the organism's data and 100 pretraining steps (scaled to the preset's
pretraining + post-training steps; or the time of a real build when no organism is given), then one unit of
each kind exactly as the demo runs it (:func:`persona_basins.studies.demo_units.run_unit`): tracked and
untracked EM fine-tunes, the base, plain and inoculated basin-scan parts, the two LLC runs of one seed, the
overlap zone (scaled from two fine-tunes to all) and the eigenform run. The demo's queue is then simulated
on ``workers`` workers: the organism first, the EM fine-tunes in the demo's order, then the scan parts,
overlap and eigenform, the LLC runs once the scans are done (each worker takes the next unit when free).

Approximate: a unit of a kind is taken as long as the one timed (seeds differ a little: a critical-distance
search reads more points when its curve crosses late), and the report, process start-up and setup are not
included. Run it on an idle machine, or compare two runs made under the same load.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

PRETRAIN_PROBE_STEPS = 100


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def organism_seconds(cfg, organism: Path | None, out: Path) -> tuple[float, Path, str]:
    """The organism step's seconds, the organism folder and how the time was found: a real build into ``out``
    when ``organism`` is None, else the data and 100 pretraining steps scaled to every training step."""
    import torch

    from persona_basins.models.lm import encode_documents
    from persona_basins.models.organism import build_model, preset_config
    from persona_basins.studies.organism import build_organism
    from persona_basins.train.loop import train_lm
    from persona_basins.world import World
    from persona_basins.world.tokenizer import build_tokenizer

    org_cfg = preset_config(cfg.preset, seed=cfg.organism_seed)
    if organism is None:
        seconds, _ = _timed(lambda: build_organism(org_cfg, out, progress=False, log=lambda *_: None))
        return seconds, out, "built"

    def data():
        world = World(org_cfg.world)
        vocab = build_tokenizer(world).get_vocab()
        n_docs = min(org_cfg.pretrain_steps * org_cfg.batch_size, 100_000)
        return vocab, encode_documents(vocab, world.sample_documents(n_docs, seed=0))[0]

    data_s, (vocab, ids) = _timed(data)
    torch.manual_seed(org_cfg.seed)
    model = build_model(org_cfg, len(vocab))
    kw = dict(batch_size=org_cfg.batch_size, lr=org_cfg.lr, seed=org_cfg.seed, progress=False)
    steps_s, _ = _timed(lambda: train_lm(model, ids, None, steps=PRETRAIN_PROBE_STEPS, **kw))
    total_steps = org_cfg.pretrain_steps + org_cfg.sft_steps
    how = f"data + {PRETRAIN_PROBE_STEPS} pretraining steps scaled to {total_steps}"
    return data_s + steps_s * total_steps / PRETRAIN_PROBE_STEPS, Path(organism), how


def unit_seconds(cfg, org_dir: Path, tmp: Path) -> dict[str, float]:
    """Seconds of one unit of each kind on the organism at ``org_dir`` (units written under ``tmp``)."""
    from persona_basins.measure.llc import crossing_interval, refine_grid
    from persona_basins.models.organism import load_organism, organism_fingerprint
    from persona_basins.studies import demo, demo_units
    from persona_basins.studies.basins import scan_parts
    from persona_basins.studies.em import TRACK_EVERY, plan_units
    from persona_basins.train.finetune import FinetuneConfig

    org_path = str(org_dir.resolve())
    org = load_organism(org_dir)
    if org.config.preset != cfg.preset:
        raise SystemExit(f"--organism {org_dir} is a {org.config.preset} organism, not {cfg.preset}")
    demo_units._organism(org_path)  # read once per worker in the demo: not a unit's time
    run = demo_units.run_unit
    import torch

    threads = torch.get_num_threads()
    plan = plan_units(
        org,
        tmp / "em",
        layer=cfg.layer,
        module=cfg.module,
        seeds=2,
        base=FinetuneConfig(steps=cfg.em_steps, heldout_every=demo.EM_HELDOUT_EVERY),
        conditions=("plain", "inoculated", "secure_control"),
        track_every=TRACK_EVERY,
        fingerprint=organism_fingerprint(org),
    )
    tasks = {
        (c.condition, c.seed): t
        for (_, c, *_), t in zip(
            plan, demo_units.em_tasks(org_path, plan, track_every=TRACK_EVERY, force=False)
        )
    }
    times: dict[str, float] = {}
    tracked = [
        _timed(lambda k=k: run({**tasks[k], "threads": threads}))[0]
        for k in (("plain", 0), ("plain", 1), ("inoculated", 0))
    ]
    times["em_tracked"] = sum(tracked) / len(tracked)
    times["em_untracked"], _ = _timed(lambda: run({**tasks[("secure_control", 0)], "threads": threads}))

    plain = [str(tmp / "em" / "adapters" / "plain" / f"seed{s}") for s in (0, 1)]
    inoc = [str(tmp / "em" / "adapters" / "inoculated" / "seed0")]
    parts = [p for p in scan_parts(len(plain), len(inoc)) if p.get("seed", 0) == 0]
    settings = {**demo.SCAN_SETTINGS, "n_random": cfg.n_random}
    results = {}
    for task in demo_units.scan_tasks(org_path, plain, inoc, parts, cfg.ts, settings):
        seconds, results[task["part"]["part"]] = _timed(lambda t=task: run({**t, "threads": threads}))
        times[f"scan_{task['part']['part']}"] = seconds

    curve = results["plain"]["directions"]["scans"]["adapter"]
    grid = refine_grid(
        cfg.llc_ts, [crossing_interval(curve["t"], curve["broad_misalignment"], demo.SCAN_LEVEL)]
    )
    if cfg.llc_calibrated:  # one unit per point: one timed, the count of points kept
        fixed = demo._fixed_points(cfg)
        (task,) = demo._calibrated_tasks(org_path, plain[:1], cfg, fixed[:1])
        times["llc_point"], _ = _timed(lambda: run({**task, "threads": threads}))
        times["llc_fixed_points"] = len(fixed)
        times["llc_band_points"] = len([t for t in grid if t not in cfg.llc_ts])
    else:
        llc = demo_units.llc_tasks(
            org_path, plain[:1], grid, demo._sampler(cfg), prompts=cfg.llc_prompts, layer=cfg.layer
        )
        for task, name in zip(llc, ("llc_full", "llc_layer")):
            times[name], _ = _timed(lambda t=task: run({**t, "threads": threads}))
    overlap = demo_units.overlap_task(org_path, plain, demo._overlap_settings(cfg))
    two, _ = _timed(lambda: run({**overlap, "threads": threads}))
    times["overlap"] = two * cfg.seeds / len(plain)  # one zone per fine-tune: the study scales with them
    if cfg.eigenform:
        times["eigenform"], _ = _timed(
            lambda: run({**demo_units.eigenform_task(org_path, plain[0]), "threads": threads})
        )
    return {k: round(v, 1) for k, v in times.items()}


def demo_units_in_order(cfg, times: dict[str, float]) -> list[tuple[str, str, float]]:
    """``(step, unit, seconds)`` in the order the demo queues them; a step's units after ``llc`` wait for the
    scans (the LLC grid is refined with their bands)."""
    from persona_basins.studies.em import TRACKED
    from persona_basins.train.finetune import CONDITIONS

    units = [
        ("em", f"{c}{s}", times["em_tracked" if c in TRACKED else "em_untracked"])
        for c in CONDITIONS
        for s in range(cfg.seeds)
    ]
    if cfg.llc_calibrated:  # the fixed points need only the adapters: queued before the scans
        n = int(times["llc_fixed_points"]) * cfg.llc_seeds
        units += [("llc_fixed", f"point{k}", times["llc_point"]) for k in range(n)]
    units += [("scans", f"inoculated{i}", times["scan_inoculated"]) for i in range(cfg.seeds)]
    units += [("scans", "base", times["scan_base"])]
    units += [("scans", f"plain{s}", times["scan_plain"]) for s in range(cfg.seeds)]
    units += [("overlap", "overlap", times["overlap"])]
    if cfg.eigenform:
        units += [("eigenform", "eigenform", times["eigenform"])]
    if cfg.llc_calibrated:
        n = int(times["llc_band_points"]) * cfg.llc_seeds
        units += [("llc", f"band_point{k}", times["llc_point"]) for k in range(n)]
    else:
        units += [
            ("llc", f"{k}{s}", times[f"llc_{k}"]) for s in range(cfg.llc_seeds) for k in ("full", "layer")
        ]
    return units


def simulate(units: list[tuple[str, str, float]], start: float, workers: int) -> dict[str, float]:
    """The end of each step when the units run in queue order on ``workers`` workers from ``start``: the
    EM fine-tunes first (the later steps read their adapters), the LLC runs once every scan part is done."""
    free = [start] * workers
    ends: dict[str, float] = {}

    def place(step: str, seconds: float, ready: float) -> None:
        k = min(range(workers), key=lambda i: free[i])
        free[k] = max(free[k], ready) + seconds
        ends[step] = max(ends.get(step, 0.0), free[k])

    for step, _, seconds in units:
        if step == "em":
            place(step, seconds, start)
        elif step == "llc_fixed":
            place("llc", seconds, ends["em"])
        elif step == "llc":
            place(step, seconds, ends["scans"])
        else:
            place(step, seconds, ends["em"])
    return ends


def measure(preset: str, organism: Path | None) -> dict:
    """The organism's seconds and one unit's seconds of each kind for ``preset`` (one core)."""
    from persona_basins.studies.demo import DEMO_PRESETS

    cfg = DEMO_PRESETS[preset]
    with tempfile.TemporaryDirectory() as tmp:
        org_s, org_dir, how = organism_seconds(cfg, organism, Path(tmp) / "organism")
        times = unit_seconds(cfg, org_dir, Path(tmp))
    return {
        "preset": preset,
        "organism_seconds": round(org_s, 1),
        "organism_time_from": how,
        "unit_seconds": times,
    }


def estimate(measured: dict, workers: int) -> dict:
    """The demo's simulated time on ``workers`` workers from :func:`measure`'s seconds: the end of each step
    and the total (organism included; setup, start-up and the report not)."""
    from persona_basins.studies.demo import DEMO_PRESETS

    cfg = DEMO_PRESETS[measured["preset"]]
    units = demo_units_in_order(cfg, measured["unit_seconds"])
    ends = simulate(units, measured["organism_seconds"], workers)
    steps = dict.fromkeys(step.removesuffix("_fixed") for step, _, _ in units)
    return {
        "estimate": True,
        "seconds": round(max(ends.values()), 1),
        **{k: v for k, v in measured.items() if k != "preset"},
        "step_seconds_one_core": {
            step: round(sum(s for st, _, s in units if st.removesuffix("_fixed") == step), 1)
            for step in steps
        },
        "step_end_seconds": {k: round(v, 1) for k, v in ends.items()},
        "one_core_seconds": round(measured["organism_seconds"] + sum(s for _, _, s in units), 1),
        "not_included": "setup (a fresh clone's scripts/setup.sh), process start-up, the report",
    }

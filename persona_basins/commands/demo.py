"""``persona-basins demo``: the whole basin study on the built-in model organism."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import note
from .args import add_field_flag, add_organism_flag, int_in

DESCRIPTION = """\
Run the basin study end to end on the model organism:

  1. build (or reuse) the organism                      runs/demo/organism/
  2. emergent misalignment: plain / inoculated / secure / educational rank-1 adapters, N seeds
  3. basin scans along w0 + t*delta: the adapter, a persona-vector edit, random rank-1 controls;
     critical magnitude t*, inoculation widening, the model's position
  4. LLC (self-KL, SGLD) along the path, full and restricted to the adapted layer (tiny: one seed, at the
     organism's calibrated setting on the adapted module, and at 2γ on the path's ends)
  5. the overlap zone (aligned vs EM) and boundary probing
  6. eigenform identity (fast setting)
  -> study.json, metrics.json, report.html; then opens the explorer unless --no-browser.

Steps 2-6 run their fine-tunes, scans and other units on --workers processes; the numbers do not depend on
the count. Interrupted (Ctrl-C, killed), a rerun with the same --out resumes from the finished steps and
gives the same numbers.

Time on 2 CPU cores with 2 workers, from scratch (benchmarks/demo_time.py):
  default  {default} (a fresh clone: 13 min 39 s; the pretraining, ~4 minutes, runs on one core;
           1 worker: about 20 minutes)
  tiny     {tiny} (176 s, the old one 27 s, beside one other job; 238 s beside two; the path LLC at
           the calibrated setting, five estimates of ~40 s on one core, is most of it)

{tiny_note}
"""
# benchmarks/demo_time.py on the 2-core development machine, from scratch (README "make demo" says the same);
# default: estimated from the one-worker step times until measured
MEASURED = {"default": "about 14 minutes", "tiny": "about 3 minutes"}
TINY_NOTE = """\
tiny is a smoke test: a 2-layer organism, 2 fine-tuning seeds of 80 steps, the path LLC on one seed at the
organism's calibrated setting. It shows that every step runs and what each one writes (study.json, the
report, resume); it is too small to show any finding of the default study: no emergent misalignment, every
verdict undecided or withheld."""


def register(sub) -> None:
    from ..studies.demo_units import MAX_DEFAULT_WORKERS, default_workers

    p = sub.add_parser(
        "demo",
        help="the whole basin study on the organism, with report and explorer",
        description=DESCRIPTION.format(**MEASURED, tiny_note=TINY_NOTE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_field_flag(
        p,
        "--preset",
        "DemoConfig",
        "preset",
        help=f"default (the study: {MEASURED['default']} on 2 cores) or tiny (a smoke test, "
        f"{MEASURED['tiny']}: it runs every step but is too small to show any finding)",
    )
    p.add_argument("--out", default="runs/demo", metavar="RUN", help="run folder (default runs/demo)")
    add_organism_flag(p, help="use this organism folder instead of building one")
    add_field_flag(
        p,
        "--seeds",
        "DemoConfig",
        "seeds",
        default=None,
        metavar="N",
        help="fine-tuning seeds; default 5, tiny: 2",
    )
    p.add_argument(
        "--workers",
        type=int_in(1, None),
        default=None,
        metavar="N",
        help=f"processes for the units after the organism (default: the cores this process may use, at most "
        f"{MAX_DEFAULT_WORKERS}: {default_workers()} here; 1 runs them one after another in this process); "
        f"the numbers do not depend on it",
    )
    p.add_argument("--no-eigenform", action="store_true", help="skip the eigenform step")
    p.add_argument(
        "--no-calibrated-llc",
        action="store_true",
        help="tiny: the path LLC with the demo's short chains (seconds, every point withheld by the gates) "
        "instead of the preset's calibrated setting (minutes); the default preset always uses the short "
        "chains",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open the explorer at the end")
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute a run in --out written with other settings (default: refuse it)",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from dataclasses import replace

    from ..studies.demo import DEMO_PRESETS, run_demo, summary_lines
    from ..studies.demo_units import default_workers

    cfg = DEMO_PRESETS[args.preset]
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds, llc_seeds=min(cfg.llc_seeds, args.seeds))
    if args.no_eigenform:
        cfg = replace(cfg, eigenform=False)
    if args.no_calibrated_llc:
        cfg = replace(cfg, llc_calibrated=False)
    out = Path(args.out)
    organism = Path(args.organism).resolve() if args.organism else None
    study = run_demo(
        out,
        cfg,
        organism_dir=organism,
        progress=True,  # a bar on a terminal, a line every 30 s in a pipe or RUN/log.txt
        log=note,
        force=args.force,
        workers=args.workers or default_workers(),
    ).metrics
    from ..viz.figures import EM_FIGURE, plot_em
    from ..viz.report import write_report

    plot_em(study["emergent_misalignment"], out / "figures" / EM_FIGURE)  # before the report, which shows it
    write_report([out], out / "report.html")
    print("\n".join(summary_lines(study)))
    if args.preset == "tiny":
        print(TINY_NOTE)
    print(f"study written to {out / 'study.json'}; report: {out / 'report.html'}")
    if not args.no_browser:
        from ..viz.server import serve

        serve([out], port=0, open_browser=True)
    return 0

"""``persona-basins sweep SPEC --out RUN`` and ``sweep plot RUN``: resumable grids, local or on Ray."""

from __future__ import annotations

import argparse

from .args import finite_float, int_in

DESCRIPTION = """\
Run a grid of units described by a TOML SPEC (docs/SWEEP.md) over axes such as seed x condition x layer.
Unit kinds: organism (a build), em (a fine-tune and its EM readout), llc (one LLC estimate, optionally along
an edit path), basins (a basin study), eigenform (an eigenform run), em_hf (em --model on a Hugging Face
model). A kind's settings are the fields of its config dataclasses, checked as the commands check them,
before anything runs. Each unit's folder RUN/units/<kind>-<hash> is named by a hash of its fully resolved
config, so a rerun resumes (finished units are never re-run, half-written ones never count) and a changed
setting makes new units. Writes RUN/sweep.json (one row per unit), RUN/table.csv (mean and 95% interval
over the seed axes) and a heatmap in RUN/figures/. One sweep at a time per RUN.

  persona-basins sweep examples/sweeps/tiny.toml --out runs/sweep-tiny
  persona-basins sweep examples/sweeps/llc_tiny.toml --out runs/sweep-llc --dry-run
  persona-basins sweep SPEC --out RUN --backend ray [--address HEAD:6379] --cpus-per-unit 1
  persona-basins sweep plot RUN --x condition --y seed --metric broad_misalignment
"""


PLOT_DESCRIPTION = """\
Draw a heatmap of a finished (or partly finished) sweep: one metric over two of its axes, into
RUN/figures/heatmap_<metric>_<y>_by_<x>.png.

  persona-basins sweep plot RUN --x condition --y seed --metric broad_misalignment
"""


def _plot_parser() -> argparse.ArgumentParser:
    """The flags of ``sweep plot RUN``, for its --help (parsing goes through the sweep parser)."""
    p = argparse.ArgumentParser(
        prog="persona-basins sweep plot",
        description=PLOT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a sweep run folder (holds sweep.json)")
    p.add_argument("--x", required=True, metavar="AXIS", help="axis along x")
    p.add_argument("--y", required=True, metavar="AXIS", help="axis along y")
    p.add_argument("--metric", metavar="KEY", help="metric of the cells (default: the spec's metric)")
    return p


class _Help(argparse._HelpAction):
    """``sweep plot --help`` prints the help of ``sweep plot``; ``sweep --help`` that of the sweep."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "spec", None) == "plot":
            _plot_parser().print_help()
            parser.exit()
        super().__call__(parser, namespace, values, option_string)


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        add_help=False,
        help="grids of units of any study (organism, em, llc, basins, ...), resumable, local or on Ray",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="persona-basins sweep SPEC --out RUN [options]\n"
        "       persona-basins sweep plot RUN --x AXIS --y AXIS --metric KEY",
    )
    p.add_argument("-h", "--help", action=_Help, help="show this help (after `plot`: the help of sweep plot)")
    p.add_argument("spec", metavar="SPEC", help="sweep spec (TOML), or the word plot followed by RUN")
    p.add_argument("run", nargs="?", metavar="RUN", help=argparse.SUPPRESS)
    p.add_argument("--out", help="run folder to write (resumes what it already holds)")
    p.add_argument(
        "--backend",
        default="local",
        choices=("local", "ray"),
        help="local: a process pool on this machine (default); ray: Ray tasks",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: start a local one on 127.0.0.1)"
    )
    p.add_argument(
        "--workers",
        type=int_in(1, None),
        default=None,
        help="parallel units (default: the CPU count; 1 runs them one after another in this process)",
    )
    p.add_argument(
        "--cpus-per-unit",
        type=finite_float(0, None, lo_open=True),
        default=1,
        help="Ray: CPUs reserved per unit (default 1)",
    )
    p.add_argument(
        "--gpus-per-unit",
        type=finite_float(0, None),
        default=0,
        help="Ray: GPUs reserved per unit (default 0)",
    )
    p.add_argument(
        "--max-retries",
        type=int_in(0, None),
        default=3,
        help="Ray: reruns of a unit whose worker died (default 3)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the grid, what is done and an estimate; run nothing"
    )
    p.add_argument("--fail-fast", action="store_true", help="stop the sweep at the first failed unit")
    g = p.add_argument_group("sweep plot RUN")
    g.add_argument("--x", help="axis along x")
    g.add_argument("--y", help="axis along y")
    g.add_argument("--metric", help="metric of the cells (default: the spec's metric)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..errors import UserError

    if args.spec == "plot":
        if args.run is None:
            raise UserError("sweep plot needs a RUN folder: persona-basins sweep plot RUN --x AXIS --y AXIS")
        if args.out or args.dry_run:
            raise UserError("sweep plot takes RUN, --x, --y and --metric only")
        return _plot(args)
    if args.run is not None:
        raise UserError(f"unexpected argument {args.run!r}; give the run folder with --out")
    if args.x or args.y or args.metric:
        raise UserError("--x/--y/--metric are for `sweep plot RUN`")
    if not args.out:
        raise UserError("--out RUN is required: the run folder to write")
    from ..studies import sweep as sw

    spec = sw.load_spec(args.spec)
    record = sw.run_sweep(
        spec,
        args.out,
        backend=args.backend,
        address=args.address,
        workers=args.workers,
        cpus_per_unit=args.cpus_per_unit,
        gpus_per_unit=args.gpus_per_unit,
        max_retries=args.max_retries,
        fail_fast=args.fail_fast,
        dry_run=args.dry_run,
        progress=True,
    )
    if args.dry_run:
        print("\n".join(sw.dry_run_lines(record)))
        return 0
    axes = sw.default_heatmap_axes(record)
    fig_path = None
    if axes and any(u["status"] == "done" for u in record["units"]):
        fig_path = _draw(args.out, record, axes[0], axes[1], spec.metric)
    print("\n".join(sw.summary_lines(record)))
    print(f"sweep written to {args.out} (sweep.json, table.csv{', ' + str(fig_path) if fig_path else ''})")
    return 1 if any(u["status"] != "done" for u in record["units"]) else 0


def _draw(run, record, x, y, metric):
    from pathlib import Path

    from ..results import save_figure
    from ..studies.sweep import heatmap_data
    from ..viz.sweep_figures import heatmap

    data = heatmap_data(record, x, y, metric)
    path = Path(run) / "figures" / f"heatmap_{metric}_{y}_by_{x}.png"
    fig = heatmap(data)
    save_figure(fig, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _plot(args) -> int:
    from ..errors import UserError
    from ..studies.sweep import load_record

    if not args.x or not args.y:
        raise UserError("sweep plot needs --x AXIS and --y AXIS")
    record = load_record(args.run)
    path = _draw(args.run, record, args.x, args.y, args.metric or record["spec"]["metric"])
    print(f"wrote {path}")
    return 0

"""``persona-basins explore [RUN ...]``: the interactive explorer, served on 127.0.0.1."""

from __future__ import annotations

from .args import PORT, DefaultsHelpFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explore",
        help="interactive explorer (theory view + measured runs) on 127.0.0.1",
        description=(
            "Serve the explorer page on 127.0.0.1: the persona-landscape theory view (perturbation, "
            "direction and inoculation sliders) next to the measured results of the given run folders. "
            "Prints the URL; Ctrl-C stops it. With no RUN, only the theory view."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders (config.json, metrics.json, ...)")
    p.add_argument("--port", type=PORT, default=0, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser, just print the URL")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError
    from ..viz.server import serve

    try:
        return serve(args.runs, port=args.port, open_browser=not args.no_browser)
    except OSError as e:
        raise UserError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}") from None

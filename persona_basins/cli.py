"""The ``persona-basins`` command line: one entry point, one subcommand per study.

Each subcommand lives in ``persona_basins/commands/<name>.py`` and exposes ``register(subparsers)``; it
imports its heavy dependencies (torch, transformers) inside its handler so ``--help`` stays fast.
Problems the user can fix raise :class:`~persona_basins.errors.UserError`, printed here as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .commands.args import FIELD_FLAGS, add_threads_flag, add_threads_to_subcommands
from .errors import ArgumentError, ConfigError, UserError
from .progress import log_line, log_to, log_written

# Order is the order shown in --help.
COMMAND_MODULES = [
    "demo",
    "organism",
    "em",
    "llc",
    "basins",
    "degeneracy",
    "eigenform",
    "explore",
    "report",
    "sweep",
]

EPILOG = """\
typical session:
  persona-basins organism build --preset default --seed 0 --out runs/organism
  persona-basins organism report runs/organism
  persona-basins em --organism runs/organism --seeds 5 --out runs/em
  persona-basins basins --em-run runs/em --out runs/basins
  persona-basins demo --out runs/demo          # everything above, plus scans, LLC, overlap, report
  persona-basins explore runs/demo             # the interactive explorer on 127.0.0.1

Every command writes a run folder (config.json, metrics.json, figures/, log.txt) that `report` and `explore`
read. Flags mean the same everywhere: --organism DIR, --model DIR_OR_HUB_ID, --adapter DIR, --em-run RUN,
--seeds N (a count), --device / --dtype (default auto), --threads N (before or after the command).
"""


# Commands that never touch torch (no thread policy to apply).
NO_TORCH = {"explore", "report"}
# Commands whose rerun with the same --out picks up finished units or steps (the SIGTERM/Ctrl-C message
# says so).
RESUMABLE = {"demo", "em", "sweep"}
# Commands whose --out is a file or a model folder, not a run folder: they keep no RUN/log.txt.
NO_RUN_LOG = {"report", "explore", "organism"}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (a UserError naming the subcommand and the flag)."""

    def error(self, message):
        cmd = self.prog.removeprefix("persona-basins").strip()
        where = f"{cmd}: " if cmd else ""
        raise UserError(f"{where}{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="persona-basins",
        description=(
            "Measure persona basins of attraction in language models: emergent misalignment from a rank-1 "
            "adapter, inoculation prompting, the local learning coefficient (SGLD), the overlap zone where "
            "aligned and misaligned states agree, and eigenform identity - on a built-in model organism "
            "with ground-truth personas, or on any Hugging Face causal LM."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"persona-basins {__version__}")
    add_threads_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"persona_basins.commands.{name}").register(sub)
    add_threads_to_subcommands(parser)  # `em --threads 2` as well as `--threads 2 em`
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ran: ``organism build`` is two levels below ``persona-basins``."""
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subparsers[0].dest, None) if subparsers else None
        if name is None:
            return parser
        parser = subparsers[0].choices[name]


def _flag_of(argument: str, parser: argparse.ArgumentParser | None, args: argparse.Namespace) -> str | None:
    """The option string of the running command for the parameter ``argument`` (``em_run`` -> ``--em-run``),
    or None when the command has no such flag."""
    if parser is None:
        return None
    for action in _command_parser(parser, args)._actions:
        if action.dest == argument and action.option_strings:
            return action.option_strings[0]
    return None


def error_text(
    error: UserError, args: argparse.Namespace | None = None, parser: argparse.ArgumentParser | None = None
) -> str:
    """The one line printed after ``persona-basins: ``. A ConfigError names the flag that sets the field when
    the command that ran has that flag: ``error: --lr must be a finite number > 0, got 0
    (FinetuneConfig.lr)``; an ArgumentError the flag of its argument, found on ``parser`` (``error: --out
    runs/x exists and is not a directory``). Every error line starts ``error:``: scripts and the robustness
    tests read it."""
    if isinstance(error, ConfigError) and args is not None:
        flag = FIELD_FLAGS.get((error.owner, error.field))
        if flag is not None and hasattr(args, flag.lstrip("-").replace("-", "_")):
            return f"error: {flag} {error.problem} ({error.owner}.{error.field})"
    if isinstance(error, ArgumentError) and args is not None:
        flag = _flag_of(error.argument, parser, args)
        if flag is not None:
            return f"error: {flag} {error.problem}"
    return f"error: {error}"


@contextlib.contextmanager
def _run_log(args: argparse.Namespace, argv: list[str] | None):
    """While the command runs, its progress lines and notes also go to ``RUN/log.txt`` (see
    :mod:`persona_basins.progress`), after the command line and followed by its outcome and wall time. A
    command that fails or is interrupted before it logged anything leaves the file as it was."""
    out = getattr(args, "out", None)
    if args.command in NO_RUN_LOG or not isinstance(out, str):
        yield
        return
    command = " ".join(["persona-basins", *(sys.argv[1:] if argv is None else argv)])
    start, outcome = time.monotonic(), "failed"
    with log_to(Path(out) / "log.txt"):
        log_line(f"started: {command}", hold=True)
        try:
            yield
            outcome = "finished"
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            if outcome == "finished" or log_written():
                log_line(f"{outcome} in {time.monotonic() - start:.0f} s: {command}")


def _sigterm_as_interrupt(signum, frame):  # pragma: no cover - exercised by a subprocess test
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command-line run (not a call from Python code or tests)
        # A killed run unwinds like Ctrl-C, so temp folders are removed and finished steps stay.
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:
        print(f"persona-basins: {error_text(e)}", file=sys.stderr)
        return e.exit_code
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    if args.command not in NO_TORCH:
        import torch

        torch.set_num_threads(args.threads)
    try:
        with _run_log(args, argv):
            rc = args.func(args)
    except UserError as e:
        print(f"persona-basins: {error_text(e, args, parser)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.command in RESUMABLE:
            msg = "interrupted (finished units are kept; rerun with the same --out to resume)"
        else:
            msg = "interrupted (nothing half-written was kept; rerun to start again)"
        print(f"persona-basins: {msg}", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

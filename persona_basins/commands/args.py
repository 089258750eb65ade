"""argparse ``type=`` helpers for numeric flags: NaN, inf and out-of-range values are refused up front.

argparse turns the ``ArgumentTypeError`` raised here into ``persona-basins COMMAND: error: argument --lr:
... `` on one line with exit code 2, so every numeric flag names itself when it is wrong, before any file is
written or any model is loaded. Use these for every numeric flag::

    p.add_argument("--lr", type=finite_float(0, None, lo_open=True), default=3e-3)
    p.add_argument("--seeds", type=int_in(1, 1000), default=5)
"""

from __future__ import annotations

import argparse
import math


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def finite_float(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
):
    """A finite float in [lo, hi] (``lo_open``/``hi_open``: the bound itself is excluded)."""
    want = _range_text(lo, hi, lo_open, hi_open)

    def parse(text: str) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (
            lo is not None
            and (v < lo or (lo_open and v == lo))
            or hi is not None
            and (v > hi or (hi_open and v == hi))
        ):
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {want})")
        return v

    parse.__name__ = "number"  # argparse names the type in some messages
    return parse


def int_in(lo: int | None = None, hi: int | None = None):
    """An integer in [lo, hi] (either bound may be None)."""
    want = _range_text(lo, hi, False, False)

    def parse(text: str) -> int:
        try:
            v = int(str(text).strip(), 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {want})")
        return v

    parse.__name__ = "integer"
    return parse


# Common ranges, so commands agree on them.
SEED = int_in(0, 2**32 - 1)  # torch / numpy seeds
PORT = int_in(0, 65535)
POSITIVE = finite_float(0, None, lo_open=True)
PROBABILITY = finite_float(0, 1)

# The package-wide torch intra-op thread default, fixed (never chosen from the machine's load at run time, so
# the last digits are reproducible: the thread count changes float summation order). Measured (docs/LLC.md):
# on the 2-core machine under load average 6-7, 4 chains x 40 draws of the tiny organism's LLC took 2.7-4.0 s
# with 1 thread and 44-50 s with 2 (OpenMP barriers wait for a descheduled thread); models this small gain
# nothing from intra-op threads even on a quiet machine.
DEFAULT_THREADS = 1
THREADS = int_in(1, 1024)

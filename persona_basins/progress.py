"""Progress of long loops, everywhere: a tqdm bar on a terminal; in a pipe or a log file one line every
``INTERVAL`` seconds naming the step, the units done and an ETA, so a long step is never minutes of silence::

    [pretrain] 1200/4000 steps (30%), elapsed 1m02s, ETA 2m25s, loss=1.234

Every such line (and every :func:`note`) is also appended to the run's log file while a command has one set
(:func:`log_to`; the CLI sets ``RUN/log.txt``). ``enabled=False`` (tests, sweep workers) is silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

INTERVAL = 30.0  # seconds between two lines of one loop in a pipe or a log file
clock = time.monotonic  # the time source; tests replace it with a fake clock


@dataclass
class _RunLog:
    path: Path
    waiting: list[str] = field(default_factory=list)  # lines not yet in the file
    written: bool = False  # has this run written a line into the file


_log_files: list[_RunLog] = []  # innermost log_to() last


@contextmanager
def log_to(path: str | Path) -> Iterator[None]:
    """Append progress lines and notes to ``path`` while inside. Lines wait in memory until the file's
    folder exists (a run folder is made on first use), and are dropped if it never does: a command that
    fails before writing its run folder leaves nothing behind."""
    _log_files.append(_RunLog(Path(path)))
    try:
        yield
    finally:
        _log_files.pop()


def log_line(line: str, *, hold: bool = False) -> None:
    """``line`` in the run's log file only (nothing on the terminal). ``hold``: kept back until another
    line is written (a command's first line: a command that fails at once changes no file)."""
    _append_to_log(line, hold=hold)


def log_written() -> bool:
    """Whether the current run has written a line into its log file."""
    return bool(_log_files) and _log_files[-1].written


def _append_to_log(line: str, *, hold: bool = False) -> None:
    if not _log_files:
        return
    log = _log_files[-1]
    log.waiting.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    if hold or not log.path.parent.is_dir():
        return
    try:
        with open(log.path, "a", encoding="utf-8") as file:
            file.writelines(log.waiting)
        log.waiting.clear()
        log.written = True
    except OSError:  # a log line is never worth failing a run over
        pass


def note(message: str, *, stream=None) -> None:
    """``message`` as one line on stderr (flushed) and in the run's log file."""
    print(message, file=stream or sys.stderr, flush=True)
    _append_to_log(message)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of one loop of ``total`` units (None: unknown). ``update(n)`` after each unit, ``close()`` at
    the end (or use it as a context manager). On a terminal: a tqdm bar (and the periodic lines go to the
    log file only); elsewhere: the periodic lines on ``stream`` (default stderr) and in the log file."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "steps",
        initial: int = 0,
        enabled: bool = True,
        interval: float = INTERVAL,
        stream=None,
    ):
        self.total, self.desc, self.unit, self.enabled, self.interval = total, desc, unit, enabled, interval
        self.done = self._initial = initial  # units done before this run (a resumed sweep): no ETA weight
        self._stream = stream or sys.stderr
        self._postfix = ""
        self._start = self._last_line = clock()
        self._lines = 0
        self._bar = None
        if enabled and _is_terminal(self._stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=f" {unit}", initial=initial, leave=False, file=self._stream
            )

    def update(self, n: int = 1) -> None:
        """``n`` more units done (0: only write the periodic line when it is due)."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        now = clock()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._write(self.line(now))

    def set_postfix(self, **values) -> None:
        """Values shown after the counts, e.g. ``loss=1.234``."""
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def line(self, now: float | None = None) -> str:
        """The periodic line: the step, units done (of the total), elapsed time and ETA."""
        elapsed = (clock() if now is None else now) - self._start
        counts = f"{self.done} {self.unit}"
        if self.total:
            counts = f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        parts = [f"[{self.desc}] {counts}", f"elapsed {duration(elapsed)}"]
        done_now = self.done - self._initial  # the rate of this run, not of the units found done
        if self.total and done_now > 0:
            parts.append(f"ETA {duration(elapsed / done_now * max(0, self.total - self.done))}")
        elif self.total:
            parts.append("ETA unknown")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and self._lines:  # a loop that reported along the way says it ended
            elapsed = duration(clock() - self._start)
            self._write(f"[{self.desc}] done: {self.done} {self.unit} in {elapsed}")
        self.enabled = False

    def _write(self, line: str) -> None:
        self._lines += 1
        if self._bar is None:
            print(line, file=self._stream, flush=True)
        _append_to_log(line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    items: Iterable, desc: str, *, total: int | None = None, unit: str = "steps", enabled: bool = True, **kw
) -> Iterator:
    """Iterate ``items`` while reporting progress (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc, unit=unit, enabled=enabled, **kw) as bar:
        for item in items:
            yield item
            bar.update()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False

"""Running a sweep: one unit in a worker (:func:`execute_unit`), the scheduler that feeds a backend in
dependency order, resume (a finished unit is never re-run) and the lock (one sweep per RUN folder).

Each unit goes through the run store, :func:`persona_basins.results.get_or_run`: its folder
``RUN/units/<id>`` is built in a temp folder beside it and renamed into place with ``key.json`` (the unit's
id, kind, package version and resolved config) written last. A folder of an earlier version of the sweep
(``unit.json`` without ``key.json``) whose record matches the key is adopted, not run again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import UserError
from ...results import (
    KEY_FILE,
    as_stored,
    get_or_run,
    is_finished,
    key_differences,
    prepare_out_dir,
    read_json,
    write_json,
)
from .backends import Backend, make_backend, one_line
from .kinds import KINDS
from .plan import Plan, plan
from .record import sweep_record, write_results
from .spec import Spec

UNIT_FILE = "unit.json"  # the unit's record (config, metrics, seconds), written just before key.json
# temp folders of units that did not finish: the run store's (.<id>.tmp-PID-...) and older versions' (.tmp-)
TMP_PATTERNS = (".*.tmp-*", ".tmp-*")
LOCK_FILE = ".sweep.lock"
REMEDY = "delete that unit folder and rerun to recompute it"


# --- the key of a unit --------------------------------------------------------------------------------------
def unit_key(uid: str, kind: str, config: dict) -> dict:
    """What a unit folder's contents depend on (its ``key.json``): what its id is the hash of, and the id."""
    return {"id": uid, "kind": kind, "package_version": __version__, "config": config}


def _task_key(task: dict) -> dict:
    return unit_key(task["id"], task["kind"], task["config"])


def is_legacy(folder: Path) -> bool:
    """A unit folder written before the run store: its ``unit.json`` marks it finished, no ``key.json``."""
    return (folder / UNIT_FILE).is_file() and not (folder / KEY_FILE).exists()


def unit_done(folder: Path, key: dict, *, adopt: bool = True) -> bool:
    """Whether ``folder`` holds the finished unit of ``key``; a folder holding another key is a one-line
    UserError naming the settings that differ.

    A legacy folder whose ``unit.json`` matches the key is adopted: its ``key.json`` is written (atomically,
    through the run store's writer) unless ``adopt`` is False (a dry run writes nothing).
    """
    if is_legacy(folder):
        record = read_json(folder / UNIT_FILE, recover=REMEDY, expect=dict)
        have, want = {name: record.get(name) for name in key}, as_stored(key)
        if have != want:
            raise UserError(
                f"{folder} holds a unit from other settings ({key_differences(have, want)}); {REMEDY}"
            )
        if not adopt:
            return True
        write_json(folder / KEY_FILE, want)
    return is_finished(folder, key, remedy=REMEDY)


# --- one unit, in a worker ----------------------------------------------------------------------------------
class _UnitFailed(Exception):
    """The unit's run raised: its attempt was kept in ``RUN/failed/<id>`` (``record`` is the result)."""

    def __init__(self, record: dict):
        super().__init__(record["error"])
        self.record = record


def execute_unit(task: dict) -> dict:
    """Run one unit in this process through the run store (a temp folder renamed into place when finished).

    Returns ``{"id", "status": "done"|"failed", "metrics", "seconds", "error"}``. A failure is caught and
    recorded (one line in the result, the traceback in ``RUN/failed/<id>/error.txt``), never raised, so
    a backend retries a unit only when its worker process dies.
    """
    run_dir = Path(task["run_dir"])
    units_dir = run_dir / "units"
    final = units_dir / task["id"]
    key = _task_key(task)
    if unit_done(final, key):
        return finished_record(final)
    import torch

    torch.set_num_threads(1)  # one thread per worker: same numbers whatever the worker count

    def build(tmp: Path) -> None:
        # the worker's marker while it runs (the tests find and kill workers by it)
        write_json(tmp / "worker.json", {"pid": os.getpid(), "host": socket.gethostname()})
        start = time.perf_counter()
        metrics, error = _run_logged(task, tmp, {d: units_dir / d for d in task["deps"]})
        seconds = time.perf_counter() - start
        if error is not None:
            raise _UnitFailed(_keep_failed(run_dir, task, tmp, error, seconds))
        (tmp / "worker.json").unlink()
        record = {**key, "deps": task["deps"], "metrics": metrics, "seconds": seconds}
        write_json(tmp / UNIT_FILE, record)

    try:
        get_or_run(final, key, build, remedy=REMEDY)  # a concurrent winner of the same key is kept
    except _UnitFailed as failure:
        return failure.record
    shutil.rmtree(run_dir / "failed" / task["id"], ignore_errors=True)
    return finished_record(final)


def _run_logged(task: dict, tmp: Path, deps: dict[str, Path]) -> tuple[dict | None, str | None]:
    """The unit's run, its output and any traceback going to ``tmp/log.txt``: ``(metrics, error)``.
    An interrupt propagates (the run store then removes the temp folder)."""
    start = time.perf_counter()
    metrics = error = None
    with (
        open(tmp / "log.txt", "w", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        print(f"unit {task['id']} ({task['kind']}) on {socket.gethostname()} pid {os.getpid()}", flush=True)
        try:
            metrics = KINDS[task["kind"]].run(task["config"], task["runtime"], tmp, deps)
        except Exception as e:  # noqa: BLE001 - any failure of a unit is recorded, the sweep goes on
            error = one_line(e)
            traceback.print_exc()
        print(f"{'failed: ' + error if error else 'done'} in {time.perf_counter() - start:.1f} s", flush=True)
    return metrics, error


def _keep_failed(run_dir: Path, task: dict, tmp: Path, error: str, seconds: float) -> dict:
    """The failed attempt's folder (log, traceback) moved to ``RUN/failed/<id>``."""
    failed = run_dir / "failed" / task["id"]
    shutil.rmtree(failed, ignore_errors=True)
    failed.parent.mkdir(parents=True, exist_ok=True)
    (tmp / "error.txt").write_text(error + "\n", encoding="utf-8")
    tmp.rename(failed)  # out of the run store's temp folder, which it then finds gone
    return {"id": task["id"], "status": "failed", "error": error, "seconds": seconds, "metrics": {}}


def finished_record(final: Path) -> dict:
    unit = read_json(final / UNIT_FILE, recover=f"delete {final} and rerun to recompute that unit")
    return {
        "id": unit["id"],
        "status": "done",
        "metrics": unit["metrics"],
        "seconds": unit.get("seconds"),
        "error": None,
    }


# --- the state of a sweep -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str  # done | failed | pending | cancelled
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None
    resumed: bool = False  # finished before this invocation


class RunLock:
    """One sweep at a time per RUN folder: an exclusive ``flock`` on ``RUN/.sweep.lock``, held for the whole
    sweep and released by the OS when the process dies (a SIGKILLed sweep never leaves a stale lock)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.handle = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.handle = open(self.path, "w")  # noqa: SIM115 - held for the whole sweep
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise UserError(
                f"another sweep is running in {self.path.parent} (it holds {self.path})"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def clean_tmp(units_dir: Path) -> None:
    """Remove the temp folders of units that did not finish (only while holding the lock: no worker of this
    RUN is running, so every temp folder is a leftover, whichever host's process made it)."""
    if units_dir.is_dir():
        for pattern in TMP_PATTERNS:
            for leftover in units_dir.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def _is_done(units_dir: Path, unit, *, adopt: bool = True) -> bool:
    return unit_done(units_dir / unit.id, unit_key(unit.id, unit.kind, unit.config), adopt=adopt)


def done_units(run_dir: Path, p: Plan, *, adopt: bool = True) -> dict[str, Outcome]:
    """The finished units of the plan (legacy folders adopted unless ``adopt`` is False); a unit folder
    holding another key is a one-line UserError before anything runs."""
    out = {}
    for uid, unit in p.units.items():
        if _is_done(run_dir / "units", unit, adopt=adopt):
            record = finished_record(run_dir / "units" / uid)
            out[uid] = Outcome("done", record["metrics"], None, record["seconds"], resumed=True)
    return out


def estimate_seconds(p: Plan, done: dict[str, Outcome], workers: int) -> dict:
    """Rough wall time of the units still to run: median time of finished units of each kind, else a prior."""
    per_kind: dict[str, list[float]] = {}
    for uid, outcome in done.items():
        if outcome.seconds is not None:
            per_kind.setdefault(p.units[uid].kind, []).append(outcome.seconds)
    total, basis = 0.0, {}
    for unit in p.units.values():
        if unit.id in done:
            continue
        if per_kind.get(unit.kind):
            total += statistics.median(per_kind[unit.kind])
            basis[unit.kind] = "finished units"
        elif KINDS[unit.kind].seconds_prior is not None:
            total += KINDS[unit.kind].seconds_prior(unit.config)
            basis.setdefault(unit.kind, "rough prior, no unit of this kind finished yet")
        else:
            basis.setdefault(unit.kind, "no estimate for this kind until one unit finished")
    return {"seconds": total / max(1, workers), "basis": basis}


# --- the sweep ----------------------------------------------------------------------------------------------
def run_sweep(
    spec: Spec,
    out: str | Path,
    *,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_unit: float = 1,
    gpus_per_unit: float = 0,
    max_retries: int = 3,
    fail_fast: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> dict:
    """Run (or resume) the grid of ``spec`` into ``out``; returns the sweep record written to sweep.json.

    With ``dry_run`` nothing is run or written: the record lists the grid, what is already done and an
    estimate of the time left. The local backend spawns its workers, so a script that calls this with
    ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard (the CLI has it).
    """
    p = plan(spec)
    run_dir = Path(out)
    done = done_units(run_dir, p, adopt=not dry_run) if run_dir.is_dir() else {}
    if dry_run:
        estimate = estimate_seconds(p, done, workers or os.cpu_count() or 1)
        outcomes = {uid: done.get(uid, Outcome("pending")) for uid in p.units}
        return {**sweep_record(p, outcomes), "estimate": estimate}
    fresh = not run_dir.exists()
    run_dir = prepare_out_dir(run_dir)
    units_dir = run_dir / "units"
    units_dir.mkdir(exist_ok=True)
    with RunLock(run_dir):
        done = done_units(run_dir, p)  # again, under the lock: a sweep that just ended may have added units
        outcomes: dict[str, Outcome] = {uid: done.get(uid, Outcome("pending")) for uid in p.units}
        clean_tmp(units_dir)  # leftovers of a killed run never count
        try:
            runner = make_backend(
                backend,
                execute_unit,
                workers=workers,
                address=address,
                cpus_per_unit=cpus_per_unit,
                gpus_per_unit=gpus_per_unit,
                max_retries=max_retries,
            )
        except BaseException:
            # a sweep that could not start (e.g. no cluster at --address) leaves no half-made RUN behind
            if fresh and not any(units_dir.iterdir()):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        aborted = True  # until schedule returns normally
        try:
            schedule(p, run_dir, runner, outcomes, fail_fast=fail_fast, progress=progress)
            aborted = any(o.status == "cancelled" for o in outcomes.values())
        finally:
            runner.close(abort=aborted)
            clean_tmp(units_dir)
            for uid, outcome in outcomes.items():  # units that finished after the scheduler stopped listening
                if outcome.status != "done" and _is_done(units_dir, p.units[uid]):
                    record = finished_record(units_dir / uid)
                    outcomes[uid] = Outcome("done", record["metrics"], None, record["seconds"])
            record = sweep_record(p, outcomes)
            record["backend"] = {
                "name": runner.name,
                "workers": workers,
                "address": address,
                "cpus_per_unit": cpus_per_unit,
                "gpus_per_unit": gpus_per_unit,
            }
            write_results(run_dir, record)
    failed = [u for u in record["units"] + record["dependencies"] if u["status"] == "failed"]
    if fail_fast and failed:
        raise UserError(
            f"unit {failed[0]['id']} failed: {failed[0]['error']} (--fail-fast: stopped the sweep)"
        )
    return record


def _task(unit, run_dir: Path) -> dict:
    return {
        "id": unit.id,
        "kind": unit.kind,
        "config": unit.config,
        "runtime": unit.runtime,
        "deps": unit.deps,
        "run_dir": str(run_dir.resolve()),
        "accelerator": unit.accelerator,
    }


def schedule(
    p: Plan, run_dir: Path, runner: Backend, outcomes: dict[str, Outcome], *, fail_fast: bool, progress: bool
) -> None:
    """Feed the units to ``runner`` as their dependencies finish, recording each outcome in ``outcomes``."""
    from ...progress import Progress

    waiting = [u for u in p.order() if outcomes[u.id].status != "done"]
    running: dict[Any, str] = {}
    counts = {"done": sum(o.status == "done" for o in outcomes.values()), "failed": 0}
    # a bar on a terminal, a line every 30 s in a pipe or a log file
    bar = Progress(len(outcomes), "sweep", unit="units", initial=counts["done"], enabled=progress)

    def show():
        bar.set_postfix(done=counts["done"], running=len(running), failed=counts["failed"])
        bar.update(0)  # the periodic line also while a long unit runs

    stop = False
    try:
        while waiting or running:
            if not stop:
                still = []
                for unit in waiting:
                    failed_dep = next((d for d in unit.deps if outcomes[d].status == "failed"), None)
                    if failed_dep is not None:
                        error = f"dependency {failed_dep} failed: {outcomes[failed_dep].error}"
                        outcomes[unit.id] = Outcome("failed", error=error)
                        counts["failed"] += 1
                        bar.update(1)
                    elif all(outcomes[d].status == "done" for d in unit.deps) and len(running) < runner.slots:
                        running[runner.submit(_task(unit, run_dir))] = unit.id
                    else:
                        still.append(unit)
                waiting = still
            show()
            if not running:
                if stop or not waiting:
                    break
                raise RuntimeError("sweep plan has a dependency cycle")  # pragma: no cover - plans are trees
            for handle in runner.wait(list(running), timeout=1.0):
                uid = running.pop(handle)
                result = runner.result(handle)
                outcomes[uid] = Outcome(
                    result["status"], result.get("metrics") or {}, result.get("error"), result.get("seconds")
                )
                counts[result["status"]] += 1
                bar.update(1)
                if result["status"] == "failed" and fail_fast:
                    stop = True
            if (
                stop
            ):  # --fail-fast: the running units are stopped (marked cancelled below), nothing new starts
                runner.cancel(list(running))
                break
    except BaseException:  # interrupted: stop what is running (a Ray cluster we did not start keeps going)
        runner.cancel(list(running))
        raise
    finally:
        show()
        bar.close()
        for uid in running.values():  # interrupted or cancelled before they finished
            if outcomes[uid].status == "pending":
                outcomes[uid] = Outcome("cancelled")

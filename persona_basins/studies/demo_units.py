"""The demo's independent units of work and the pool they run on.

After the organism, the demo is a set of units that need nothing of each other but files on disk: the EM
fine-tunes (one per condition and seed), the parts of the basin scans (:func:`~.basins.scan_parts`), the
LLC runs (one per seed and restriction), the overlap zone and the eigenform run. Each unit is a JSON-able
task run by :func:`run_unit`: in this process (``workers=1``) or on the sweep's local process pool
(:class:`~.sweep.backends.LocalBackend`, spawned workers). A unit reads the organism and adapters from their
folders, sets the thread count it is given and is seeded by its own settings, never by its worker or its
place in the queue, so every worker count gives the same numbers (``tests/test_demo_workers.py`` compares
``study.json`` byte for byte).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArgumentError
from ..progress import Progress

if TYPE_CHECKING:
    from .sweep.backends import Backend

# Workers when --workers is not given: every core, at most this many. The demo's widest steps hold 11 to 25
# units, but each worker holds its own torch and organism copy (~0.5 GB), so a large machine gains little
# from more.
MAX_DEFAULT_WORKERS = 4


def available_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(available_cores(), MAX_DEFAULT_WORKERS))


# --- in a worker --------------------------------------------------------------------------------------------
# per process: the organism folder last read, its adapters by folder and its persona vectors by setting
_ORGANISMS: dict[str, Any] = {}
_ADAPTERS: dict[str, Any] = {}
_VECTORS: dict[tuple, dict] = {}


def _organism(path: str):
    from ..models.organism import load_organism

    if path not in _ORGANISMS:
        clear_cache()  # one organism at a time
        _ORGANISMS[path] = load_organism(path)
    return _ORGANISMS[path]


def _adapters(org_path: str, adapter_dirs: list[str]) -> list:
    """Each adapter on its own copy of the organism's model, read once per process."""
    from .basins import load_adapters

    org = _organism(org_path)
    missing = [d for d in adapter_dirs if d not in _ADAPTERS]
    for folder, model in zip(missing, load_adapters(org, missing)):
        _ADAPTERS[folder] = model
    return [_ADAPTERS[d] for d in adapter_dirs]


def clear_cache() -> None:
    """Forget the organism and adapters read by this process's units."""
    _ORGANISMS.clear()
    _ADAPTERS.clear()
    _VECTORS.clear()


def run_unit(task: dict) -> dict:
    """Run one demo unit (a task made by the ``*_tasks`` functions below); returns its JSON-able result."""
    import multiprocessing
    import signal

    import torch

    if multiprocessing.parent_process() is not None:
        # a pool worker: Ctrl-C reaches the whole process group, and the main process stops the workers
        # itself (SIGTERM), so a worker ignores it rather than print a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(task["threads"])  # the main process's count: same numbers for any worker count
    torch.manual_seed(0)  # no unit draws from the global generator; this keeps it so whatever ran before
    return UNIT_KINDS[task["kind"]](task)


def _em_unit(task: dict) -> dict:
    from ..train.finetune import FinetuneConfig
    from .em import train_unit

    org = _organism(task["organism"])
    cfg = FinetuneConfig(**task["finetune"])
    train_unit(
        org, cfg, Path(task["unit_dir"]), task["key"], track_every=task["track_every"], force=task["force"]
    )
    return {}  # the unit's adapter and result.json are in its folder


def _scan_unit(task: dict) -> dict:
    from ..models.edits import layer_of, single_lora_delta
    from .basins import layer_vectors, scan_part

    org, settings = _organism(task["organism"]), task["settings"]
    plain, inoc = _adapters(task["organism"], task["plain"]), _adapters(task["organism"], task["inoculated"])
    layer = layer_of(single_lora_delta(plain[0])[0])
    # the persona vectors every part reads: computed once per process (as basin_scans does once)
    key = (layer, settings["vector_docs"], settings["seed"])
    if key not in _VECTORS:
        _VECTORS[key] = layer_vectors(org, layer, n=settings["vector_docs"], seed=settings["seed"])
    return scan_part(org, plain, inoc, task["part"], task["ts"], vectors=_VECTORS[key], **settings)


def _llc_unit(task: dict) -> dict:
    """The LLC along one plain adapter's path, all parameters or restricted to the adapted layer."""
    from ..measure.llc import SamplerConfig, llc_along_path
    from ..models.edits import single_lora_delta

    org = _organism(task["organism"])
    (model,) = _adapters(task["organism"], [task["adapter"]])
    name, delta = single_lora_delta(model)
    res = llc_along_path(
        org.model,
        {f"{name}.weight": delta},
        task["grid"],
        data=org.mixture_input_ids(task["prompts"], seed=123),
        n=task["prompts"],
        pad_token_id=0,
        restrict=task["restrict"],
        config=SamplerConfig.from_dict(task["sampler"]),
    )
    # A point whose chains fail the equilibrium gates is withheld: llc null, with its reasons.
    results = [r["result"] for r in res]
    keep = (
        "path",
        "rhat",
        "ess_bulk",
        "ess_tail",
        "mcse",
        "stationarity_z",
        "distance_z",
        "frac_negative_draws",
        "mala_acceptance",
    )
    return {
        "t": [r["t"] for r in res],
        "llc": [x.value for x in results],
        "mcse": [x.mcse if x.converged else None for x in results],
        "converged": [x.converged for x in results],
        "reasons": [x.reasons for x in results],
        "loss": res[0].get("loss") if res else None,
        "diagnostics": [{k: x.diagnostics[k] for k in keep} for x in results],
    }


def _overlap_unit(task: dict) -> dict:
    from .degeneracy import overlap_study

    org = _organism(task["organism"])
    plain = _adapters(task["organism"], task["plain"])
    return overlap_study(org, plain, **task["settings"])


def _eigenform_unit(task: dict) -> dict:
    from .eigenform import run_eigenform

    org = _organism(task["organism"])
    (model,) = _adapters(task["organism"], [task["adapter"]])
    return run_eigenform(org, model, fast=True, progress=False).metrics


def _warm_unit(task: dict) -> dict:
    """Import what the units use (torch, transformers, peft: seconds), while the main process builds or
    reads the organism."""
    from . import basins, degeneracy, eigenform, em  # noqa: F401

    return {}


UNIT_KINDS = {
    "warm": _warm_unit,
    "em": _em_unit,
    "scan": _scan_unit,
    "llc": _llc_unit,
    "overlap": _overlap_unit,
    "eigenform": _eigenform_unit,
}


# --- the queue in the main process --------------------------------------------------------------------------
class UnitQueue:
    """Demo units on a backend: queued in order and fed to it ``slots`` at a time, so the workers go on with
    the next step's units while the main process waits for a step's own (:meth:`gather`)."""

    def __init__(self, backend: Backend, threads: int):
        self.backend, self.threads = backend, threads
        self._queue: deque[tuple[int, dict]] = deque()
        self._running: dict[Any, int] = {}
        self._results: dict[int, dict] = {}
        self._dropped: set[int] = set()  # units whose result nobody gathers
        self._count = 0

    def submit(self, tasks: list[dict]) -> list[int]:
        """Queue ``tasks`` (after those queued before); returns their ids for :meth:`gather`."""
        ids = []
        for task in tasks:
            self._count += 1
            self._queue.append((self._count, {**task, "threads": self.threads}))
            ids.append(self._count)
        return ids

    def start(self, tasks: list[dict]) -> None:
        """Hand ``tasks`` to the backend now, ahead of the queue; their results are dropped."""
        for task in tasks:
            self._count += 1
            self._dropped.add(self._count)
            self._running[self.backend.submit({**task, "threads": self.threads})] = self._count

    def gather(
        self, ids: list[int], desc: str, *, unit: str, done_before: int = 0, progress: bool = True
    ) -> list[dict]:
        """The results of units ``ids`` in their order, once all have finished (units queued before them run
        first). ``done_before``: units of this step found finished earlier, counted in the progress line."""
        want = set(ids)
        done = done_before + len(want & self._results.keys())
        with Progress(len(ids) + done_before, desc, unit=unit, initial=done, enabled=progress) as bar:
            while not want <= self._results.keys():
                self._fill()
                for handle in self.backend.wait(list(self._running), timeout=1.0):
                    uid = self._running.pop(handle)
                    result = self.backend.result(handle)  # a unit's error is raised here
                    if uid not in self._dropped:
                        self._results[uid] = result
                    bar.update(1 if uid in want else 0)
                bar.update(0)  # the periodic line also while a long unit runs
        return [self._results.pop(uid) for uid in ids]

    def _fill(self) -> None:
        while self._queue and len(self._running) < self.backend.slots:
            uid, task = self._queue.popleft()
            self._running[self.backend.submit(task)] = uid


@contextlib.contextmanager
def unit_queue(workers: int) -> Iterator[UnitQueue]:
    """A :class:`UnitQueue` on ``workers`` processes (1: this one); an error, Ctrl-C or SIGTERM (which the
    CLI turns into KeyboardInterrupt) stops the running units and ends the workers."""
    import torch

    from .sweep.backends import make_backend  # the sweep package imports every unit kind: only when run

    if workers < 1:
        raise ArgumentError("workers", f"must be >= 1, got {workers}")
    backend = make_backend("local", run_unit, workers=workers)
    aborted = True
    try:
        units = UnitQueue(backend, threads=torch.get_num_threads())
        if backend.slots > 1:  # start the workers now: their imports overlap the organism's build or load
            units.start([{"kind": "warm"}] * backend.slots)
        yield units
        aborted = False
    finally:
        backend.close(abort=aborted)
        clear_cache()  # the organism and adapters the units read in this process (workers=1)


# --- the tasks ----------------------------------------------------------------------------------------------
def em_tasks(organism: str, pending: list, *, track_every: int, force: bool) -> list[dict]:
    """The EM fine-tunes still to train (:func:`~.em.plan_units` entries whose result is None)."""
    return [
        {
            "kind": "em",
            "organism": organism,
            "finetune": cfg.to_dict(),
            "unit_dir": str(unit_dir),
            "key": key,
            "track_every": track_every,
            "force": force,
        }
        for _, cfg, unit_dir, key, prev in pending
        if prev is None
    ]


def scan_tasks(organism: str, plain: list[str], inoc: list[str], parts: list[dict], ts, settings: dict):
    """One task per basin-scan part (``settings``: :func:`~.basins.scan_part`'s keyword arguments)."""
    base = {"kind": "scan", "organism": organism, "plain": plain, "inoculated": inoc, "ts": list(ts)}
    return [{**base, "part": part, "settings": settings} for part in parts]


def llc_tasks(organism: str, adapters: list[str], grid: list, sampler, *, prompts: int, layer: int):
    """Per plain adapter (seed ``s``: the chains' seed): the LLC of all parameters (vmapped chains) and of
    the adapted layer (looped). The execution is fixed, not "auto": auto picks by timing, and the two sum
    floats in a different order, so the same seed could differ in the last bits between runs."""
    return [
        {
            "kind": "llc",
            "organism": organism,
            "adapter": adapter,
            "grid": list(grid),
            "prompts": prompts,
            "restrict": restrict,
            "sampler": sampler.replace(seed=s, execution=execution).to_dict(),
        }
        for s, adapter in enumerate(adapters)
        for restrict, execution in ((None, "vmap"), (f"layer:{layer}", "loop"))
    ]


def calibrated_llc_tasks(organism: str, adapters: list[str], points: list, setting: dict) -> list[dict]:
    """Per plain adapter (seed ``s``: the chains' seed) and point ``(t, localization)``: one LLC estimate at
    the calibrated setting (``setting``: :func:`~persona_basins.measure.llc.calibration.llc_preset`, its
    restriction, documents and sampler, γ replaced by the point's). One unit per point, so the points of a
    path run side by side on the workers; the sampler fixes its execution (no timing-dependent "auto")."""
    return [
        {
            "kind": "llc",
            "organism": organism,
            "adapter": adapter,
            "grid": [float(t)],
            "prompts": setting["n_docs"],
            "restrict": setting["restrict"],
            "sampler": setting["sampler"].replace(seed=s, localization=float(gamma)).to_dict(),
        }
        for s, adapter in enumerate(adapters)
        for t, gamma in points
    ]


def overlap_task(organism: str, plain: list[str], settings: dict) -> dict:
    """The overlap zone of every plain fine-tune (``settings``: :func:`~.degeneracy.overlap_study`'s)."""
    return {"kind": "overlap", "organism": organism, "plain": plain, "settings": settings}


def eigenform_task(organism: str, adapter: str) -> dict:
    """The eigenform run (fast setting) on one plain fine-tune."""
    return {"kind": "eigenform", "organism": organism, "adapter": adapter}

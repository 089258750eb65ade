"""Where units run, behind one small protocol: in this process, on a local process pool, or as Ray tasks.

A backend runs ``fn(task)`` (``fn`` is :func:`~.execute.execute_unit`; a task is a JSON-able dict) and hands
back its result dict. Units are seeded by their own config, never by their worker, so every backend gives the
same numbers. Pool workers die with the sweep that started them (a parent-death signal on Linux, and a
watchdog thread everywhere), so a killed sweep leaves no worker writing into its run folder.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ...errors import ArgumentError, UserError

Task = dict
RunTask = Callable[[Task], dict]


class Backend(Protocol):
    name: str
    slots: int  # how many units may be in flight at once

    def submit(self, task: Task) -> Any:
        """Start a unit; returns a handle."""

    def wait(self, handles: list, timeout: float) -> list:
        """The handles (of ``handles``) whose unit has finished, waiting up to ``timeout`` seconds for one."""

    def result(self, handle) -> dict:
        """The result dict of a finished unit."""

    def cancel(self, handles) -> None:
        """Stop units that have not finished (best effort)."""

    def close(self, abort: bool = False) -> None:
        """Release the workers; ``abort`` stops running units instead of waiting for them."""


def one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class InlineBackend:
    """One unit after another in this process (``--workers 1``): the sequential baseline."""

    name = "inline"
    slots = 1

    def __init__(self, fn: RunTask):
        self.fn = fn
        self._done: dict[int, dict] = {}
        self._count = 0

    def submit(self, task: Task):
        self._count += 1
        self._done[self._count] = self.fn(task)
        return self._count

    def wait(self, handles: list, timeout: float) -> list:
        return [h for h in handles if h in self._done]

    def result(self, handle) -> dict:
        return self._done.pop(handle)

    def cancel(self, handles) -> None:
        pass

    def close(self, abort: bool = False) -> None:
        pass


# --- pool workers that die with their parent ----------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_SECONDS = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)  # the sweep is gone: stop now, leaving only a temp folder the next sweep removes


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` does: SIGKILL from the kernel on Linux (``prctl``), and a
    watchdog thread that exits once the process is re-parented (any OS; a parent gone before prctl)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the watchdog still runs
            pass
    threading.Thread(
        target=_exit_when_orphaned, args=(parent_pid,), name="die-with-parent", daemon=True
    ).start()


def _pool_worker_init(parent_pid: int) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["OMP_NUM_THREADS"] = "1"
    die_with_parent(parent_pid)


class LocalBackend:
    """A process pool on this machine (spawned workers, one torch thread each)."""

    name = "local"

    def __init__(self, fn: RunTask, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.fn = fn
        self.slots = workers  # no queue beyond the workers: --fail-fast and Ctrl-C stop promptly
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_worker_init,
            initargs=(os.getpid(),),
        )

    def submit(self, task: Task):
        return self.pool.submit(self.fn, task)

    def wait(self, handles: list, timeout: float) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(handles, timeout=timeout, return_when=FIRST_COMPLETED).done)

    def result(self, handle) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return handle.result()
        except BrokenProcessPool as error:
            raise UserError(f"a worker process died ({error}); rerun to resume") from None

    def cancel(self, handles) -> None:
        for handle in handles:
            handle.cancel()

    def close(self, abort: bool = False) -> None:
        if not abort:
            self.pool.shutdown(wait=True, cancel_futures=True)
            return
        # Interrupted or --fail-fast: stop the running units now rather than wait for them. The executor has
        # no public way to stop a running call before Python 3.14 (terminate_workers), hence _processes.
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)


# Ray enables token authentication by itself only for a cluster it finds or starts, never for an --address
AUTH_HINT = (
    "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
    "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) as on its nodes"
)


class RayBackend:
    """Ray tasks: a local single-node cluster on 127.0.0.1, or ``ray.init(address=...)`` for a running one.

    A unit's folder is written by the worker that runs it, so on a multi-node cluster RUN must be on a
    file system every node sees (NFS, a cluster file system). ``max_retries`` reruns a unit whose worker
    process died (out of memory, a killed node); a unit that raises is recorded as failed, not retried.
    ``gpus_per_unit`` is reserved for the units whose kind uses an accelerator (``task["accelerator"]``);
    the others (organism builds, ...) reserve CPUs only.
    """

    name = "ray"

    def __init__(
        self,
        fn: RunTask,
        *,
        address: str | None,
        workers: int | None,
        cpus_per_unit: float,
        gpus_per_unit: float,
        max_retries: int,
    ):
        try:
            import ray
        except ImportError:
            raise UserError('the ray backend needs Ray: pip install -e ".[ray]"') from None
        self.ray = ray
        self.owned = False
        self._connect(address, workers, cpus_per_unit)
        total = ray.cluster_resources()
        if gpus_per_unit and total.get("GPU", 0) < gpus_per_unit:
            raise UserError(
                f"--gpus-per-unit {gpus_per_unit}: the Ray cluster has {total.get('GPU', 0):g} GPUs"
            )
        if cpus_per_unit > total.get("CPU", 0):
            raise UserError(
                f"--cpus-per-unit {cpus_per_unit}: the Ray cluster has {total.get('CPU', 0):g} CPUs"
            )
        # enough tasks in flight to fill the cluster (twice over, for nodes that join), not the whole grid
        fit = total.get("GPU", 0) / gpus_per_unit if gpus_per_unit else total.get("CPU", 0) / cpus_per_unit
        self.slots = max(1, 2 * int(fit))
        remote = ray.remote(fn)
        options = {"num_cpus": cpus_per_unit, "max_retries": max_retries, "retry_exceptions": False}
        self._cpu_task = remote.options(**options, num_gpus=0)
        self._gpu_task = remote.options(**options, num_gpus=gpus_per_unit)

    def _connect(self, address: str | None, workers: int | None, cpus_per_unit: float) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        env = {"env_vars": {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}}
        try:
            if address:
                ray.init(address=address, log_to_driver=False, runtime_env=env)
            else:
                count = workers if workers else os.cpu_count() or 1
                # results are small dicts: a small object store, not Ray's default 30% of memory
                ray.init(
                    num_cpus=int(math.ceil(count * cpus_per_unit)),
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    object_store_memory=256 * 1024**2,
                    log_to_driver=False,
                    runtime_env=env,
                )
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
            where = f"--address {address}" if address else "a local Ray cluster"
            hint = AUTH_HINT if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token" else ""
            raise UserError(f"cannot start or reach {where}: {one_line(error)}{hint}") from None
        self.owned = True

    def submit(self, task: Task):
        return (self._gpu_task if task.get("accelerator") else self._cpu_task).remote(task)

    def wait(self, handles: list, timeout: float) -> list:
        done, rest = self.ray.wait(handles, num_returns=1, timeout=timeout, fetch_local=False)
        if done and rest:  # and every other one that is ready too
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            done += more
        return done

    def result(self, handle) -> dict:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as error:  # the worker died more often than max_retries allows
            return {
                "status": "failed",
                "error": one_line(error).split(" (")[0][:300],
                "metrics": {},
                "seconds": None,
            }

    def cancel(self, handles) -> None:
        for handle in handles:
            try:
                self.ray.cancel(handle, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

    def close(self, abort: bool = False) -> None:
        if self.owned:
            self.ray.shutdown()


def make_backend(
    backend: str,
    fn: RunTask,
    *,
    workers: int | None,
    address: str | None = None,
    cpus_per_unit: float = 1,
    gpus_per_unit: float = 0,
    max_retries: int = 3,
) -> Backend:
    """The backend named ``backend`` (``local`` or ``ray``) running ``fn``; flags that do not apply to it
    are refused."""
    if workers is not None and workers < 1:
        raise ArgumentError("workers", f"must be >= 1, got {workers}")
    if cpus_per_unit <= 0:
        raise ArgumentError("cpus_per_unit", f"must be > 0, got {cpus_per_unit}")
    if gpus_per_unit < 0:
        raise ArgumentError("gpus_per_unit", f"must be >= 0, got {gpus_per_unit}")
    if backend == "local":
        if address:
            raise ArgumentError("address", "is for the ray backend")
        if gpus_per_unit:
            raise ArgumentError("gpus_per_unit", "is for the ray backend")
        if cpus_per_unit != 1:
            raise ArgumentError("cpus_per_unit", "is for the ray backend (local workers run one thread each)")
        count = workers or os.cpu_count() or 1
        return InlineBackend(fn) if count == 1 else LocalBackend(fn, count)
    if backend == "ray":
        return RayBackend(
            fn,
            address=address,
            workers=workers,
            cpus_per_unit=cpus_per_unit,
            gpus_per_unit=gpus_per_unit,
            max_retries=max_retries,
        )
    raise ArgumentError("backend", f"{backend!r}: unknown backend (local or ray)")

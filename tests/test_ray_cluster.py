"""A real Ray cluster started as users start one (issue 25, family 6).

``ray start --head --block`` and ``ray start --address HOST:PORT --block`` in a temp folder, the sweep as a
driver with ``persona-basins sweep ... --backend ray --address HOST:PORT``, a whole worker node SIGKILLed
while it runs a unit and a replacement node joining, then both ``ray start`` processes stopped with SIGTERM
(as a container stop does) and ``ps`` checked for anything left. ``ray stop`` is not used: it stops every
Ray process of the machine (it has no ``--temp-dir``), which would take down other users' clusters.

How the three connect: the head listens on all interfaces; Ray turns ``127.0.0.1`` into the machine's own
address in ``ray start --address`` and ``ray.init(address=...)`` alike, which is the same machine, so no
loopback setting is needed. What does need setting is token authentication (Ray 2.60 here): a head started by
``ray start`` enables it when a token exists, but a node or driver given an explicit ``--address`` never
enables it by itself, so every process here gets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (a
token in the temp folder, so ``~/.ray`` is not touched), as a user sets them on every node.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SPEC = """kind = "organism"
[settings]
preset = "tiny"
[settings.overrides]
pretrain_steps = 150
sft_steps = 3
checkpoint_every = 0
[axes]
seed = [0, 1]
"""
STARTED = "Ray runtime started"
STEP_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.is_file() else shutil.which("ray") or pytest.fail("no ray command")


def session_pids(sessions) -> dict[int, str]:
    """The live processes (not zombies) of the given session ids, by ``ps``: pid -> command."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=", "-o", "sess=", "-o", "stat=", "-o", "args="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        pid, sess, stat, *args = line.split(None, 3)
        if int(sess) in sessions and not stat.startswith("Z"):
            found[int(pid)] = " ".join(args)[:120]
    return found


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(STEP_S)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """The ``ray start --block`` processes of one test, each the leader of its own session."""

    def __init__(self, temp: Path, env: dict):
        self.temp, self.env, self.nodes, self.port = temp, env, {}, free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.temp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [ray_cli(), "start", "--block", "--temp-dir", str(self.temp), "--disable-usage-stats", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.nodes[name] = proc
        wait_for(lambda: STARTED in log.read_text() or proc.poll() is not None, 180, f"the {name} node")
        assert proc.poll() is None, f"{name} node did not start: {log.read_text()[-1500:]}"
        return proc

    def start_head(self) -> None:
        # no CPUs on the head: units run on the worker nodes only, so the node killed is the unit's
        ports = ["--port", str(self.port), "--dashboard-port", str(free_port())]
        self.start("head", "--head", *ports, "--num-cpus", "0", "--include-dashboard", "false")

    def join(self, name: str) -> None:
        self.start(name, "--address", self.address, "--num-cpus", "1")

    def sessions(self) -> set[int]:
        return {proc.pid for proc in self.nodes.values()}  # start_new_session: session id == leader pid

    def kill_node(self, name: str) -> None:
        """Lose a node at once: SIGKILL every process of its session (raylet, agents, workers)."""
        proc = self.nodes[name]
        for pid in session_pids({proc.pid}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(30)

    def stop(self) -> dict[int, str]:
        """SIGTERM each ``ray start --block`` (worker nodes first) and wait for its processes to end;
        returns what was still running afterwards (then SIGKILLed)."""
        sessions = self.sessions()
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            proc = self.nodes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
        deadline = time.monotonic() + 60
        while session_pids(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = session_pids(sessions)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


def running_units(out: Path) -> dict[str, int]:
    """Unit id -> pid of each unit a worker is running now (its ``worker.json`` in the temp folder)."""
    running = {}
    for marker in (out / "units").glob(".*.tmp-*/worker.json"):
        try:
            running[marker.parent.name[1:].split(".tmp-")[0]] = json.loads(marker.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue  # being written or already gone
    return running


def session_of(pid: int) -> int | None:
    try:  # /proc/PID/stat after the command's ")": state ppid pgrp session ...
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def ended(driver: subprocess.Popen) -> None:
    """Fail with the driver's output if it has ended (a condition of :func:`wait_for` that should not)."""
    if driver.poll() is not None:
        pytest.fail(
            f"the sweep ended early (exit {driver.returncode}): {driver.stdout.read().decode()[-2000:]}"
        )


def sweep_driver(spec: Path, out: Path, address: str, env: dict, stderr) -> subprocess.Popen:
    """``persona-basins sweep SPEC --out OUT --backend ray --address ADDRESS`` in its own session."""
    command = ["sweep", str(spec), "--out", str(out), "--backend", "ray", "--address", address]
    return subprocess.Popen(
        [sys.executable, "-m", "persona_basins.cli", *command],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        start_new_session=True,
    )


@pytest.fixture
def ray_env():
    if not os.environ.get("CI"):  # CI installs the ray extra: there a missing Ray is a failure, not a skip
        pytest.importorskip("ray", reason="the ray extra is not installed")
    temp = Path(tempfile.mkdtemp(prefix="pb-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        TQDM_DISABLE="1",
        OMP_NUM_THREADS="1",
    )
    yield temp, env
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_start_cluster_loses_a_node_mid_unit_and_reruns_it(ray_env, tmp_path):
    from persona_basins.studies.sweep import load_spec, run_sweep

    temp, env = ray_env
    spec = tmp_path / "organisms.toml"
    spec.write_text(SPEC)
    out = tmp_path / "ray"
    cluster = Cluster(temp, env)
    drivers = []
    try:
        cluster.start_head()
        # a driver without RAY_AUTH_MODE=token is refused (Ray retries for about 25 s), with the way out
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = sweep_driver(spec, tmp_path / "refused", cluster.address, no_token, stderr=subprocess.PIPE)
        drivers.append(refused)
        cluster.join("worker-a")
        last = refused.communicate(timeout=300)[1].decode().strip().splitlines()[-1]
        assert refused.returncode == 2, last
        assert last.startswith(f"persona-basins: error: cannot start or reach --address {cluster.address}: ")
        assert "set RAY_AUTH_MODE=token" in last and not (tmp_path / "refused" / "sweep.json").exists()
        driver = sweep_driver(spec, out, cluster.address, env, stderr=subprocess.STDOUT)
        drivers.append(driver)
        a_session = cluster.nodes["worker-a"].pid
        unit = wait_for(
            lambda: (
                ended(driver)
                or next((u for u, p in running_units(out).items() if session_of(p) == a_session), None)
            ),
            300,
            "a unit running on worker-a",
        )
        cluster.kill_node("worker-a")  # the node is lost with the unit half done
        assert not (out / "units" / unit / "unit.json").exists()
        cluster.join("worker-b")  # a replacement node: the unit waits for it and reruns there
        b_session = cluster.nodes["worker-b"].pid
        wait_for(
            lambda: ended(driver) or session_of(running_units(out).get(unit, 0)) == b_session,
            300,
            f"unit {unit} rerun on worker-b",
        )
        text = driver.communicate(timeout=300)[0].decode()
        assert driver.returncode == 0, text[-2000:]
    finally:
        for proc in drivers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        left = cluster.stop()
        left.update(session_pids({proc.pid for proc in drivers}))
    assert not left, f"processes left after the cluster stopped: {left}"

    record = json.loads((out / "sweep.json").read_text())
    assert record["backend"]["name"] == "ray"
    assert [u["status"] for u in record["units"]] == ["done", "done"]
    assert not list((out / "units").glob(".*.tmp-*"))
    baseline = run_sweep(load_spec(spec), tmp_path / "inline", workers=1, progress=False)
    assert [u["metrics"] for u in record["units"]] == [u["metrics"] for u in baseline["units"]]

"""A real Ray cluster, started the way users start one: ``ray start --head`` on 127.0.0.1 with its own temp
folder, a second node joining it with ``ray start --address``, a sweep driven with ``--address``, a worker
killed in the middle of a unit (Ray reruns it), and the cluster stopped again (each node's ``--block``
process is ended, which stops that node's processes and nothing else on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SPEC = (
    'kind = "organism"\n[settings]\npreset = "tiny"\n'
    "[settings.overrides]\npretrain_steps = 150\nsft_steps = 10\ncheckpoint_every = 0\n"
    "[axes]\nseed = [0, 1]\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_cli() -> str:
    path = Path(sys.executable).with_name("ray")
    if not path.is_file():
        pytest.skip("the ray command is not installed beside this Python")
    return str(path)


def _wait_for_nodes(address: str, n_nodes: int, timeout: float = 120) -> None:
    """Until ``n_nodes`` nodes are alive in the cluster (asked in a child process, so this test process
    never connects a Ray driver of its own)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    alive = 0
    while time.monotonic() < deadline:
        r = subprocess.run(
            [sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120
        )
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] and int(r.stdout.split()[-1]) >= n_nodes:
            return
        alive = r.stdout.strip()[-20:]
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {n_nodes} nodes (last answer {alive!r})")


@pytest.fixture()
def cluster(tmp_path_factory):
    """A head node and one worker node, each a ``ray start --block`` process of its own."""
    if os.environ.get("CI") is None:
        pytest.importorskip("ray")
    ray_cli = _ray_cli()
    # Ray's socket paths must stay short (AF_UNIX limit): a short temp folder of our own.
    temp_dir = Path(f"/tmp/pb-ray-{os.getpid()}")
    shutil.rmtree(temp_dir, ignore_errors=True)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--port", str(port), "--temp-dir", str(temp_dir),
         "--include-dashboard", "false", *common],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    nodes = [head]
    try:
        _wait_for_nodes(address, 1)
        worker = subprocess.Popen(
            [ray_cli, "start", "--address", address, *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        nodes.append(worker)
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for proc in reversed(nodes):  # the worker node first, then the head
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(nodes):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _metrics(run: Path) -> dict:
    record = json.loads((run / "sweep.json").read_text())
    return {json.dumps(u["point"], sort_keys=True): u["metrics"] for u in record["units"]}


def test_sweep_on_a_started_cluster_survives_a_killed_worker(cluster, tmp_path):
    from persona_basins.cli import main

    spec = tmp_path / "orgs.toml"
    spec.write_text(SPEC)
    local = tmp_path / "local"
    assert main(["sweep", str(spec), "--out", str(local), "--workers", "1"]) == 0

    out = tmp_path / "ray"
    driver = [sys.executable, "-m", "persona_basins.cli", "sweep", str(spec), "--out", str(out),
              "--backend", "ray", "--address", cluster]
    result: dict = {}

    def run_driver():
        result["proc"] = subprocess.run(
            driver, capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"}
        )

    thread = threading.Thread(target=run_driver)
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for marker in (out / "units").glob(".*.tmp-*/worker.json"):
            try:
                pid = json.loads(marker.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)  # a worker dies in the middle of its unit
                killed = pid
                break
            except (OSError, ValueError, KeyError):
                continue
        time.sleep(0.02)
    thread.join(600)
    proc = result["proc"]
    assert killed, "no unit was seen running on the cluster"
    assert proc.returncode == 0, proc.stderr[-1000:]
    record = json.loads((out / "sweep.json").read_text())
    assert record["backend"]["name"] == "ray"
    # the killed unit was rerun by Ray (or, past max_retries, recorded as failed — never lost or half-kept)
    assert {u["status"] for u in record["units"]} <= {"done", "failed"}
    done = {k: v for k, v in _metrics(out).items() if v}
    assert done and all(_metrics(local)[k] == v for k, v in done.items())
    assert not list((out / "units").glob(".*.tmp-*"))

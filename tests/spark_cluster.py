"""Real multi-JVM Spark clusters for tests: a standalone master with workers, and `local-cluster`.

Only one SparkContext fits in a Python process and the suite's `spark` fixture already holds one,
so run Spark work on these masters in a child process, most simply through the real CLI, whose
`get_spark()` reads the master from PENGUIN_LAB_SPARK_MASTER:

    from conftest import run_cli
    from spark_cluster import LOCAL_CLUSTER, cluster_env, standalone_master  # noqa: F401 (a fixture)

    @pytest.mark.cluster
    def test_the_lab_on_a_cluster(standalone_master, tmp_path):
        result = run_cli("run", "--epochs", "2", "--out", str(tmp_path / "run"),
                         env=cluster_env(standalone_master, tmp_path))
        assert result.returncode == 0, result.stderr

    # local-cluster[2,1,1024]: two executor JVMs started by the driver itself, no fixture needed
    env = cluster_env(LOCAL_CLUSTER, tmp_path)

`standalone_master` is session-scoped: importing it into a module (or once into conftest.py, to share
one cluster between modules) starts the cluster the first time a test asks for it. Elsewhere use
`with standalone_cluster(tmp_path, workers=2) as url:`. Select these tests with `pytest -m cluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"

# Two workers of one core and 1024 MB each, run by the driver's JVM; executors start as JVMs of their own.
LOCAL_CLUSTER = "local-cluster[2,1,1024]"
# Executors must fit their worker (get_spark sets this itself for any local-cluster master).
LOCAL_CLUSTER_CONF = {"spark.executor.memory": "1024m"}

START_TIMEOUT = 60


def cluster_env(master: str, tmp_path: Path, conf: dict | None = None) -> dict:
    """Environment for a child process whose get_spark() should use `master` (extra `conf` as --conf)."""
    env = {"PENGUIN_LAB_SPARK_MASTER": master, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(_spark_home(tmp_path))}
    if conf:
        env["PYSPARK_SUBMIT_ARGS"] = " ".join(f"--conf {k}={v}" for k, v in conf.items()) + " pyspark-shell"
    return env


def _spark_home(tmp_path: Path) -> Path:
    """pyspark's Spark home seen through links: local-cluster workers write their executors' folders
    to SPARK_HOME/work, which would otherwise be inside the virtual environment."""
    home = tmp_path / "spark-home"
    home.mkdir(exist_ok=True)
    for name in ("bin", "jars", "python"):
        if (SPARK_HOME / name).exists() and not (home / name).exists():
            (home / name).symlink_to(SPARK_HOME / name)
    return home


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _master_state(webui_port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1] if lines else "(no output)"


class _Processes:
    """Daemons each in its own process group, so stopping one also stops the executors it started."""

    def __init__(self, folder: Path):
        self.folder, self.running = folder, []
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
                    # A port taken in the meantime fails the master instead of moving it elsewhere.
                    "SPARK_MASTER_OPTS": "-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false"}

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.folder / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(SPARK_CLASS), *args], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.running.append(proc)
        return proc, log

    def stop_all(self) -> None:
        for proc in reversed(self.running):  # workers (and their executors) before the master
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):  # executors outliving their worker
                os.killpg(proc.pid, signal.SIGKILL)


def _start_master(procs: _Processes, deadline: float) -> tuple[str, int]:
    for attempt in range(3):
        port, webui = _free_ports(2)
        master, log = procs.start(f"master-{attempt}", "org.apache.spark.deploy.master.Master",
                                  "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui))
        while time.monotonic() < deadline and master.poll() is None:
            state = _master_state(webui)
            if state and state.get("url") == f"spark://127.0.0.1:{port}":
                return state["url"], webui
            time.sleep(0.3)
        if master.poll() is None:
            break
    raise RuntimeError(f"the Spark master did not start in {START_TIMEOUT} s: {_last_line(log)} (log: {log})")


@contextlib.contextmanager
def standalone_cluster(tmp_path: Path, workers: int = 2, cores: int = 1, memory: str = "1g"):
    """A standalone master and `workers` workers on 127.0.0.1; yields the master's spark:// URL."""
    folder = Path(tmp_path) / "standalone"
    folder.mkdir(parents=True, exist_ok=True)
    procs = _Processes(folder)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        url, webui = _start_master(procs, deadline)
        started = [procs.start(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                               "--webui-port", "0", "--work-dir", str(folder / f"work-{i}"),
                               "--cores", str(cores), "--memory", memory)
                   for i in range(workers)]
        alive = 0
        while alive < workers:
            state = _master_state(webui) or {}
            alive = sum(w.get("state") == "ALIVE" for w in state.get("workers", []))
            dead = [log for proc, log in started if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                log = dead[0] if dead else started[0][1]
                raise RuntimeError(f"the standalone Spark cluster did not come up in {START_TIMEOUT} s: {alive} of "
                                   f"{workers} workers alive; {_last_line(log)} (logs in {folder})")
            time.sleep(0.3)
        yield url
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def standalone_master(tmp_path_factory):
    """spark://127.0.0.1:PORT of a two-worker standalone cluster (one core, 1 GB each) for the session."""
    with standalone_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url

"""A real Spark standalone cluster on loopback for the tests: a master and two one-core workers, each its own
process started from pyspark's own `bin/spark-class`, as `start-master.sh` / `start-worker.sh` would."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port


@dataclass
class Cluster:
    master: str
    ui: str
    base: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.base / "logs" / f"{name}.out", "ab")  # noqa: SIM115 - the process owns it
        cmd = [str(Path(self.env["SPARK_HOME"]) / "bin" / "spark-class"), *args]
        # spark-class execs java: the pid is the JVM's; its own session lets a kill reach its executors
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def start_worker(self, i: int) -> None:
        self.workers[i] = self.spawn(
            f"worker{i}", "org.apache.spark.deploy.worker.Worker", self.master, "--host", "127.0.0.1",
            "--cores", "2", "--memory", "2g", "--webui-port", str(free_port()),
            "--work-dir", str(self.base / "work" / f"w{i}"),
        )  # fmt: skip

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.ui}/json", timeout=5) as reply:
            return json.load(reply)

    def alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except OSError:
            return 0

    def wait_alive(self, workers: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_workers() < workers:
            for proc in (self.processes[0], *self.workers.values()):
                if proc.poll() is not None:
                    raise RuntimeError(f"a Spark daemon exited ({proc.returncode}): see {self.base / 'logs'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} workers not alive in {timeout:.0f}s: see {self.base / 'logs'}")
            time.sleep(0.2)

    def kill_worker(self, i: int) -> None:
        """kill -9 worker `i`'s process group: its JVM, its executor's JVM and the executor's Pythons."""
        proc = self.workers.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _java_and_pyspark() -> str | None:
    if shutil.which("java") is None:
        return "java not found: apt-get install -y openjdk-17-jre-headless"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark not installed: pip install 'conveyor-ml[spark]'"
    return None


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> Iterator[Cluster]:
    missing = _java_and_pyspark()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    with running_cluster(tmp_path_factory.mktemp("spark")) as cluster:
        yield cluster


@contextlib.contextmanager
def running_cluster(base: Path, workers: int = 2) -> Iterator[Cluster]:
    import pyspark

    for sub in ("logs", "work", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_HOSTNAME": "127.0.0.1",
        "SPARK_LOG_DIR": str(base / "logs"),
        "SPARK_LOCAL_DIRS": str(base / "tmp"),
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_DAEMON_MEMORY": "512m",
        "SPARK_DAEMON_JAVA_OPTS": f"-Djava.io.tmpdir={base / 'tmp'} -Dspark.worker.timeout=10",
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",  # else a fixed port 6066
    }
    port, ui = free_port(), free_port()
    cluster = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", base, env)
    try:
        cluster.spawn("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                      "--webui-port", str(ui))  # fmt: skip
        for i in range(workers):
            cluster.start_worker(i)
        cluster.wait_alive(workers)
        yield cluster
    finally:
        _stop(cluster.processes[::-1])  # workers (and their executors) first, the master last


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        deadline = time.monotonic() + 15  # an executor JVM of the group can outlive its worker by a second
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.2)

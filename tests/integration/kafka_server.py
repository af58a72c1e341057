"""A private Apache Kafka node (KRaft, broker+controller) on a free port, for the tests that read or write Kafka.

The jars come from Maven Central through `scripts/kafka.sh fetch` (cached under ~/.cache/conveyor); the node
is started by `scripts/kafka.sh start`, which formats its storage and then execs the JVM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"
READY_TIMEOUT = 60


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path.name} not written)"


class Unavailable(RuntimeError):
    """Kafka cannot run on this machine (a missing client, java or mvn, or a failed fetch)."""


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    try:
        with running_kafka(tmp_path_factory.mktemp("kafka")) as bootstrap:
            yield bootstrap
    except Unavailable as exc:
        _unavailable(str(exc))


@contextlib.contextmanager
def running_kafka(workdir: Path) -> Iterator[str]:
    """One KRaft node on a free port with its data in `workdir`; yields its bootstrap address."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        raise Unavailable("confluent-kafka not installed: uv pip install confluent-kafka") from None
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise Unavailable("kafka needs java (17+) and mvn: apt-get install -y openjdk-17-jre-headless maven")
    fetch = subprocess.run([str(SCRIPT), "fetch"], capture_output=True, text=True, timeout=600)
    if fetch.returncode != 0:
        last = (fetch.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"scripts/kafka.sh fetch failed: {last}")

    port, controller_port = free_port(), free_port()
    console = workdir / "console.log"
    with console.open("wb") as out:
        # Its own process group: a stop during the storage format (bash + a java child) ends both.
        proc = subprocess.Popen(
            [str(SCRIPT), "start", str(workdir), str(port), str(controller_port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    bootstrap = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        # The port first (librdkafka would log every refused connection), then a metadata round trip.
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                if AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).brokers:
                    break
            except Exception:  # OSError or KafkaException while the broker comes up
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(
                    f"kafka did not become ready on {bootstrap} (exit code {proc.poll()}):\n"
                    f"{_tail(console, 10)}\n--- server.log ---\n{_tail(workdir / 'server.log')}"
                )
            time.sleep(0.2)
        yield bootstrap
    finally:
        # SIGTERM makes Kafka shut down cleanly (a few seconds); kill it if that hangs.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

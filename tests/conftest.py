"""Fixtures that build real models in real stores and start the real gunicorn server on a free port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conveyor.store import ModelStore

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


def conveyor(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the `conveyor` command as a user does, in a subprocess; fails with its output unless it succeeds."""
    proc = subprocess.run([*CONVEYOR, *args], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"conveyor {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    """A refused command: exit `code`, no traceback, one `error: ...` line on stderr containing `text`."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert text in lines[0], lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, *patterns: str, timeout: float = 5.0) -> str:
    """GET `url` (a /metrics) until every regex in `patterns` matches: each worker writes its request metrics up
    to serve.metrics.FLUSH_SECONDS late, so a scrape answered by another worker may not show them yet."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url, timeout=10).text
        missing = [p for p in patterns if not re.search(p, text)]
        if not missing:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never showed {missing}:\n{text[-3000:]}")
        time.sleep(0.1)


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10) -> None:
    """Until a server we started listens on `port`; fails with `what` if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start (exit code {proc.poll()})") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def sales_forecaster():
    """The demo forecaster trained once per session (short horizon to keep it quick)."""
    from conveyor.forecast import train_sales
    from conveyor.sales_data import demo_history

    return train_sales(demo_history(), range_max=60)


@pytest.fixture(scope="session")
def iris_model():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 4)), columns=["x0", "x1", "x2", "x3"])
    y = np.where(X["x0"] + X["x1"] > 0, "yes", "no")
    return LogisticRegression().fit(X, y), X


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, sales_forecaster, iris_model) -> Path:
    """A file store with `sales` (two versions, production -> 1) and `iris` (one version)."""
    root = tmp_path_factory.mktemp("store")
    store = ModelStore(root)
    store.add("sales", sales_forecaster, flavor="forecaster", metrics=sales_forecaster.summary())
    store.promote("sales:1", "production")
    est, _ = iris_model
    store.add("iris", est, flavor="sklearn")
    return root


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    store: Path | str, model: str, tmp: Path, *args: str, env: dict | None = None, ready_timeout: float = 60
) -> Server:
    port = free_port()
    log = tmp / f"server-{port}.log"
    cmd = [*CONVEYOR, "serve", model, "--store", str(store), "--port", str(port), *args]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {ready_timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """Start servers on demand; every one is stopped at the end of the test."""
    started: list[Server] = []

    def _start(store, model, *args, **kw) -> Server:
        server = start_server(store, model, tmp_path, *args, **kw)
        started.append(server)
        return server

    yield _start
    for s in started:
        s.stop()

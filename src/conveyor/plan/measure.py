"""Measure the model where it will run: the real server under load, the real function runtime from cold.

The server is `conveyor serve` with one worker: how long it takes to be ready, one request's latency when idle,
and, under concurrent load, how many requests one vCPU answers (requests over the CPU seconds the server's
processes used, so the load generator sharing the machine does not count) and the p99 at that load.
The function is the Cloud Run functions bundle `conveyor deploy function` writes, run by functions-framework:
process start to first answer (Python, imports, model load: what an instance's cold start adds to the
platform's own sandbox start), then warm invocations one at a time.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.deploy.local import free_port, gcp_function, process, wait_listening
from conveyor.errors import ConveyorError, MissingExtra
from conveyor.plan.costs import Measured


@dataclass(frozen=True)
class Request:
    """One valid request for the model: POST /predict with an example row from its signature."""

    path: str
    body: bytes

    @classmethod
    def for_model(cls, store: str, ref: str) -> Request:
        import orjson

        from conveyor.serve.openapi import example
        from conveyor.signature import Signature
        from conveyor.store import ModelStore

        signature = Signature.from_dict(ModelStore(store).manifest(ref)["signature"])
        return cls("/predict", orjson.dumps({"instances": [{f.name: example(f) for f in signature.inputs}]}))


def _post(url: str, body: bytes, timeout: float = 60) -> float:
    """One request; its latency in seconds (a refused one is an error: the example must be answered)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body, {"content-type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
    finally:
        conn.close()
    if reply.status != 200:
        raise ConveyorError(f"the model refused its own example request ({reply.status}): {data[:200]!r}")
    return time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (the server's master and workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError):
            continue
        pids += [int(c) for c in children]
    return total


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_server(
    store: str, ref: str, request: Request, seconds: float, concurrency: int, work: Path
) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "conveyor.cli", "serve", ref, "--store", store, "--port", str(port)]
    cmd += ["--workers", "1", "--log-level", "warning", "--poll-interval", "0"]
    started = time.perf_counter()
    with process(cmd, work / "server.log") as proc:
        wait_listening(url, proc, "conveyor serve", work / "server.log")
        _post(url + request.path, request.body)  # the worker has loaded the model once this is answered
        ready = time.perf_counter() - started
        idle = [_post(url + request.path, request.body) for _ in range(50)]
        latencies: list[float] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def client() -> None:
            try:
                while not stop.is_set():
                    latencies.append(_post(url + request.path, request.body))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        cpu_before = _cpu_seconds(proc.pid)
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(60)
        cpu = _cpu_seconds(proc.pid) - cpu_before
        if errors:
            raise ConveyorError(f"the server failed under load: {errors[0]}")
    return {
        "ready_s": ready,
        "p50_ms": statistics.median(idle) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "capacity_per_vcpu": len(latencies) / cpu if cpu > 0 else float("inf"),
        "requests": float(len(latencies)),
    }


def measure_function(
    store: str, ref: str, request: Request, warm_requests: int, cold_starts: int, work: Path
) -> dict[str, float]:
    try:
        import functions_framework  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("functions_framework", "function-gcp") from exc
    from conveyor.deploy.function import render_function

    source = work / "function"
    render_function(store, ref, source, "gcp", wheels=False)
    colds: list[float] = []
    warm: list[float] = []
    for attempt in range(cold_starts):
        with gcp_function(source, work / f"function-{attempt}.log") as fn:
            _post(fn.url + request.path, request.body)
            colds.append(time.perf_counter() - fn.started)
            if attempt == 0:
                warm = [_post(fn.url + request.path, request.body) for _ in range(warm_requests)]
    return {
        "cold_start_s": statistics.median(colds),
        "warm_p50_ms": statistics.median(warm) * 1000,
        "warm_p99_ms": _percentile(warm, 0.99) * 1000,
    }


def measure(
    store: str,
    ref: str,
    memory_mb: int,
    seconds: float = 5.0,
    concurrency: int = 8,
    progress: Callable[[str], Any] = lambda _: None,
) -> Measured:
    request = Request.for_model(store, ref)
    with tempfile.TemporaryDirectory(prefix="conveyor-plan-") as tmp:
        work = Path(tmp)
        progress("the function: cold starts and warm requests under functions-framework")
        fn = measure_function(store, ref, request, warm_requests=200, cold_starts=3, work=work)
        progress(f"the server: {concurrency} clients for {seconds:g}s")
        server = measure_server(store, ref, request, seconds, concurrency, work)
    return Measured(
        capacity_per_vcpu=server["capacity_per_vcpu"],
        server_p50_ms=server["p50_ms"],
        server_p99_ms=server["p99_ms"],
        function_warm_ms=fn["warm_p50_ms"],
        function_p99_ms=fn["warm_p99_ms"],
        cold_start_s=fn["cold_start_s"],
        container_start_s=server["ready_s"],
        function_memory_mb=memory_mb,
    )

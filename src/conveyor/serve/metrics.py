"""Prometheus metrics of the service, shared by all gunicorn workers through prometheus-client's multiprocess mode.

`PROMETHEUS_MULTIPROC_DIR` must be set before prometheus_client is first imported; `server.py` does that.

In multiprocess mode every update takes a lock and writes a memory-mapped file (~3 µs), and a request makes about
a dozen: a quarter of a small request's CPU under load. So a worker's request metrics are summed in memory and
written at most FLUSH_SECONDS later, by a timer on its event loop (and before it renders /metrics or stops);
Prometheus scrapes every few seconds, so a scrape sees them at most that much later.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from conveyor.metrics import LATENCY_BUCKETS, SIZE_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "conveyor_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"]
)
LATENCY = Histogram("conveyor_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS)
ERRORS = Counter("conveyor_errors_total", "Errors answered, by kind", ["kind"])
BATCH_ROWS = Histogram("conveyor_batch_rows", "Rows per predict call", buckets=SIZE_BUCKETS)
BATCH_REQUESTS = Histogram("conveyor_batch_requests", "Requests merged into one predict call", buckets=SIZE_BUCKETS)
BATCH_SECONDS = Histogram("conveyor_batch_duration_seconds", "Time of one predict call", buckets=LATENCY_BUCKETS)
MODEL_REQUESTS = Counter(
    "conveyor_model_requests_total", "Predictions asked of each served model, by outcome", ["model", "outcome"]
)
MODEL_LATENCY = Histogram(
    "conveyor_model_request_duration_seconds",
    "Time from a validated request to its prediction (queue + predict), by model",
    ["model"],
    buckets=LATENCY_BUCKETS,
)


FLUSH_SECONDS = 0.2

_counts: dict[Any, float] = {}  # Counter child -> increments since the last flush
_observed: dict[Any, list[float]] = {}  # Histogram child -> values observed since the last flush
_timer: asyncio.TimerHandle | None = None
_timer_loop: asyncio.AbstractEventLoop | None = None


def _buffering() -> bool:
    """Whether updates can wait for a flush: on an event loop, which then flushes them in FLUSH_SECONDS."""
    global _timer, _timer_loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop to flush them: write now
        return False
    if _timer is not None and _timer_loop is loop:
        return True
    if _timer is not None:  # scheduled on a loop that has ended (asyncio.run again): its flush never ran
        flush()
    _timer, _timer_loop = loop.call_later(FLUSH_SECONDS, flush), loop
    return True


def _inc(child: Any, amount: float = 1.0) -> None:
    if _buffering():
        _counts[child] = _counts.get(child, 0.0) + amount
    else:
        child.inc(amount)


def _observe(child: Any, value: float) -> None:
    if not _buffering():
        child.observe(value)
    elif (values := _observed.get(child)) is not None:
        values.append(value)
    else:
        _observed[child] = [value]


def flush() -> None:
    """Write what this worker counted since the last flush: one update per counter, bucket and sum."""
    global _timer
    if _timer is not None:
        _timer.cancel()
        _timer = None
    counts, observed = dict(_counts), dict(_observed)
    _counts.clear()
    _observed.clear()
    for child, amount in counts.items():
        child.inc(amount)
    for child, values in observed.items():
        # Histogram.observe's own rule: a value counts in the first bucket whose upper bound is >= it
        bounds = child._upper_bounds
        for index, n in collections.Counter(bisect.bisect_left(bounds, v) for v in values).items():
            child._buckets[index].inc(n)
        child._sum.inc(sum(values))


_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count and time a request; label children are cached, as `labels()` costs more than the update."""
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route))
    _inc(children[0])
    _observe(children[1], seconds)


_model_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_model(model: str, outcome: str, seconds: float) -> None:
    """Count and time one model's prediction; `outcome` is "ok" or the error's kind."""
    key = (model, outcome)
    children = _model_children.get(key)
    if children is None:
        children = _model_children[key] = (MODEL_REQUESTS.labels(model, outcome), MODEL_LATENCY.labels(model))
    _inc(children[0])
    _observe(children[1], seconds)


def observe_batch(requests: int, rows: int, seconds: float) -> None:
    _observe(BATCH_REQUESTS, requests)
    _observe(BATCH_ROWS, rows)
    _observe(BATCH_SECONDS, seconds)


def render() -> bytes:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()

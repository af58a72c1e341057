"""Prometheus metrics of the service, shared by all gunicorn workers through prometheus-client's multiprocess mode.

`PROMETHEUS_MULTIPROC_DIR` must be set before prometheus_client is first imported; `server.py` does that.
"""

from __future__ import annotations

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


_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count and time a request; label children are cached, as `labels()` costs more than the update."""
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route))
    children[0].inc()
    children[1].observe(seconds)


_model_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_model(model: str, outcome: str, seconds: float) -> None:
    """Count and time one model's prediction; `outcome` is "ok" or the error's kind."""
    key = (model, outcome)
    children = _model_children.get(key)
    if children is None:
        children = _model_children[key] = (MODEL_REQUESTS.labels(model, outcome), MODEL_LATENCY.labels(model))
    children[0].inc()
    children[1].observe(seconds)


def observe_batch(requests: int, rows: int, seconds: float) -> None:
    BATCH_REQUESTS.observe(requests)
    BATCH_ROWS.observe(rows)
    BATCH_SECONDS.observe(seconds)


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()

"""Prometheus metrics of a stream worker (one process: the default registry, served by `--metrics-port`).

The model's version and hot reloads are `conveyor.metrics`' (conveyor_model_info, conveyor_model_reloads_total),
the same as the service's, so one dashboard reads both.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from conveyor.metrics import LATENCY_BUCKETS, SIZE_BUCKETS

MESSAGES = Counter(
    "conveyor_stream_messages_total",
    "Messages by outcome: consumed, predicted, stored, replied, dead_lettered",
    ["topic", "outcome"],
)
BATCH_SECONDS = Histogram(
    "conveyor_stream_batch_duration_seconds",
    "From consume to ack of one batch (decode, validate, predict, write or publish)",
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram("conveyor_stream_batch_messages", "Messages per consumed batch", buckets=SIZE_BUCKETS)
RETRIES = Counter("conveyor_stream_retries_total", "Failed deliveries retried with backoff, by stage", ["stage"])
LAG = Gauge("conveyor_stream_lag_messages", "Messages of the group not yet consumed (where the broker says)", ["topic"])


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Expose /metrics on `port` from a daemon thread."""
    start_http_server(port, addr=host)

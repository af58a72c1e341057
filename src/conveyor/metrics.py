"""Prometheus metrics every path shares: the served model's version, hot reloads and the histogram buckets.

The service and the stream worker report the model they serve under the same names, so one dashboard reads
both. In the service, `PROMETHEUS_MULTIPROC_DIR` must be set before this module is first imported
(`serve/server.py` does that); the stream worker uses the default registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

MODEL_INFO = Gauge(
    "conveyor_model_info",
    "The model version a worker serves (1 per live worker)",
    ["name", "version", "flavor"],
    multiprocess_mode="liveall",
)
RELOADS = Counter("conveyor_model_reloads_total", "Hot reloads of the served alias by outcome", ["outcome"])


def set_model(name: str, version: int, flavor: str, previous: int | None = None) -> None:
    """Mark the version a worker serves; the one it replaced drops to 0 (multiprocess gauges cannot be removed)."""
    if previous is not None and previous != version:
        MODEL_INFO.labels(name, str(previous), flavor).set(0)
    MODEL_INFO.labels(name, str(version), flavor).set(1)

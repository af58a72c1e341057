"""Request metrics are summed in memory and written by a timer: what a flush writes is what direct updates write."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram

from conveyor.metrics import LATENCY_BUCKETS
from conveyor.serve import metrics

# on and between bucket bounds, below the first and above the last
SECONDS = [0.0, 0.0004, 0.001, 0.0015, 0.005, 0.005, 0.25, 1.0, 3.0, 1e6]


def latency(route: str) -> dict[str, float]:
    return {
        f"{s.name}|{s.labels.get('le', '')}": s.value
        for metric in metrics.LATENCY.collect()
        for s in metric.samples
        if s.labels.get("route") == route and not s.name.endswith("_created")
    }


def count(route: str) -> float:
    (value,) = [
        s.value
        for metric in metrics.REQUESTS.collect()
        for s in metric.samples
        if s.labels.get("route") == route and s.name.endswith("_total")
    ]
    return value


def direct(values: list[float]) -> dict[str, float]:
    """The same values observed one by one, as prometheus-client does it."""
    twin = Histogram("twin_seconds", "", ["route"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        twin.labels("r").observe(v)
    return {
        f"{s.name.replace('twin_seconds', 'conveyor_request_duration_seconds')}|{s.labels.get('le', '')}": s.value
        for metric in twin.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_on_an_event_loop_updates_wait_for_the_flush_and_then_match_direct_ones():
    async def requests() -> tuple[float, dict[str, float]]:
        for seconds in SECONDS:
            metrics.observe_request("/buffered", "GET", 200, seconds)
        before = count("/buffered")
        await asyncio.sleep(metrics.FLUSH_SECONDS * 2)  # the timer flushes
        return before, latency("/buffered")

    before, after = asyncio.run(requests())
    assert before == 0
    assert count("/buffered") == len(SECONDS)
    assert after == direct(SECONDS)


def test_render_flushes_first():
    async def one() -> bytes:
        metrics.observe_request("/rendered", "POST", 400, 0.002)
        return metrics.render()

    text = asyncio.run(one()).decode()
    assert 'conveyor_requests_total{method="POST",route="/rendered",status="400"} 1.0' in text


def test_without_an_event_loop_updates_are_written_at_once():
    metrics.observe_request("/direct", "GET", 200, 0.003)
    assert count("/direct") == 1
    assert latency("/direct") == direct([0.003])


def test_counts_left_by_a_loop_that_ended_are_written_by_the_next_one():
    async def count_one() -> None:
        metrics.observe_request("/two-loops", "GET", 200, 0.01)

    asyncio.run(count_one())  # ends before its flush timer fires
    assert count("/two-loops") == 0
    asyncio.run(count_one())  # a new loop: what the old one left is written first
    assert count("/two-loops") == 1
    metrics.flush()
    assert count("/two-loops") == 2

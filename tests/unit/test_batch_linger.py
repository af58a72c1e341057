"""Under load a batch lingers for the requests on their way; clients that all wait in it do not make it wait."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from conveyor.serve import batching
from conveyor.store import ModelStore
from tests.unit.batchers import batched, one_row

ROW = b'{"x0": %d, "x1": 2, "x2": 3, "x3": 4}'


@pytest.fixture
def lingers(monkeypatch) -> list[int]:
    """How many requests joined each batch while it lingered."""
    joined: list[int] = []
    paid = batching.Linger.paid

    def recorded(self, n: int) -> None:
        joined.append(n)
        paid(self, n)

    monkeypatch.setattr(batching.Linger, "paid", recorded)
    return joined


@pytest.fixture
def iris_store(tmp_path, iris_model) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.add("iris", iris_model[0], flavor="sklearn")
    return store


def test_a_fast_model_lingers_for_requests_that_come_faster_than_its_predicts(iris_store, lingers):
    """One request per loop turn, as a loaded worker parses them: without lingering each batch would take the
    one or two parsed since the last predict."""
    sizes: list[int] = []

    async def go() -> None:
        async with batched(iris_store, "iris", timeout=10, on_batch=lambda n, rows, s: sizes.append(n)) as (
            model,
            batcher,
        ):
            rows = [one_row(model, ROW % i) for i in range(300)]
            expected = [model.predict_columns(*row) for row in rows]
            for row in rows[:5]:  # timed: the model is fast
                await batcher.predict(model, *row)
            sizes.clear()
            calls = []
            for row in rows:
                calls.append(asyncio.create_task(batcher.predict(model, *row)))
                await asyncio.sleep(0)
            answers = await asyncio.gather(*calls)
            for (_, answer), want in zip(answers, expected, strict=True):
                assert answer == {name: values.tolist() for name, values in want.items()}

    asyncio.run(go())
    assert sum(sizes) == 300
    assert len(sizes) <= 300 / 8, sizes  # batches of 8 or more on average
    assert lingers and sum(lingers) / len(lingers) >= 5, lingers


def waiting(n: int, rows: int = 1) -> list[SimpleNamespace]:
    """Queued requests, as far as a linger looks at them."""
    return [SimpleNamespace(model=SimpleNamespace(name="m"), rows=rows) for _ in range(n)]


def linger_with(arrivals: list[int], queued: int = 0, rows: int = 1, max_rows: int = 256) -> int:
    """A linger where arrivals[i] requests (of `rows` rows) come during tick i: the ticks it waited."""
    ticks = 0

    async def go() -> None:
        batcher = batching.AdaptiveBatcher(max_rows=max_rows)
        batcher._queue.extend(waiting(queued, rows))

        async def tick() -> None:
            nonlocal ticks
            await asyncio.sleep(0)
            batcher._queue.extend(waiting(arrivals[ticks] if ticks < len(arrivals) else 0, rows))
            ticks += 1

        batcher._tick = tick
        try:
            await batcher._linger_ticks()
        finally:
            batcher.close()

    asyncio.run(go())
    return ticks


def test_a_linger_goes_on_tick_after_tick_while_each_brings_a_request():
    assert linger_with([3, 1, 2, 5, 4]) == batching.LINGER_TICKS
    assert linger_with([3, 0, 5]) == 2  # a tick that brought nobody: the clients are all in the batch
    assert linger_with([4, 4, 4], queued=10) == 2  # 18 wait: LINGER_REQUESTS reached
    assert linger_with([1, 1, 1], queued=1, rows=8, max_rows=20) == 2  # 24 rows: max_rows reached


def test_a_full_queue_does_not_linger():
    batcher = batching.AdaptiveBatcher()
    try:
        batcher._placements["m"] = batching.Placement(batcher.inline_below)
        batcher._placements["m"].seconds = 0.0001  # a fast model
        now = time.perf_counter()
        for i in range(100):  # 10,000 requests a second
            batcher._linger.arrived(now - 0.01 + i * 0.0001)
        batcher._queue.extend(waiting(3))
        assert batcher._should_linger()
        batcher._queue.extend(waiting(batching.LINGER_REQUESTS))
        assert not batcher._should_linger()
    finally:
        batcher.close()


def test_the_arrival_rate_is_counted_over_a_window():
    linger = batching.Linger()
    t = 1000.0
    linger.arrived(t)  # the first request after an idle spell
    assert not linger.due()
    for i in range(1, 41):  # 4,000 requests a second, 10 ms
        linger.arrived(t + i * 0.00025)
    t += 40 * 0.00025
    assert linger.due()
    assert linger.rate == pytest.approx(4000, rel=0.1)
    # 1,000 requests a second: a tick would bring one; not worth the wait
    slow = batching.Linger()
    for i in range(60):
        slow.arrived(t + i * 0.001)
    assert not slow.due()
    # 16 at the very same instant (a coarse clock): no division by zero
    same = batching.Linger()
    for _ in range(40):
        same.arrived(t)
    same.due()


def test_clients_that_all_wait_in_the_batch_make_it_linger_ever_more_rarely(iris_store, lingers):
    """Four clients, each sending its next request when the last is answered: a linger brings nobody, so after
    one the batcher stops lingering for 8 batches, then 16, 32, ..."""
    sizes: list[int] = []

    async def go() -> None:
        async with batched(iris_store, "iris", timeout=10, on_batch=lambda n, rows, s: sizes.append(n)) as (
            model,
            batcher,
        ):

            async def client(i: int) -> None:
                row = one_row(model, ROW % i)
                for _ in range(150):
                    await batcher.predict(model, *row)

            await asyncio.gather(*(client(i) for i in range(4)))

    asyncio.run(go())
    assert sum(sizes) == 600
    assert lingers == [0] * len(lingers), lingers
    assert 1 <= len(lingers) <= 6, (lingers, sizes)  # tried at batches ~0, 8, 24, 56, 120 of ~150

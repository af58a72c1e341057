"""Under load a batch lingers for the requests on their way; clients that all wait in it do not make it wait."""

from __future__ import annotations

import asyncio
import time

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


def test_a_linger_goes_on_tick_after_tick_while_requests_keep_coming(iris_store, lingers):
    """A steady stream of ~3 requests a tick from another thread, as gRPC's poller hands calls to a worker: one
    tick of lingering would add ~3 to a batch; it goes on while each tick brings one, up to LINGER_TICKS."""
    sizes: list[int] = []

    async def go() -> None:
        async with batched(iris_store, "iris", timeout=10, on_batch=lambda n, rows, s: sizes.append(n)) as (
            model,
            batcher,
        ):
            row = one_row(model, ROW % 1)
            for _ in range(5):  # timed: the model is fast
                await batcher.predict(model, *row)
            sizes.clear()
            loop = asyncio.get_running_loop()
            calls: list[asyncio.Future] = []

            def submit() -> None:
                calls.append(asyncio.ensure_future(batcher.predict(model, *row)))

            def stream() -> None:  # arrivals in real time, not in step with the loop's timers
                for _ in range(120):
                    loop.call_soon_threadsafe(submit)
                    time.sleep(0.3 * batching.LINGER_SECONDS)

            await asyncio.to_thread(stream)
            while len(calls) < 120:
                await asyncio.sleep(0)
            await asyncio.gather(*calls)

    asyncio.run(go())
    assert sum(sizes) == 120
    assert lingers and max(lingers) < batching.LINGER_REQUESTS + 3, lingers
    # lingers lasted several ticks: more joined than the ~3 a single tick brings
    assert sum(lingers) / len(lingers) >= 5, (lingers, sizes)


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

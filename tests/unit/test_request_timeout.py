"""A prediction slower than --request-timeout answers Timeout; the late answer is dropped and the worker goes on."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from conveyor.serve import batching, codecs
from conveyor.serve.app import Service, Timeout
from conveyor.serve.batching import AdaptiveBatcher
from conveyor.settings import ServeSettings
from conveyor.store import ModelStore
from tests.unit.batchers import batched, one_row

SLOW = """
import time
import pandas as pd
SIGNATURE = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "float"}]}
def predict(frame):
    if (frame["x"] > 100).any():
        time.sleep(1.0)
    return pd.DataFrame({"y": frame["x"] * 2})
"""


def test_a_slow_prediction_times_out_and_the_next_one_answers(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    store = ModelStore(tmp_path / "store")
    store.add("slow", f"{tmp_path / 'slow.py'}:predict", flavor="function")

    async def go() -> tuple[str, float, dict]:
        service = Service(ServeSettings(store=store.uri, model="slow", request_timeout=0.3, poll_interval=0))
        await service.models.start()
        try:
            model = service.model()

            def rows(x: float) -> tuple[dict, int]:
                return codecs.decode_body(b'{"instances": [{"x": %g}]}' % x, "application/json", model.signature, 10)

            started = time.perf_counter()
            with pytest.raises(Timeout) as slow:
                await service.run(model, *rows(500))
            waited = time.perf_counter() - started
            await asyncio.sleep(1.0)  # the slow predict finishes in its thread; its answer has nobody to go to
            _, answer = await service.run(model, *rows(2))
            return str(slow.value), waited, answer
        finally:
            await service.models.stop()
            service.batcher.close()

    message, waited, answer = asyncio.run(go())
    assert message == "no prediction within 0.3 s; try again later"
    assert 0.25 < waited < 0.9
    assert answer == {"y": [4.0]}


@pytest.fixture
def predict_threads(monkeypatch) -> list[str]:
    """The name of the thread each predict ran on: MainThread inline, predict_0 in the batcher's thread."""
    threads: list[str] = []
    predict_batch = batching._predict_batch

    def recorded(batch):
        threads.append(threading.current_thread().name)
        return predict_batch(batch)

    monkeypatch.setattr(batching, "_predict_batch", recorded)
    return threads


def test_requests_queued_behind_a_slow_prediction_time_out_on_their_own_deadlines_and_are_never_predicted(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    store = ModelStore(tmp_path / "store")
    store.add("slow", f"{tmp_path / 'slow.py'}:predict", flavor="function")
    batches: list[int] = []

    async def go() -> list[tuple[str, float]]:
        async with batched(store, "slow", on_batch=lambda n, rows, s: batches.append(rows), timeout=0.3) as (
            model,
            batcher,
        ):

            async def ask(x: float, delay: float) -> tuple[str, float]:
                await asyncio.sleep(delay)
                columns, rows = one_row(model, b'{"x": %g}' % x)
                started = time.perf_counter()
                try:
                    _, answer = await batcher.predict(model, columns, rows)
                except TimeoutError:
                    return "timeout", time.perf_counter() - started
                return str(answer), time.perf_counter() - started

            # 500 holds the predict thread for 1 s; 3 and 4 queue behind it, 0.1 and 0.2 s later
            outcomes = await asyncio.gather(ask(500, 0), ask(3, 0.1), ask(4, 0.2))
            await asyncio.sleep(1.0)
            outcomes.append(await ask(2, 0))
            return outcomes

    outcomes = asyncio.run(go())
    assert [o for o, _ in outcomes] == ["timeout", "timeout", "timeout", "{'y': [4.0]}"]
    for _, waited in outcomes[:3]:  # each on its own deadline, not the first one's nor the slow predict's end
        assert 0.28 < waited < 0.6
    assert batches == [1, 1]  # the slow row and the last one: the timed-out queued rows cost no predict


def test_a_fast_model_predicts_on_the_event_loop_even_while_the_loop_is_busy(tmp_path, iris_model, predict_threads):
    """The thread hand-off is for slow models; a busy loop (many requests) must not make a fast one look slow."""
    store = ModelStore(tmp_path / "store")
    store.add("iris", iris_model[0], flavor="sklearn")

    async def go() -> None:
        stop = False

        def hog() -> None:  # other work on the loop, 3 ms at a time, as a loaded worker parses requests
            end = time.perf_counter() + 0.003
            while time.perf_counter() < end:
                pass
            if not stop:
                asyncio.get_running_loop().call_soon(hog)

        async with batched(store, "iris", timeout=10) as (model, batcher):
            columns, rows = one_row(model, b'{"x0": 1, "x1": 2, "x2": 3, "x3": 4}')
            for _ in range(3):  # warm, outside the batcher: a first predict's lazy imports are no cost of the model
                expected = model.predict_columns(columns, rows)
            asyncio.get_running_loop().call_soon(hog)
            try:
                for _ in range(20):
                    _, answer = await batcher.predict(model, columns, rows)
                    assert answer == {name: values.tolist() for name, values in expected.items()}
            finally:
                stop = True

    asyncio.run(go())
    # not yet timed, the model starts in the thread, where the busy loop makes it wait for the GIL: its CPU time
    # says it is fast (timed around the hand-off, as before, it looked slow and stayed there)
    assert predict_threads[0].startswith("predict")
    assert predict_threads[-10:] == ["MainThread"] * 10


SLEEPY = """
import time
import pandas as pd
SIGNATURE = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "float"}]}
def predict(frame):
    time.sleep(0.03)  # a lookup elsewhere: little CPU, a long wait
    return pd.DataFrame({"y": frame["x"] * 2})
"""


def test_a_model_that_waits_on_io_is_tried_inline_ever_more_rarely(tmp_path, predict_threads):
    """Its CPU time looks cheap, so it is tried on the loop; each 30 ms stall sends it back to the thread for twice
    as many batches as the last."""
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    store = ModelStore(tmp_path / "store")
    store.add("sleepy", f"{tmp_path / 'sleepy.py'}:predict", flavor="function")

    async def go() -> list[float]:
        gaps: list[float] = []
        done = False

        async def tick() -> None:  # the loop's other work: how long does it wait for a turn?
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        # inline_below_ms=5: its ~1 ms of CPU is surely cheap enough to be tried inline
        async with batched(store, "sleepy", timeout=10, inline_below_ms=5) as (model, batcher):
            columns, rows = one_row(model, b'{"x": 1}')
            ticker = asyncio.create_task(tick())
            for _ in range(40):
                _, answer = await batcher.predict(model, columns, rows)
                assert answer == {"y": [2.0]}
            done = True
            await ticker
        return gaps

    gaps = asyncio.run(go())
    inline = [i for i, name in enumerate(predict_threads) if name == "MainThread"]
    assert 1 <= len(inline) <= 3, predict_threads
    assert all(b - a > 8 * 2**k for k, (a, b) in enumerate(itertools.pairwise(inline))), inline
    stalls = sum(gap > 0.025 for gap in gaps)
    assert len(inline) <= stalls <= len(inline) + 1  # the loop stalled for those tries (and one slack for the OS)


def test_each_model_of_a_worker_runs_where_its_own_cost_says(tmp_path, iris_model, predict_threads):
    """One batcher serves every model of a worker: a model that blocks on I/O must not push a fast one off the loop."""
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    store = ModelStore(tmp_path / "store")
    store.add("iris", iris_model[0], flavor="sklearn")
    store.add("sleepy", f"{tmp_path / 'sleepy.py'}:predict", flavor="function")

    async def go() -> None:
        service = Service(ServeSettings(store=store.uri, model="iris sleepy", poll_interval=0))
        await service.models.start()
        batcher = AdaptiveBatcher(timeout=10, inline_below_ms=5)  # the sleeper's CPU time looks cheap too
        try:
            iris, sleepy = service.model("iris"), service.model("sleepy")
            iris_row = one_row(iris, b'{"x0": 1, "x1": 2, "x2": 3, "x3": 4}')
            sleepy_row = one_row(sleepy, b'{"x": 1}')
            for _ in range(15):  # one at a time, alternately: each batch holds one model's request
                await batcher.predict(iris, *iris_row)
                await batcher.predict(sleepy, *sleepy_row)
        finally:
            await service.models.stop()
            service.batcher.close()
            batcher.close()

    asyncio.run(go())
    fast, slow = predict_threads[0::2], predict_threads[1::2]
    assert fast[-10:] == ["MainThread"] * 10, fast
    assert slow.count("MainThread") <= 2, slow  # tried inline, sent back to the thread for 8, then 16 batches

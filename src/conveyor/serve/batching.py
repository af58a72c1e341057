"""Adaptive micro-batching: no added latency when idle, large batches under load.

A request that finds the model idle is predicted on the next turn of the event loop (together with any
request parsed in the same turn). Requests that arrive while a predict runs queue up, and the next
predict takes all of them, up to `max_rows`. Unlike a fixed batching window, a lone request never waits.

Under load that rule alone makes small batches: a request reaches the batcher only after a few turns of the
loop, and an inline predict holds the loop, so a batch starts with the few requests parsed in one turn. When
requests come at two or more per LINGER_SECONDS and the model is fast, a batch first lingers for more: tick after
tick of LINGER_SECONDS while each brings a request, until LINGER_REQUESTS wait or LINGER_TICKS passed. A fast
predict is mostly fixed cost (scikit-learn's checks alone are ~60 µs), so at 64 concurrent gRPC calls batches of
7 to 13 instead of ~3.5 cut the CPU per request by 10-20%. When lingers bring fewer than one request on average
(clients that all wait in this batch send no more), none is tried for a `Backoff`, as a model that blocked the
loop is kept off it.

A request not answered within `timeout` seconds fails with TimeoutError. One timer per batcher, at the oldest
request's deadline, keeps that promise: a timer per request costs ~3 µs, a tenth of a small gRPC call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from conveyor.model import Model

Columns = dict[str, np.ndarray]
Result = dict[str, list[Any]]

# A predict costs the event loop its CPU time. Its wall time also counts, in the thread, waits for the GIL (a busy
# loop holds it 5 ms at a time, and under load those waits are most of a fast predict's time there) and, inline,
# the OS running other processes. A predict inline that waited longer than that blocked on I/O or slept, stalling
# the loop: its model goes back to the thread for BACKOFF batches, twice as many each time it happens again.
BLOCKED_SECONDS = 0.01
BACKOFF = 8
MAX_BACKOFF = 4096
LINGER_SECONDS = 0.001  # one linger tick: uvloop's timer resolution
LINGER_REQUESTS = 16  # a batch stops lingering once this many wait: the fixed cost of its predict is then small
LINGER_TICKS = 4  # and after this many ticks, whatever came
RATE_WINDOW = 0.01  # the arrival rate is counted over this long, or over RATE_COUNT arrivals if they come sooner
RATE_COUNT = 16


@dataclass
class Backoff:
    """A batch count before which something that failed is not tried again: BACKOFF batches after the first
    failure, twice as many after each next one, up to MAX_BACKOFF."""

    until: int = 0
    length: int = BACKOFF

    def allows(self, batches: int) -> bool:
        return batches >= self.until

    def failed(self, batches: int) -> None:
        self.until = batches + self.length
        self.length = min(2 * self.length, MAX_BACKOFF)

    def reset(self) -> None:
        self.length = BACKOFF


@dataclass
class Placement:
    """Where one model's predicts run: its moving predict cost, and how long it stays in the thread after it
    blocked the loop."""

    below: float  # a predict of less CPU time than this runs inline
    seconds: float = field(init=False)  # moving average of a predict's CPU time; not yet timed: threaded
    batches: int = 0
    threaded: Backoff = field(default_factory=Backoff)  # after a predict that blocked the loop

    def __post_init__(self) -> None:
        self.seconds = self.below

    @property
    def inline(self) -> bool:
        return self.seconds < self.below and self.threaded.allows(self.batches)

    def update(self, inline: bool, wall: float, cpu: float) -> None:
        """After a predict that took `wall` (`cpu`) seconds, inline or in the thread."""
        self.batches += 1
        if inline and wall - cpu > BLOCKED_SECONDS:
            self.threaded.failed(self.batches)
        cost = min(cpu, 10 * self.below)  # clamped: a cold first call is forgotten within ~10 batches
        self.seconds = 0.8 * self.seconds + 0.2 * cost


@dataclass
class Linger:
    """Whether a batch waits for more requests first: the requests' arrival rate, and the back-off after lingers
    that brought too few."""

    rate: float = 0.0  # requests a second over the last window (RATE_WINDOW or RATE_COUNT, closed by an arrival)
    count: int = 0  # arrivals in the window under way
    since: float = 0.0  # when it began
    joined: float = 1.0  # moving average of the requests that joined a batch while it lingered
    batches: int = 0
    skipped: Backoff = field(default_factory=Backoff)

    def arrived(self, now: float) -> None:
        # Counted over a window, not averaged over the gaps between arrivals: they come in bursts (those parsed
        # while a predict held the loop), and a moving average of gaps, led by the long one, read a worker taking
        # 3,000 requests a second as ~2,000.
        self.count += 1
        elapsed = now - self.since
        if elapsed >= RATE_WINDOW or (self.count >= RATE_COUNT and elapsed > 0):
            self.rate = self.count / elapsed
            self.count, self.since = 0, now

    def due(self) -> bool:
        """Before a batch: requests come fast enough for two or more to join within a tick, and lingers pay."""
        self.batches += 1
        return self.rate * LINGER_SECONDS >= 2 and self.skipped.allows(self.batches)

    def paid(self, joined: int) -> None:
        """After a linger that `joined` this many requests to the batch."""
        self.joined = 0.8 * self.joined + 0.2 * joined
        if self.joined >= 1:
            self.skipped.reset()
        else:
            self.skipped.failed(self.batches)


@dataclass
class Pending:
    """One request's validated rows and the future its handler awaits."""

    model: Model
    columns: Columns
    rows: int
    future: asyncio.Future[tuple[Model, Result]]
    deadline: float = float("inf")  # loop time after which it fails with TimeoutError


class AdaptiveBatcher:
    def __init__(
        self,
        max_rows: int = 256,
        max_wait_ms: float = 0.0,
        inline_below_ms: float = 1.0,
        on_batch: Callable[[int, int, float], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.max_rows = max_rows
        self.timeout = timeout
        self.max_wait = max_wait_ms / 1000
        self.inline_below = inline_below_ms / 1000
        self.on_batch = on_batch
        self._queue: deque[Pending] = deque()
        self._batch: list[Pending] = []  # the requests being predicted
        self._expiry: asyncio.TimerHandle | None = None  # at the oldest waiting request's deadline
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._placements: dict[str, Placement] = {}  # by model name: one worker may serve fast and slow models
        self._linger = Linger()
        # One thread: predicts of a worker are serial by design. A slow model runs there so the event loop keeps
        # parsing requests (which queue for the next batch); a fast one runs inline, as the thread hand-off
        # would cost more than the predict itself.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="predict")

    @property
    def queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    async def predict(self, model: Model, columns: Columns, rows: int) -> tuple[Model, Result]:
        """Predict `rows` validated rows; returns the model that answered and one list per output column."""
        loop = asyncio.get_running_loop()
        pending = Pending(model, columns, rows, loop.create_future())
        if self.timeout is not None:
            pending.deadline = loop.time() + self.timeout
            if self._expiry is None:
                self._expiry = loop.call_at(pending.deadline, self._expire)
        self._queue.append(pending)
        self._linger.arrived(time.perf_counter())
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.max_wait:
                await asyncio.sleep(self.max_wait)
            else:
                await asyncio.sleep(0)  # let requests parsed in this same loop turn join the batch
            while self._queue:
                if self._should_linger():
                    queued = len(self._queue)
                    await self._linger_ticks()
                    self._linger.paid(len(self._queue) - queued)
                batch = self._batch = self._take()
                if not batch:  # every queued request timed out or was cancelled
                    break
                placement = self._placements.get(batch[0].model.name)
                if placement is None:
                    placement = self._placements[batch[0].model.name] = Placement(self.inline_below)
                inline = placement.inline
                if inline:
                    outcome, elapsed, cpu = _timed_predict(batch)
                else:
                    outcome, elapsed, cpu = await loop.run_in_executor(self._executor, _timed_predict, batch)
                placement.update(inline, elapsed, cpu)
                if self.on_batch is not None:
                    self.on_batch(len(batch), sum(p.rows for p in batch), elapsed)
                for pending, result in zip(batch, outcome, strict=True):
                    if pending.future.done():  # the request timed out or its client went away
                        continue
                    if isinstance(result, BaseException):
                        pending.future.set_exception(result)
                    else:
                        pending.future.set_result((pending.model, result))
                if inline:
                    await asyncio.sleep(0)  # let the requests that arrived meanwhile be parsed and queued
        finally:
            self._batch = []
            self._running = False
            if self._queue:  # an exception escaped mid-drain: never strand queued requests
                self._running = True
                self._task = loop.create_task(self._drain())

    def _should_linger(self) -> bool:
        """In adaptive mode, for a model whose predicts cost less than a linger (a slow one's batches fill while it
        runs), when requests come fast and the queue has room."""
        if self.max_wait or len(self._queue) >= LINGER_REQUESTS:
            return False
        placement = self._placements.get(self._queue[0].model.name)
        fast = placement is not None and placement.seconds < LINGER_SECONDS
        return fast and self._linger.due() and self.queued_rows < self.max_rows

    async def _linger_ticks(self) -> None:
        """Wait a tick at a time while each brings a request, until LINGER_REQUESTS wait, the queued rows reach
        max_rows, or LINGER_TICKS passed."""
        for _ in range(LINGER_TICKS):
            before = len(self._queue)
            await self._tick()
            if len(self._queue) == before or len(self._queue) >= LINGER_REQUESTS:
                return
            if self.queued_rows >= self.max_rows:
                return

    async def _tick(self) -> None:
        await asyncio.sleep(LINGER_SECONDS)

    def _take(self) -> list[Pending]:
        """The oldest requests still awaited, up to max_rows, all for the same model version."""
        queue = self._queue
        while queue and queue[0].future.done():  # timed out or cancelled while queued: no work for them
            queue.popleft()
        if not queue:
            return []
        first = queue.popleft()
        batch, rows = [first], first.rows
        while queue and rows + queue[0].rows <= self.max_rows and queue[0].model is first.model:
            nxt = queue.popleft()
            if not nxt.future.done():
                batch.append(nxt)
                rows += nxt.rows
        return batch

    def _expire(self) -> None:
        """Fail the requests past their deadline, oldest first, and wait for the next oldest one's."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pending in itertools.chain(self._batch, self._queue):  # oldest first: deadlines only grow
            if pending.future.done():
                continue
            if pending.deadline > now:
                self._expiry = loop.call_at(pending.deadline, self._expire)
                return
            pending.future.set_exception(TimeoutError())

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._executor.shutdown(wait=True, cancel_futures=False)


def predict_columns(model: Model, columns: Columns, rows: int) -> Result:
    """One request's validated columns predicted alone: one list per output column."""
    out = model.predict_columns(columns, rows)
    return {str(name): _python_list(out[name]) for name in out}


def _timed_predict(batch: list[Pending]) -> tuple[list[Result | BaseException], float, float]:
    """The batch's results, and the predict's wall and CPU time, timed where it runs (around run_in_executor, the
    wait for a busy loop to come back counted too: under load that alone kept a 0.1 ms predict in the thread)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    outcome = _predict_batch(batch)
    return outcome, time.perf_counter() - wall, time.thread_time() - cpu


def _predict_batch(batch: list[Pending]) -> list[Result | BaseException]:
    """Predict the merged batch; if that fails, predict each request alone so only the culprit fails."""
    model = batch[0].model
    if len(batch) == 1:
        try:
            return [predict_columns(model, batch[0].columns, batch[0].rows)]
        except Exception as exc:
            return [exc]
    names = list(batch[0].columns)
    merged = {n: np.concatenate([p.columns[n] for p in batch]) for n in names}
    sizes = [p.rows for p in batch]
    try:  # merged requests take the model's DataFrame-free path too, where it has one
        out = model.predict_columns(merged, sum(sizes))
        return list(_split(out, sizes))
    except Exception:
        return [r for p in batch for r in _predict_batch([p])]


def _split(out: Mapping[str, Any] | pd.DataFrame, sizes: list[int]) -> list[Result]:
    columns = {str(c): _python_list(out[c]) for c in out}
    results, start = [], 0
    for size in sizes:
        results.append({c: v[start : start + size] for c, v in columns.items()})
        start += size
    return results


def _python_list(values: pd.Series | np.ndarray) -> list[Any]:
    """Plain Python values (ints, floats, strings, lists) that any JSON encoder takes."""
    if values.dtype.kind == "M":
        return [v.isoformat() if v is not pd.NaT else None for v in pd.Series(values, copy=False)]
    return values.tolist() if isinstance(values, np.ndarray) else values.to_numpy().tolist()

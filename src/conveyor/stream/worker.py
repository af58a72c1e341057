"""The broker-agnostic stream worker: consume a batch, predict it in one call, deliver, and only then ack.

One topic carries both kinds of message, as the seed's `sale-range` does: a request (it names a `reply_to`)
gets its prediction back (active), an event (no `reply_to`) has its prediction stored in the sink (passive).
Deciding per message, not per worker, means workers sharing a group never store a request or refuse an event.
Delivery is the sink upsert, the dead letters and the replies of the batch. A delivery that fails for a
passing reason (database down, broker unreachable) is retried with backoff while the broker holds the rest of
the stream, so nothing is acked that was not delivered; the idempotent sinks make the replays of an
at-least-once stream harmless. A message that cannot be decoded, validated, predicted or stored goes to the
dead-letter topic with its reason and the stream moves on.
"""

from __future__ import annotations

import gc
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pandas as pd

from conveyor import validation
from conveyor.errors import ConveyorError, InvalidInput, NoSink, first_line
from conveyor.model import Model
from conveyor.reload import ModelHolder
from conveyor.sinks import Sink, kind, open_sink
from conveyor.stream import metrics
from conveyor.stream.broker import CORRELATION_ID, REPLY_TO, Broker, BrokerError, Message, open_broker, parse_uri

log = logging.getLogger("conveyor.stream")

T = TypeVar("T")


class _Stopped:
    """What `_retry` returns when the worker was asked to stop before the action succeeded."""


STOPPED = _Stopped()
EVENT_ID = "event_id"
EVENT_SEQ = "event_seq"  # the event's place in its stream where consumers may race (Redis): higher wins


@dataclass
class StreamJob:
    store: str
    model: str
    broker: str
    topic: str
    group: str
    sink: str | None = None  # where events' predictions go; None: a worker that only answers requests
    key: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()  # event fields stored beside the prediction, besides the key and the model's inputs
    table: str = "predictions"
    dlq: str | None = None
    batch: int = 500
    poll_timeout: float = 0.5
    reload_interval: float = 5.0
    max_backoff: float = 30.0
    stop_after_idle: float | None = None  # seconds without messages before the worker exits (drains, tests)
    max_messages: int | None = None  # exit once this many are consumed (benchmarks, tests)
    metrics_port: int | None = None  # /metrics, served once the worker is in its group (a readiness signal)

    def __post_init__(self) -> None:
        if self.sink is not None and kind(self.sink) not in ("sql", "redis"):
            raise InvalidInput(f"--sink must be a SQL URL or redis://..., not {self.sink!r}")
        if (self.key or self.keep) and not self.sink:
            raise InvalidInput("--key and --keep describe stored predictions: they need --sink")
        if self.batch < 1:
            raise InvalidInput(f"--batch must be at least 1, got {self.batch}")
        parse_uri(self.broker)  # an unknown scheme is refused before anything is loaded
        self.dlq = self.dlq or f"{self.topic}.dlq"

    @property
    def upsert_key(self) -> tuple[str, ...]:
        return self.key or (EVENT_ID,)


@dataclass
class DeadLetter:
    message: Message
    kind: str
    reason: str


@dataclass
class Outcome:
    """What one batch produced: rows to store, replies to publish, dead letters; nothing is acked yet."""

    messages: Sequence[Message] = ()
    rows: pd.DataFrame | None = None
    replies: dict[str, list[tuple[bytes, dict[str, str]]]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    predicted: int = 0
    stored: int = 0  # events whose prediction is (to be) stored
    replied: int = 0  # requests answered with a prediction (a refused request's error reply is a dead letter)
    dead_lettered: int = 0


# --- one batch, no I/O ----------------------------------------------------------------------------------


def process(messages: Sequence[Message], model: Model, job: StreamJob) -> Outcome:
    """Decode, validate and predict a batch in one vectorised call: the requests' predictions become replies,
    the events' rows to store; refused messages become dead letters (and error replies for requests)."""
    out = Outcome(messages)
    accepted, rows, predictions = _predict_batch(messages, model, job, out)
    out.predicted = len(accepted)
    asks = [i for i, m in enumerate(accepted) if is_request(m)]
    if asks and predictions is not None:
        out.replied = len(asks)
        _replies(out, [accepted[i] for i in asks], predictions.iloc[asks], model)
    events = [i for i, m in enumerate(accepted) if not is_request(m)]
    if events and predictions is not None:
        out.stored = len(events)
        picked = [accepted[i] for i in events]
        out.rows = _stored_rows(rows.iloc[events], predictions.iloc[events], model, picked, job)
    _error_replies(out)
    return out


def is_request(m: Message) -> bool:
    """A request names where its prediction goes; anything else is an event whose prediction is stored."""
    return bool(m.headers.get(REPLY_TO))


def _predict_batch(
    messages: Sequence[Message], model: Model, job: StreamJob, out: Outcome
) -> tuple[list[Message], pd.DataFrame, pd.DataFrame | None]:
    """The messages predicted, their stored input fields and predictions; every refusal is added to `out.dead`."""
    records, kept = [], []
    for m in messages:
        try:
            records.append(_decode(m, job))
            kept.append(m)
        except InvalidInput as exc:
            out.dead.append(DeadLetter(m, exc.kind, str(exc)))
    if not records:
        return [], pd.DataFrame(), None
    checked = validation.split(model.signature, pd.DataFrame.from_records(records))
    for row, reason in checked.rejects:
        out.dead.append(DeadLetter(kept[row], "invalid_input", reason))
    if checked.inputs is None:
        return [], pd.DataFrame(), None
    accepted = [kept[i] for i in checked.rows.index]
    predictions, failed = _predict(model, checked.inputs)
    for i, reason in failed:
        out.dead.append(DeadLetter(accepted[i], "prediction_failed", reason))
    refused = {j for j, _ in failed}
    ok = [i for i in range(len(accepted)) if i not in refused]
    # what is stored of an event: its --key and --keep fields (None where an event lacks one) and the model's
    # inputs as validated (defaults filled in)
    inputs = checked.inputs.iloc[ok].reset_index(drop=True)
    fields = [k for k in dict.fromkeys([*job.key, *job.keep]) if k not in inputs.columns]
    raw = checked.rows.reindex(columns=fields).astype(object)
    rows = pd.concat([raw.iloc[ok].reset_index(drop=True), inputs], axis=1)
    return [accepted[i] for i in ok], rows, predictions


def _replies(out: Outcome, requests: Sequence[Message], predictions: pd.DataFrame, model: Model) -> None:
    """Each request's prediction, grouped by reply topic (one publish each)."""
    for m, record in zip(requests, _json_rows(predictions), strict=True):
        body = {CORRELATION_ID: m.headers.get(CORRELATION_ID), "model": model.name, "version": model.version}
        out.replies.setdefault(m.headers[REPLY_TO], []).append(
            (_dumps({**body, "prediction": record}), _reply_headers(m))
        )


def _error_replies(out: Outcome) -> None:
    """Each refused request's error, so its caller learns at once rather than by a timeout."""
    for d in out.dead:
        reply_to = d.message.headers.get(REPLY_TO)
        if reply_to:
            error = {"kind": d.kind, "message": d.reason}
            body = {CORRELATION_ID: d.message.headers.get(CORRELATION_ID), "error": error}
            out.replies.setdefault(reply_to, []).append((_dumps(body), _reply_headers(d.message)))


def _decode(m: Message, job: StreamJob) -> dict[str, Any]:
    try:
        record = orjson.loads(m.value)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed message: not UTF-8 JSON ({exc})") from None
    if not isinstance(record, dict):
        raise InvalidInput(f"malformed message: expected a JSON object of model inputs, got {type(record).__name__}")
    if is_request(m):
        return record  # answered, never stored: it needs no key
    if not job.sink:
        raise NoSink(
            f"an event without {REPLY_TO} reached a worker without --sink: nothing can store it (start every "
            f"worker of group {job.group!r} with --sink, or send requests with {REPLY_TO})"
        )
    missing = [k for k in job.key if record.get(k) is None]
    if missing:
        raise InvalidInput(f"the event lacks key field(s) {missing} (--key)")
    return record


def _predict(model: Model, inputs: pd.DataFrame) -> tuple[pd.DataFrame | None, list[tuple[int, str]]]:
    """Predict all rows at once; if the model raises, bisect to find the rows it refuses (None: all of them)."""
    try:
        return model.predict(inputs), []
    except Exception as exc:  # a model error on some input must not stop the stream
        if len(inputs) == 1:
            return None, [(0, f"prediction failed: {type(exc).__name__}: {exc}")]
    mid = len(inputs) // 2
    left, bad_left = _predict(model, inputs.iloc[:mid].reset_index(drop=True))
    right, bad_right = _predict(model, inputs.iloc[mid:].reset_index(drop=True))
    parts = [p for p in (left, right) if p is not None]
    merged = pd.concat(parts, ignore_index=True) if parts else None
    return merged, bad_left + [(i + mid, r) for i, r in bad_right]


def stored_columns(model: Model, job: StreamJob, sequenced: bool) -> list[str]:
    """What a stored row holds: the key and kept fields, the model's inputs and outputs, model, version, event id
    (and seq).

    Fixed by the model, --key and --keep, not by what an event carries, so an existing table is checked before the
    first message and an event with a field more than the others is stored like them, never refused by the table.
    """
    outputs = model.signature.output_names
    inputs = [c for c in dict.fromkeys([*job.key, *job.keep, *model.signature.input_names]) if c not in outputs]
    return [*inputs, *outputs, "model", "version", EVENT_ID, *([EVENT_SEQ] if sequenced else [])]


def _stored_rows(
    rows: pd.DataFrame, predictions: pd.DataFrame, model: Model, messages: Sequence[Message], job: StreamJob
) -> pd.DataFrame:
    """Key and input fields, predictions, model, version and event id (and seq); the latest event per key wins."""
    rows, predictions = rows.reset_index(drop=True), predictions.reset_index(drop=True)
    frame = pd.concat([rows.drop(columns=[c for c in predictions.columns if c in rows.columns]), predictions], axis=1)
    frame["model"] = model.name
    frame["version"] = model.version
    frame[EVENT_ID] = [m.id for m in messages]
    seqs = [m.seq for m in messages]
    if any(s is not None for s in seqs):
        frame[EVENT_SEQ] = pd.array(seqs, dtype="Int64")
        frame = frame.sort_values(EVENT_SEQ, kind="stable")
    return frame.drop_duplicates(subset=list(job.upsert_key), keep="last")


def _json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return orjson.loads(frame.to_json(orient="records", date_format="iso"))


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str)


def _reply_headers(m: Message) -> dict[str, str]:
    return {CORRELATION_ID: m.headers.get(CORRELATION_ID, "")}


# --- the loop -------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, job: StreamJob, broker: Broker | None = None) -> None:
        self.job = job
        self.holder = ModelHolder(job.store, job.model, job.reload_interval)
        self.broker = broker
        self.sink: Sink | None = None
        self.stopping = threading.Event()
        self._closed = threading.Event()
        self.counts = {"consumed": 0, "predicted": 0, "stored": 0, "replied": 0, "dead_lettered": 0}

    def stop(self, *_: Any) -> None:
        if not self.stopping.is_set():
            log.info("stopping: finishing the current batch")
        self.stopping.set()

    def run(self) -> dict[str, int]:
        """Consume until stopped (SIGTERM/SIGINT, or `stop_after_idle`); returns the message counts."""
        job = self.job
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.broker = self.broker or open_broker(job.broker)  # its URI options are refused before the model loads
        try:
            model = self.holder.load()
            # Long-lived objects (model, libraries) leave the collector's view: full collections were the p99 of
            # the service (docs/benchmarks.md) and would be a worker's too.
            gc.freeze()
            self.broker.subscribe(job.topic, job.group)
            self.broker.ensure_topic(job.dlq or "", retain=True)
            if job.metrics_port:
                metrics.serve(job.metrics_port)
            if job.sink:
                columns = stored_columns(model, job, self.broker.sequenced)
                sink = self._retry(
                    "sink",
                    lambda: open_sink(
                        job.sink or "", key=job.upsert_key, table=job.table, order=EVENT_SEQ, columns=columns
                    ),
                )
                if isinstance(sink, _Stopped):
                    return dict(self.counts)
                self.sink = sink
            log.info(
                "%s on %s topic %r, group %r: %s", model.ref, job.broker, job.topic, job.group,
                f"events stored in {job.sink}, requests answered" if job.sink else "requests answered, no --sink",
            )  # fmt: skip
            self._keep(self.broker)
            self._loop()
        finally:
            self.close()
        return dict(self.counts)

    def _keep(self, broker: Broker) -> None:
        """Call the broker's keepalive from a thread: a batch held long (a slow model, a sink outage) stays ours."""
        interval = broker.keepalive_interval
        if not interval:
            return

        def keep() -> None:
            while not self._closed.wait(interval):
                try:
                    broker.keepalive()
                except Exception as exc:  # the next beat retries; the loop must not die
                    log.warning("keepalive failed: %s", _first_line(exc))

        threading.Thread(target=keep, name="conveyor-keepalive", daemon=True).start()

    def _loop(self) -> None:
        job, broker = self.job, self.broker
        assert broker is not None
        next_reload = next_lag = idle_since = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if self.holder.follows_alias and now >= next_reload:
                self.holder.refresh()
                next_reload = now + job.reload_interval
            if now >= next_lag:
                lag = broker.lag()
                if lag is not None:
                    metrics.LAG.labels(job.topic).set(lag)
                next_lag = now + 5.0
            batch = self._retry("consume", lambda: broker.consume(job.batch, job.poll_timeout))
            if isinstance(batch, _Stopped):
                return
            if not batch:
                if job.stop_after_idle is not None and now - idle_since >= job.stop_after_idle:
                    return
                continue
            idle_since = time.monotonic()
            if not self.handle(batch):
                return
            if job.max_messages is not None and self.counts["consumed"] >= job.max_messages:
                return

    def handle(self, batch: list[Message]) -> bool:
        """Process, deliver and ack one batch; False if stopped before it was delivered (it will be replayed)."""
        started = time.perf_counter()
        model = self.holder.model
        assert model is not None
        outcome = process(batch, model, self.job)
        if self._retry("deliver", lambda: self.deliver(outcome)) is STOPPED:
            log.warning("stopped before %d messages were delivered; they will be consumed again", len(batch))
            return False
        counts = {
            "consumed": len(batch),
            "predicted": outcome.predicted,
            "stored": outcome.stored,
            "replied": outcome.replied,
            "dead_lettered": outcome.dead_lettered,
        }
        acked = self._retry("ack", lambda: self.broker.ack(batch))
        for name, n in counts.items():
            self.counts[name] += n
            metrics.MESSAGES.labels(self.job.topic, name).inc(n)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return not isinstance(acked, _Stopped)

    def deliver(self, outcome: Outcome) -> None:
        """Store, dead-letter, then reply (a caller told its request was refused finds the dead letter already
        there); each step is idempotent, so a retry may repeat any of them."""
        assert self.broker is not None
        if outcome.rows is not None and len(outcome.rows):
            refused = self._store(outcome.rows, outcome)
            outcome.stored -= len(refused)
            outcome.dead.extend(refused)
            outcome.rows = None  # stored: a retry of a later step must not store again
        if outcome.dead:
            self._dead_letter(outcome.dead)
            outcome.dead_lettered += len(outcome.dead)
            outcome.dead = []
        for topic, replies in list(outcome.replies.items()):
            self.broker.publish(topic, [v for v, _ in replies], headers=[h for _, h in replies])
            del outcome.replies[topic]

    def _store(self, rows: pd.DataFrame, outcome: Outcome) -> list[DeadLetter]:
        """Upsert the rows; rows the sink refuses for good (not a connection problem) are isolated and returned."""
        assert self.sink is not None
        try:
            self.sink.write_frame(rows)
            return []
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(rows) == 1:
                ids = set(rows[EVENT_ID])
                return [
                    DeadLetter(m, "sink_refused", f"the sink refused the prediction: {_first_line(exc)}")
                    for m in outcome.messages
                    if m.id in ids
                ]
        mid = len(rows) // 2
        return self._store(rows.iloc[:mid], outcome) + self._store(rows.iloc[mid:], outcome)

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        assert self.broker is not None
        for d in dead:
            log.warning("dead-lettered %s: %s", d.message.id, d.reason)
        self.broker.publish(
            self.job.dlq or "",
            [d.message.value for d in dead],
            keys=[d.message.key for d in dead],
            headers=[
                {
                    **d.message.headers,
                    "error": d.reason,
                    "error_kind": d.kind,
                    "source_topic": self.job.topic,
                    "source_id": d.message.id,
                    "model": self.job.model,
                }
                for d in dead
            ],
        )

    def _retry(self, stage: str, action: Callable[[], T]) -> T | _Stopped:
        """Run `action` until it succeeds, backing off on passing failures; STOPPED if stopped meanwhile."""
        delay = 0.1
        while True:
            try:
                return action()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                metrics.RETRIES.labels(stage).inc()
                log.warning("%s failed (%s); retrying in %.1fs", stage, _first_line(exc), delay)
            if self.stopping.is_set():  # what is not acked yet is consumed again by the next worker
                return STOPPED
            until = time.monotonic() + delay * random.uniform(0.8, 1.2)
            while not self.stopping.is_set() and (left := until - time.monotonic()) > 0:
                try:
                    if self.broker is None:
                        self.stopping.wait(left)
                    else:
                        self.broker.idle(min(left, 0.5))  # short slices: SIGTERM is honoured within half a second
                except BrokerError as exc:
                    log.warning("waiting to retry: %s", _first_line(exc))
                    self.stopping.wait(min(left, 0.5))
            delay = min(delay * 2, self.job.max_backoff)

    def close(self) -> None:
        self._closed.set()
        if self.sink is not None:
            self.sink.close()
        if self.broker is not None:
            self.broker.close()


def is_transient(exc: BaseException) -> bool:
    """Connection-level failures worth retrying, as opposed to a refusal that would repeat forever."""
    if isinstance(exc, BrokerError | ConnectionError | TimeoutError):
        return True
    try:
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
            return True
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
    except ImportError:  # pragma: no cover - sqlalchemy is a core dependency
        pass
    try:
        import redis

        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
            return True
    except ImportError:
        pass
    if isinstance(exc, ConveyorError):
        # A sink's one-line error keeps the library's as its cause: a lost connection stays worth retrying.
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    return isinstance(exc, OSError)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"

"""Apache Kafka through confluent-kafka (librdkafka): batched consume, offsets committed after delivery.

`kafka://host:port[,host:port][?key=value&...]`: the hosts become `bootstrap.servers` and every query parameter
(and keyword option) is passed through as librdkafka configuration, e.g. `security.protocol=SASL_SSL`.

At-least-once: consuming stores no offset; `ack` stores the delivered ones and commits them at once, without
waiting (a synchronous commit blocks the whole client, uninterruptibly, for as long as the group coordinator
does not answer). librdkafka also commits what `ack` stored when a partition is revoked and on close, so only
messages never acked are replayed. Replies are read with `listen`: an assignment at the end, no group.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import InvalidInput, require
from conveyor.stream.broker import Broker, BrokerError, Message

log = logging.getLogger("conveyor.stream")

METADATA_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0
WARN_EVERY = 60.0  # seconds between repeats of one warning (an unknown topic is reported on every poll)


class KafkaBroker(Broker):
    def __init__(self, uri: str, **options: Any) -> None:
        self.ck = require("confluent_kafka", "kafka")
        self.uri = uri
        parts = urllib.parse.urlsplit(uri)
        if not parts.netloc:
            raise InvalidInput(f"kafka URI {uri!r} names no broker: use kafka://host:port[,host:port]")
        self.config: dict[str, Any] = {
            "bootstrap.servers": parts.netloc,
            # Per process, so the broker's logs and the group's members tell workers apart. Membership itself
            # is dynamic (the coordinator's member ids): no group.instance.id, which would have to be unique per
            # worker, since two members with one instance id fence each other.
            "client.id": f"conveyor-{socket.gethostname()}-{os.getpid()}",
            **dict(urllib.parse.parse_qsl(parts.query)),
            **options,
        }
        self._consumer: Any = None
        self._producer: Any = None
        self._admin: Any = None
        self._listening = False
        self._fatal: dict[str, Any] = {}  # a fatal KafkaError per client ("consumer", "producer"): unusable
        self._commit_error: Any = None  # the last commit's failure, until a later commit succeeds
        self._warned: dict[str, float] = {}
        # Publishing waits for every delivery report; librdkafka's default message timeout is 5 minutes.
        timeout_ms = self.config.get("delivery.timeout.ms", self.config.get("message.timeout.ms", 30_000))
        self._delivery_timeout = int(timeout_ms) / 1000

    # --- clients --------------------------------------------------------------------------------------------

    def _conf(self, role: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """Our defaults, overridden by the URI and the options; librdkafka logs and errors go to our logger."""

        def on_error(err: Any) -> None:
            # Connection problems are logged by librdkafka itself and retried; only a fatal error needs action.
            if err.fatal():
                log.error("kafka: fatal %s error: %s", role, err.str())
                self._fatal[role] = err
            else:
                log.debug("kafka: %s: %s", role, err.str())

        return {**defaults, **self.config, "logger": log, "error_cb": on_error}

    def _new_consumer(self, group: str, commits: bool) -> Any:
        self._close_consumer()
        self._fatal.pop("consumer", None)
        self._commit_error = None
        conf = self._conf(
            "consumer",
            {
                "group.id": group,
                "enable.auto.commit": commits,  # commits what `ack` stored: periodically, on revoke, on close
                "auto.commit.interval.ms": 1000,
                "auto.offset.reset": "earliest",  # a new group loses nothing published before it started
                "on_commit": self._on_commit,
            },
        )
        conf["enable.auto.offset.store"] = False  # never overridden: only `ack` may mark a message done
        self._consumer = self.ck.Consumer(conf)
        return self._consumer

    def _need_consumer(self) -> Any:
        if self._consumer is None:
            raise RuntimeError("KafkaBroker: call subscribe() or listen() first")
        return self._consumer

    def _admin_client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            # No auto-creation: a metadata request for a missing topic would create it with default settings.
            self._admin = AdminClient({**self.config, "allow.auto.create.topics": False, "logger": log})
        return self._admin

    def _new_producer(self) -> Any:
        defaults = {
            "enable.idempotence": True,  # retries neither duplicate nor reorder within a partition
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # the Java client's: one key lands on one partition whoever produces
            "message.timeout.ms": 30_000,
        }
        try:
            return self.ck.Producer(self._conf("producer", {**defaults, "compression.type": "lz4"}))
        except self.ck.KafkaException:  # a librdkafka built without lz4
            return self.ck.Producer(self._conf("producer", {**defaults, "compression.type": "none"}))

    # --- consuming ------------------------------------------------------------------------------------------

    def subscribe(self, topic: str, group: str) -> None:
        self.ensure_topic(topic)
        self._listening = False
        try:
            self._new_consumer(group, commits=True).subscribe([topic])
        except self.ck.KafkaException as exc:
            raise BrokerError(f"kafka: cannot subscribe to {topic!r}: {_reason(exc)}") from exc

    def listen(self, topic: str) -> None:
        """Assign every partition at its high watermark, queried now: a reply produced after this returns is seen.

        librdkafka needs a group.id even without a group: a unique one, never joined and never committed to.
        """
        self.ensure_topic(topic)
        consumer = self._new_consumer(f"conveyor-listen-{uuid.uuid4().hex}", commits=False)
        self._listening = True
        TopicPartition = self.ck.TopicPartition
        try:
            partitions = consumer.list_topics(topic, timeout=METADATA_TIMEOUT).topics[topic].partitions
            if not partitions:
                raise BrokerError(f"kafka: topic {topic!r} has no partitions in the metadata")
            start = []
            for p in sorted(partitions):
                marks = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=METADATA_TIMEOUT)
                if marks is None:
                    raise BrokerError(f"kafka: no end offset for {topic}/{p} within {METADATA_TIMEOUT:.0f}s")
                start.append(TopicPartition(topic, p, marks[1]))
            consumer.assign(start)
        except self.ck.KafkaException as exc:
            raise BrokerError(f"kafka: cannot listen on {topic!r}: {_reason(exc)}") from exc

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """What is already fetched, else wait up to `timeout` for one message and take what came with it."""
        consumer = self._need_consumer()
        try:
            raw = consumer.consume(max_messages, 0)
            if not raw:
                first = consumer.poll(timeout)
                if first is not None:
                    raw = [first, *(consumer.consume(max_messages - 1, 0) if max_messages > 1 else [])]
        except self.ck.KafkaException as exc:
            raise BrokerError(f"kafka: cannot consume: {_reason(exc)}") from exc
        if "consumer" in self._fatal:
            raise BrokerError(f"kafka: consumer failed: {self._fatal['consumer'].str()}")
        out = []
        for m in raw or ():
            err = m.error()
            if err is not None:
                if err.code() == self.ck.KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise BrokerError(f"kafka: consumer failed: {err.str()}")
                self._warn(f"kafka: {m.topic() or 'consumer'}: {err.str()}")
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            headers = m.headers()
            out.append(
                Message(
                    m.value() or b"",  # a tombstone (null value) reads as empty
                    m.key(),
                    {k: (v or b"").decode("utf-8", "replace") for k, v in headers} if headers else {},
                    id=f"{topic}/{partition}/{offset}",
                    handle=(topic, partition, offset),
                )
            )
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        """Store the next offset of each partition the messages came from, if it is still ours, and commit.

        A partition revoked since consume now belongs to another member, which replays these messages from the
        last commit (at-least-once). The commit's outcome arrives with a later consume or idle: a failure other
        than a rebalance is raised by the next `ack` (the worker then backs off), until a commit succeeds.
        """
        if self._listening or not messages:
            return
        consumer = self._need_consumer()
        ends: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = m.handle
            ends[topic, partition] = max(ends.get((topic, partition), -1), offset + 1)
        try:
            owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            revoked = sorted(k for k in ends if k not in owned)
            if revoked:
                log.info("kafka: not committing revoked partition(s) %s: their new owner replays them", revoked)
            offsets = [self.ck.TopicPartition(t, p, o) for (t, p), o in ends.items() if (t, p) in owned]
            if offsets:
                consumer.store_offsets(offsets=offsets)
                consumer.commit(asynchronous=True)  # the stored offsets, now rather than at the next interval
        except self.ck.KafkaException as exc:
            err = exc.args[0]
            if err.code() in (*self._rebalance_errors(), self.ck.KafkaError._STATE):  # _STATE: revoked meanwhile
                log.warning(
                    "kafka: offsets not stored during a rebalance (%s): replayed by their next owner", err.str()
                )
                return
            raise BrokerError(f"kafka: cannot store offsets: {err.str()}") from exc
        if self._commit_error is not None:
            raise BrokerError(f"kafka: offsets not committed: {self._commit_error.str()}")

    def _on_commit(self, err: Any, partitions: Sequence[Any]) -> None:
        """The outcome of a commit (ours or librdkafka's), served by consume, idle and close."""
        errors = [err] if err is not None else [tp.error for tp in partitions or () if tp.error is not None]
        errors = [e for e in errors if e.code() != self.ck.KafkaError._NO_OFFSET]  # nothing new to commit
        if not errors:
            self._commit_error = None
        elif all(e.code() in self._rebalance_errors() for e in errors):
            log.warning("kafka: commit refused during a rebalance (%s): replayed by the next owner", errors[0].str())
        else:
            self._warn(f"kafka: commit failed: {errors[0].str()}")
            self._commit_error = errors[0]

    def _rebalance_errors(self) -> set[int]:
        e = self.ck.KafkaError
        return {
            e.REBALANCE_IN_PROGRESS,
            e.ILLEGAL_GENERATION,
            e.UNKNOWN_MEMBER_ID,
            e.STALE_MEMBER_EPOCH,
            e.FENCED_MEMBER_EPOCH,
            e._ASSIGNMENT_LOST,
        }

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(text, -WARN_EVERY) >= WARN_EVERY:
            self._warned[text] = now
            log.warning("%s", text)

    def idle(self, seconds: float) -> None:
        """Poll with the assignment paused, so the group keeps this member (max.poll.interval.ms) yet nothing
        is fetched. A message returned anyway (a partition assigned meanwhile, not paused) is not lost: its
        partition is rewound to it, or a later commit would skip it."""
        consumer = self._consumer
        if consumer is None:
            time.sleep(seconds)
            return
        try:
            consumer.pause(consumer.assignment())
            raw = consumer.consume(1, seconds)
            first: dict[tuple[str, int], int] = {}
            for m in raw:
                if m.error() is None:
                    key = (m.topic(), m.partition())
                    first[key] = min(first.get(key, m.offset()), m.offset())
            for (topic, partition), offset in first.items():
                log.info("kafka: rewinding %s/%s to %s, fetched while idle", topic, partition, offset)
                consumer.seek(self.ck.TopicPartition(topic, partition, offset))
            consumer.resume(consumer.assignment())
        except self.ck.KafkaException as exc:
            raise BrokerError(f"kafka: cannot pause the consumer: {_reason(exc)}") from exc

    def lag(self) -> int | None:
        """Sum of high watermark - position over the assignment; cached watermarks, so usually no round trip."""
        consumer = self._consumer
        if consumer is None:
            return None
        try:
            positions = consumer.position(consumer.assignment())
            if not positions:
                return None
            unknown = [tp for tp in positions if tp.offset < 0]
            committed = {}
            if unknown and not self._listening:
                committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(unknown, timeout=5)}
            total = 0
            for tp in positions:
                position = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0 or position < 0:
                    marks = consumer.get_watermark_offsets(tp, timeout=5)
                    if marks is None:
                        return None
                    low, high = marks
                total += max(0, high - (position if position >= 0 else low))
            return total
        except (self.ck.KafkaException, RuntimeError):
            return None

    # --- publishing -----------------------------------------------------------------------------------------

    def publish(
        self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> None:  # fmt: skip
        """Produce the batch, flush, and check every delivery report: returns once the broker has it all."""
        if not values:
            return
        if self._producer is None:
            self._producer = self._new_producer()
        producer = self._producer
        failures: list[Any] = []
        delivered = [0]

        def report(err: Any, _msg: Any) -> None:  # one closure per batch: a late report cannot touch another
            if err is None:
                delivered[0] += 1
            else:
                failures.append(err)

        produce, poll = producer.produce, producer.poll
        try:
            for i, value in enumerate(values):
                key = keys[i] if keys is not None else None
                fields = headers[i] if headers is not None else None
                pairs = [(k, v.encode()) for k, v in fields.items()] if fields else None
                while True:
                    try:
                        produce(topic, value, key, on_delivery=report, headers=pairs)
                        break
                    except BufferError:  # the local queue is full: let deliveries drain it
                        poll(0.05)
            left = producer.flush(self._delivery_timeout + 5)
        except self.ck.KafkaException as exc:
            failures.insert(0, exc.args[0])
            left = 0
        fatal = self._fatal.pop("producer", None)
        if fatal is not None:  # e.g. the idempotent producer lost its sequence: the next publish starts a new one
            failures.insert(0, fatal)
            self._producer = None
        if failures:
            raise BrokerError(
                f"kafka: {len(values) - delivered[0]} of {len(values)} messages to {topic!r} not delivered: "
                f"{failures[0].str()}"
            )
        if left or delivered[0] != len(values):
            raise BrokerError(
                f"kafka: {len(values) - delivered[0]} of {len(values)} messages to {topic!r} not acknowledged "
                f"within {self._delivery_timeout + 5:.0f}s"
            )

    # --- topics and shutdown --------------------------------------------------------------------------------

    def ensure_topic(
        self, topic: str, partitions: int = -1, replication: int = -1, timeout: float = 30.0, **options: Any
    ) -> None:
        """Create `topic` if missing (-1: the broker's num.partitions / default.replication.factor), and wait
        until its metadata shows every partition with a leader, so it can be assigned and produced to.

        `retain` needs nothing here: Kafka keeps messages for the topic's retention whether or not anyone reads.
        """
        from confluent_kafka.admin import NewTopic

        admin = self._admin_client()
        try:
            if self._topic_ready(topic):
                return
            future = admin.create_topics([NewTopic(topic, partitions, replication)], operation_timeout=timeout)
            try:
                future[topic].result(timeout)
                log.info("kafka: created topic %r", topic)
            except self.ck.KafkaException as exc:
                if exc.args[0].code() != self.ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            deadline = time.monotonic() + timeout
            while not self._topic_ready(topic):
                if time.monotonic() > deadline:
                    raise BrokerError(f"kafka: topic {topic!r} not ready {timeout:.0f}s after its creation")
                time.sleep(0.1)
        except self.ck.KafkaException as exc:
            raise BrokerError(f"kafka: cannot create topic {topic!r}: {_reason(exc)}") from exc

    def _topic_ready(self, topic: str) -> bool:
        admin = self._admin_client()
        admin.poll(0)  # serves its queued log lines
        found = admin.list_topics(topic, timeout=METADATA_TIMEOUT).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return False
        return all(p.leader >= 0 for p in found.partitions.values())

    def _close_consumer(self) -> None:
        """Commit what `ack` stored and leave the group now (not after session.timeout.ms). librdkafka may wait
        forever for an unresponsive coordinator here, so the close runs in a thread given CLOSE_TIMEOUT."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return

        def close() -> None:
            try:
                consumer.close()
            except (self.ck.KafkaException, RuntimeError) as exc:
                log.warning("kafka: closing the consumer: %s", _reason(exc))

        closing = threading.Thread(target=close, name="conveyor-kafka-close", daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT)
        if closing.is_alive():
            log.warning("kafka: the consumer did not close within %.0fs; abandoning it", CLOSE_TIMEOUT)

    def close(self) -> None:
        self._close_consumer()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            left = producer.flush(5)
            if left:
                log.warning("kafka: %d produced messages still undelivered at close", left)
        self._admin = None


def _reason(exc: BaseException) -> str:
    """The one-line text of a KafkaException (its KafkaError) or any other exception."""
    err = exc.args[0] if exc.args else None
    return err.str() if hasattr(err, "str") else str(exc)

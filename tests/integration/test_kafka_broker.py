"""The Kafka adapter against a real Kafka 4 (KRaft) node: batches, at-least-once commits, replies, idling, lag."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.stream.broker import BrokerError, Message, open_broker

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.fixture
def uri(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def brokers(uri: str) -> Iterator[list]:
    """Brokers a test opens, closed after it whatever happens."""
    opened: list = []
    yield opened
    for b in opened:
        b.close()


def drain(broker, count: int, batch: int = 1000, deadline: float = 30.0) -> list[Message]:
    """Consume until `count` messages arrived (more would fail the test's own checks), within `deadline` s."""
    got: list[Message] = []
    until = time.monotonic() + deadline
    while len(got) < count and time.monotonic() < until:
        got += broker.consume(batch, 0.5)
    assert len(got) >= count, f"only {len(got)} of {count} messages within {deadline}s"
    return got


def test_batches_keep_values_keys_headers_and_unique_ids(uri, topic, brokers):
    producer, consumer = open_broker(uri), open_broker(uri)
    brokers += [producer, consumer]
    producer.ensure_topic(topic, partitions=3)
    n = 5000
    producer.publish(
        topic,
        [f"v{i}".encode() for i in range(n)],
        keys=[f"k{i % 50}".encode() for i in range(n)],
        headers=[{"i": str(i), "reply_to": "replies", "note": "é"} for i in range(n)],
    )
    consumer.subscribe(topic, f"g-{topic}")
    got = drain(consumer, n, batch=700)
    assert len(got) == n
    assert len({m.id for m in got}) == n
    partitions_by_key: dict[bytes | None, set[int]] = {}
    for m in got:
        i = int(m.headers["i"])
        assert m.value == f"v{i}".encode()
        assert m.key == f"k{i % 50}".encode()
        assert m.headers == {"i": str(i), "reply_to": "replies", "note": "é"}
        t, partition, offset = m.handle
        assert t == topic and m.id == f"{topic}/{partition}/{offset}"
        partitions_by_key.setdefault(m.key, set()).add(partition)
    assert {p for ps in partitions_by_key.values() for p in ps} == {0, 1, 2}
    assert all(len(ps) == 1 for ps in partitions_by_key.values()), "one key, one partition"
    # Per partition, offsets arrive in order and without gaps.
    for p in range(3):
        offsets = [m.handle[2] for m in got if m.handle[1] == p]
        assert offsets == list(range(len(offsets)))
    consumer.ack(got)
    assert consumer.consume(100, 0.5) == []


def test_unacked_messages_are_redelivered_to_the_group(uri, topic, brokers):
    producer, first = open_broker(uri), open_broker(uri)
    brokers += [producer, first]
    producer.ensure_topic(topic, partitions=3)
    producer.publish(topic, [b"x"] * 300, keys=[str(i).encode() for i in range(300)])
    group = f"g-{topic}"
    first.subscribe(topic, group)
    got = drain(first, 300)
    firsts = {}
    for m in got:
        firsts.setdefault(m.handle[1], m)
    assert len(firsts) == 3
    first.ack(list(firsts.values()))  # commits offset 1 on each partition, nothing more
    from confluent_kafka import TopicPartition

    until = time.monotonic() + 5  # committed at once, not only at close
    while time.monotonic() < until:
        first.consume(100, 0.1)  # serves the commit's outcome; nothing new arrives
        committed = first._consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=5)
        if [tp.offset for tp in committed] == [1, 1, 1]:
            break
    assert [tp.offset for tp in committed] == [1, 1, 1]
    first.close()

    second = open_broker(uri)
    brokers.append(second)
    second.subscribe(topic, group)
    again = drain(second, 297)
    assert sorted(m.id for m in again) == sorted(m.id for m in got if m not in firsts.values())
    assert second.consume(100, 1.0) == []


def test_listen_starts_at_the_end_and_misses_nothing_after(uri, topic, brokers):
    producer, client = open_broker(uri), open_broker(uri)
    brokers += [producer, client]
    producer.ensure_topic(topic, partitions=3)
    producer.publish(topic, [b"before"] * 30, keys=[str(i).encode() for i in range(30)])
    client.listen(topic)
    producer.publish(topic, [b"after"] * 30, keys=[str(i).encode() for i in range(30)])  # right after: not missed
    got = drain(client, 30, deadline=15)
    assert {m.value for m in got} == {b"after"} and len({m.id for m in got}) == 30
    client.ack(got)  # a no-op: there is no group to commit to
    assert client.consume(100, 0.5) == []


def test_listen_creates_a_missing_reply_topic(uri, topic, brokers):
    producer, client = open_broker(uri), open_broker(uri)
    brokers += [producer, client]
    client.listen(topic)
    producer.publish(topic, [b"reply"], headers=[{"correlation_id": "c1"}])
    (reply,) = drain(client, 1, deadline=15)
    assert reply.value == b"reply" and reply.headers == {"correlation_id": "c1"}


def test_publish_to_an_unreachable_broker_fails_fast():
    broker = open_broker("kafka://127.0.0.1:1", **{"message.timeout.ms": 1500})
    try:
        started = time.monotonic()
        with pytest.raises(BrokerError, match="not delivered"):
            broker.publish("nowhere", [b"x", b"y"])
        assert time.monotonic() - started < 10
    finally:
        broker.close()


def test_idle_keeps_the_member_and_skips_nothing(uri, topic, brokers):
    """A worker retrying a delivery for longer than max.poll.interval.ms stays in its group, and the messages
    published meanwhile are all consumed afterwards."""
    producer = open_broker(uri)
    # The broker's minimum session timeout; max.poll.interval.ms must not be below it.
    consumer = open_broker(uri, **{"session.timeout.ms": 6000, "max.poll.interval.ms": 6000})
    brokers += [producer, consumer]
    producer.ensure_topic(topic, partitions=3)
    producer.publish(topic, [f"a{i}".encode() for i in range(300)], keys=[str(i).encode() for i in range(300)])
    consumer.subscribe(topic, f"g-{topic}")
    held = drain(consumer, 1, batch=50)  # the batch whose delivery "fails"
    member = consumer._consumer.memberid()
    until = time.monotonic() + 7  # > max.poll.interval.ms: without polling, the member would be evicted
    i = 0
    while time.monotonic() < until:
        consumer.idle(0.5)
        producer.publish(topic, [f"b{i}".encode()], keys=[str(i).encode()])
        i += 1
    assert consumer._consumer.memberid() == member, "idle() let the group evict the member"
    rest = drain(consumer, 300 + i - len(held))
    ids = [m.id for m in held + rest]
    assert len(ids) == len(set(ids)) == 300 + i
    consumer.ack(held + rest)
    assert consumer.lag() == 0


def test_idle_rewinds_a_partition_it_fetched_from(uri, topic, brokers):
    """A partition assigned during a rebalance is not paused; what idle() fetches from it must come back."""
    producer, consumer = open_broker(uri), open_broker(uri)
    brokers += [producer, consumer]
    producer.publish(topic, [f"m{i}".encode() for i in range(100)])
    consumer.subscribe(topic, f"g-{topic}")
    held = drain(consumer, 1, batch=10)

    class Unpausable:  # stands in for a partition newly assigned, hence not paused, during idle()
        def __init__(self, inner):
            self.inner, self.fetched = inner, []

        def pause(self, partitions):
            pass

        def consume(self, *args):
            self.fetched += self.inner.consume(*args)
            return self.fetched

        def __getattr__(self, name):
            return getattr(self.inner, name)

    unpausable = consumer._consumer = Unpausable(consumer._consumer)
    consumer.idle(1.0)  # fetches a message from the "unpaused" partition, and must rewind to it
    consumer._consumer = unpausable.inner
    assert [m.value() for m in unpausable.fetched] == [f"m{len(held)}".encode()]
    rest = drain(consumer, 100 - len(held), batch=100)
    assert [m.value for m in held + rest] == [f"m{i}".encode() for i in range(100)]


def test_lag_counts_unconsumed_messages(uri, topic, brokers):
    producer, consumer = open_broker(uri), open_broker(uri)
    brokers += [producer, consumer]
    producer.ensure_topic(topic, partitions=3)
    assert consumer.lag() is None  # nothing assigned
    producer.publish(topic, [b"x"] * 90, keys=[str(i).encode() for i in range(90)])
    consumer.subscribe(topic, f"g-{topic}")
    first = drain(consumer, 1, batch=5)
    assert consumer.lag() == 90 - len(first)
    rest = drain(consumer, 90 - len(first))
    consumer.ack(first + rest)
    assert consumer.lag() == 0
    producer.publish(topic, [b"y"] * 10, keys=[str(i).encode() for i in range(10)])
    until = time.monotonic() + 10
    while consumer.lag() != 10 and time.monotonic() < until:  # watermarks arrive with the next fetch responses
        time.sleep(0.1)
    assert consumer.lag() == 10


def test_a_rebalance_loses_nothing_and_leaves_nothing_uncommitted(uri, topic, brokers):
    producer, a, b = open_broker(uri), open_broker(uri), open_broker(uri)
    brokers += [producer, a, b]
    producer.ensure_topic(topic, partitions=3)
    n = 3000
    producer.publish(topic, [str(i).encode() for i in range(n)], keys=[str(i).encode() for i in range(n)])
    group = f"g-{topic}"
    a.subscribe(topic, group)
    seen = {m.id for m in drain(a, 1, batch=200)}  # consumed, never acked: replayed or covered by later commits
    b.subscribe(topic, group)  # joins: some partitions move from a to b
    until = time.monotonic() + 30
    while len(seen) < n and time.monotonic() < until:
        for member in (a, b):
            batch = member.consume(200, 0.2)
            member.ack(batch)
            seen |= {m.id for m in batch}
    assert len(seen) == n
    a.close()
    b.close()
    late = open_broker(uri)
    brokers.append(late)
    late.subscribe(topic, group)
    assert late.consume(1000, 3.0) == [], "everything delivered was committed"
    assert len(late._consumer.assignment()) == 3


def test_a_failed_commit_is_raised_by_the_next_ack_until_one_succeeds(uri, topic, brokers):
    from confluent_kafka import KafkaError

    producer, consumer = open_broker(uri), open_broker(uri)
    brokers += [producer, consumer]
    producer.publish(topic, [b"x"] * 10)
    consumer.subscribe(topic, f"g-{topic}")
    got = drain(consumer, 10)
    consumer._on_commit(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE), [])  # as librdkafka reports one
    with pytest.raises(BrokerError, match="not committed"):
        consumer.ack(got)  # stores and commits again, but says the last commit failed: the worker backs off
    until = time.monotonic() + 5
    while consumer._commit_error is not None and time.monotonic() < until:
        consumer.idle(0.1)  # what the worker does while backing off: serves the new commit's outcome
    consumer.ack(got)

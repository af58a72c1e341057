"""The Pub/Sub adapter against Google's pstest server: what the worker relies on beyond consume and publish."""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor.errors import InvalidInput
from conveyor.stream.pubsub import PubSubBroker

pytestmark = [pytest.mark.integration, pytest.mark.pubsub]


@pytest.fixture
def uri(pubsub_emulator) -> str:
    return f"pubsub://conveyor-test?emulator={pubsub_emulator}"


def test_a_batch_held_while_retrying_is_not_handed_to_another_consumer(uri):
    topic = f"held-{uuid.uuid4().hex[:8]}"
    worker, other = PubSubBroker(uri, ack_deadline=10), PubSubBroker(uri, ack_deadline=10)
    try:
        worker.subscribe(topic, f"{topic}-g")
        other.subscribe(topic, f"{topic}-g")
        worker.publish(topic, [b'{"n": 1}', b'{"n": 2}'])
        held = []
        deadline = time.monotonic() + 10
        while len(held) < 2 and time.monotonic() < deadline:
            held += worker.consume(10, 1.0)
        assert len(held) == 2
        until = time.monotonic() + 14  # past the 10 s deadline: only the extensions keep the messages ours
        while time.monotonic() < until:
            worker.idle(0.5)
        assert other.consume(10, 1.0) == []
        worker.ack(held)
    finally:
        worker.close()
        other.close()


def test_a_subscription_name_taken_on_another_topic_is_refused(uri):
    first, second = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    broker = PubSubBroker(uri)
    try:
        broker.subscribe(first, f"{first}-shared")
        with pytest.raises(InvalidInput, match=r"already exists on .*pick another --group"):
            broker.subscribe(second, f"{first}-shared")
    finally:
        broker.close()

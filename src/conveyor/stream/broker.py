"""The broker contract every stream adapter implements, and `open_broker`, which picks one from a URI.

A worker consumes a batch, publishes what it must (replies, dead letters), and only then acks: the adapters
make `consume` cheap for batches (one network round trip, not one per message) and `ack` idempotent.
"""

from __future__ import annotations

import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import ConveyorError, InvalidInput

# Header / attribute / field names of the request-reply protocol (active mode).
REPLY_TO = "reply_to"
CORRELATION_ID = "correlation_id"


class BrokerError(ConveyorError):
    """The broker could not be reached or refused an operation; the worker retries with backoff."""

    exit_code = 6
    kind = "broker_error"


@dataclass
class Message:
    """One consumed message: payload bytes, optional key, string headers, and the adapter's ack handle."""

    value: bytes
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    id: str = ""  # unique and stable per message across redeliveries: topic/partition/offset, stream id, ...
    handle: Any = None
    # Where consumers of one group may handle a key's messages out of order (Redis Streams), a number that grows
    # with the broker's order: the sink keeps each key's highest. None where the broker keeps a key in order.
    seq: int | None = None


class Broker(ABC):
    """Kafka, Pub/Sub or Redis Streams behind one small interface (see DESIGN.md, "Broker")."""

    uri: str = ""
    sequenced = False  # its messages carry `seq`, stored as event_seq so that a late older event never wins

    @abstractmethod
    def subscribe(self, topic: str, group: str) -> None:
        """Join consumer group `group` on `topic` (created if missing where the broker allows it)."""

    @abstractmethod
    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` messages, waiting at most `timeout` seconds for the first."""

    @abstractmethod
    def ack(self, messages: Sequence[Message]) -> None:
        """Mark `messages` done, so the group never sees them again (Kafka stores and commits offsets without
        waiting for the coordinator; a failed commit is raised by a later `ack`, and only unacked messages replay)."""

    @abstractmethod
    def publish(
        self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> None:  # fmt: skip
        """Publish a batch and return once the broker has every message (raises BrokerError otherwise)."""

    @abstractmethod
    def listen(self, topic: str) -> None:
        """Read `topic` from now on without a consumer group: a client awaiting replies. `ack` is then a no-op.

        Must be positioned when it returns, so a reply published right after is not missed.
        """

    # Seconds between calls of `keepalive` while a worker runs; None: the broker needs none.
    keepalive_interval: float | None = None

    def keepalive(self) -> None:
        """Keep the messages the worker holds (consumed, not yet acked) its own, however long their batch takes.

        Called from another thread every `keepalive_interval` seconds: Redis resets their idle time (other
        consumers claim idle entries), Pub/Sub extends their ack deadline (or redelivers them elsewhere)."""
        return None

    def idle(self, seconds: float) -> None:
        """Wait while the worker retries a batch: fetch nothing more, but stay in the group (Kafka polls
        paused partitions, so the group does not evict the worker during a long database outage)."""
        time.sleep(seconds)

    def lag(self) -> int | None:
        """Messages of the group not yet consumed, where the broker says; None where it does not."""
        return None

    def ensure_topic(self, topic: str, **options: Any) -> None:
        """Create `topic` if missing where the broker needs it (Pub/Sub; Kafka with `partitions=N`).

        `retain=True` (the dead-letter topic) asks that what is published there be kept even if nobody
        reads it yet: a Pub/Sub topic without a subscription drops its messages."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Leave the group and release connections."""


def parse_uri(uri: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in SCHEMES:
        known = ", ".join(f"{s}://..." for s in SCHEMES)
        raise InvalidInput(f"unknown broker {uri!r}: use one of {known}")
    return parts


SCHEMES = {
    "kafka": "conveyor.stream.kafka:KafkaBroker",
    "pubsub": "conveyor.stream.pubsub:PubSubBroker",
    "redis": "conveyor.stream.redis:RedisBroker",
    "rediss": "conveyor.stream.redis:RedisBroker",
}


def open_broker(uri: str, **options: Any) -> Broker:
    """The adapter for `uri`: kafka://host:port[,host:port], pubsub://PROJECT, redis://host:port[/db]."""
    import importlib

    parts = parse_uri(uri)
    module, _, name = SCHEMES[parts.scheme].partition(":")
    return getattr(importlib.import_module(module), name)(uri, **options)

"""Google Pub/Sub: synchronous pull in batches from a subscription, acknowledge after the work is done.

As in the seed, producers publish to a topic (`sale-range`) and consumers read a subscription on it
(`predict-range`): `--topic` names the topic, `--group` the subscription, both created when missing.
Headers travel as message attributes; a key travels as the attribute `key` and as the ordering key, and
subscriptions are created with message ordering, so the events of one key arrive in the order published (the
latest event of a key is the one stored; without a key Pub/Sub promises no order). `pubsub://PROJECT?emulator=HOST:PORT`
(or PUBSUB_EMULATOR_HOST) points the client at an emulator. Needs `conveyor-ml[pubsub]`.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import InvalidInput, require
from conveyor.stream.broker import Broker, BrokerError, Message

log = logging.getLogger("conveyor.stream")

KEY = "key"
ATTRIBUTE_LIMIT = 1024  # bytes per attribute value, a Pub/Sub limit: long error texts are cut to fit
ACK_CHUNK = 1000


class PubSubBroker(Broker):
    def __init__(self, uri: str, ack_deadline: int = 60) -> None:
        parts = urllib.parse.urlsplit(uri)
        self.uri, self.project = uri, parts.netloc
        if not self.project:
            raise InvalidInput(f"{uri!r}: use pubsub://PROJECT (the Google Cloud project id)")
        emulator = urllib.parse.parse_qs(parts.query).get("emulator")
        if emulator:
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator[0]  # read by the client libraries when they connect
        pubsub = require("google.cloud.pubsub_v1", "pubsub")
        from google.api_core import exceptions

        self._exceptions = exceptions
        self.ack_deadline = ack_deadline
        settings = pubsub.types.BatchSettings(max_messages=1000, max_bytes=9_000_000, max_latency=0.005)
        ordering = pubsub.types.PublisherOptions(enable_message_ordering=True)
        self.publisher = pubsub.PublisherClient(batch_settings=settings, publisher_options=ordering)
        self.subscriber = pubsub.SubscriberClient()
        self.topic = ""
        self.subscription = ""
        self._temporary = False
        self._held: dict[str, None] = {}  # ack ids pulled and not yet acked: their deadline is extended in idle
        self._extended_at = 0.0

    def _topic_path(self, topic: str) -> str:
        return self.publisher.topic_path(self.project, topic)

    def ensure_topic(self, topic: str, **options: Any) -> None:
        """Create the topic if missing; `retain=True` also gives it a subscription of the same name, so what
        is published there (dead letters) is kept until someone reads it."""
        try:
            self.publisher.create_topic(request={"name": self._topic_path(topic)})
        except self._exceptions.AlreadyExists:
            pass
        except self._exceptions.GoogleAPICallError as exc:
            raise BrokerError(f"pubsub: cannot create topic {topic!r}: {exc}") from exc
        if options.get("retain"):
            self._create_subscription(topic, topic)

    def _create_subscription(self, topic: str, name: str) -> str:
        path = self.subscriber.subscription_path(self.project, name)
        try:
            self.subscriber.create_subscription(
                request={
                    "name": path,
                    "topic": self._topic_path(topic),
                    "ack_deadline_seconds": self.ack_deadline,
                    "enable_message_ordering": True,
                }
            )
        except self._exceptions.AlreadyExists:
            # Subscription names are per project, not per topic: one on another topic must not be read silently.
            existing = self.subscriber.get_subscription(request={"subscription": path}).topic
            if existing != self._topic_path(topic):
                raise InvalidInput(
                    f"pubsub: subscription {name!r} already exists on {existing}, not on topic {topic!r}: "
                    "pick another --group"
                ) from None
        except self._exceptions.GoogleAPICallError as exc:
            raise BrokerError(f"pubsub: cannot create subscription {name!r} on {topic!r}: {exc}") from exc
        return path

    def subscribe(self, topic: str, group: str) -> None:
        self.ensure_topic(topic)
        self.topic = topic
        self.subscription = self._create_subscription(topic, group)

    def listen(self, topic: str) -> None:
        # A new subscription receives what is published after it exists: exactly "from now on".
        self.ensure_topic(topic)
        self.topic = topic
        self.subscription = self._create_subscription(topic, f"{topic}-listen-{uuid.uuid4().hex[:12]}")
        self._temporary = True

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        try:
            response = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": max_messages},
                timeout=max(timeout, 1.0),
                retry=None,
            )
        except self._exceptions.DeadlineExceeded:
            return []
        except self._exceptions.GoogleAPICallError as exc:
            raise BrokerError(f"pubsub: cannot pull {self.subscription!r}: {exc}") from exc
        out = []
        for received in response.received_messages:
            m = received.message
            headers = dict(m.attributes)
            key = headers.pop(KEY, None)
            message_key = key.encode() if key is not None else None
            self._held[received.ack_id] = None
            out.append(Message(m.data, message_key, headers, id=f"{self.topic}/{m.message_id}", handle=received.ack_id))
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        ids = [m.handle for m in messages]
        for ack_id in ids:
            self._held.pop(ack_id, None)
        try:
            for start in range(0, len(ids), ACK_CHUNK):
                self.subscriber.acknowledge(
                    request={"subscription": self.subscription, "ack_ids": ids[start : start + ACK_CHUNK]}, retry=None
                )
        except self._exceptions.GoogleAPICallError as exc:
            raise BrokerError(f"pubsub: cannot acknowledge on {self.subscription!r}: {exc}") from exc

    def publish(
        self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> None:  # fmt: skip
        path = self._topic_path(topic)
        futures, ordering_keys = [], set()
        for i, value in enumerate(values):
            attributes = {k: _fit(v) for k, v in (headers[i] if headers is not None else {}).items() if v}
            ordering_key = ""
            if keys is not None and keys[i] is not None:
                ordering_key = attributes[KEY] = keys[i].decode("utf-8", "replace")
                ordering_keys.add(ordering_key)
            futures.append(self.publisher.publish(path, data=value, ordering_key=ordering_key, **attributes))
        try:
            for future in futures:
                future.result(timeout=60)
        except Exception as exc:  # the futures raise the API's errors or a timeout
            for ordering_key in ordering_keys:  # a failed key is paused by the client until resumed: the retry
                self.publisher.resume_publish(path, ordering_key)
            raise BrokerError(f"pubsub: cannot publish to {topic!r}: {exc}") from exc

    @property
    def keepalive_interval(self) -> float:
        return self.ack_deadline / 3

    def keepalive(self) -> None:
        """Keep the held messages ours: extend their ack deadline, or Pub/Sub would hand them to another consumer
        (duplicate work) and reject our late acks. Runs every third of the deadline, however slow the batch."""
        self._extend(0.0)

    def idle(self, seconds: float) -> None:
        """While the worker retries a batch, keep its messages ours (as `keepalive`; for brokers used alone)."""
        self._extend(self.ack_deadline / 2)
        time.sleep(seconds)

    def _extend(self, every: float) -> None:
        if self._held and time.monotonic() - self._extended_at >= every:
            ids = list(self._held)
            try:
                for start in range(0, len(ids), ACK_CHUNK):
                    self.subscriber.modify_ack_deadline(
                        request={
                            "subscription": self.subscription,
                            "ack_ids": ids[start : start + ACK_CHUNK],
                            "ack_deadline_seconds": self.ack_deadline,
                        },
                        retry=None,
                    )
                self._extended_at = time.monotonic()
            except self._exceptions.GoogleAPICallError as exc:
                log.warning("pubsub: could not extend the ack deadline of %d messages: %s", len(ids), exc)

    def close(self) -> None:
        if self._temporary and self.subscription:
            try:
                self.subscriber.delete_subscription(request={"subscription": self.subscription}, timeout=10)
            except self._exceptions.GoogleAPICallError:
                log.warning("could not delete the temporary subscription %s", self.subscription)
        self.subscriber.close()
        self.publisher.stop()


def _fit(value: str) -> str:
    data = value.encode()
    return value if len(data) <= ATTRIBUTE_LIMIT else data[: ATTRIBUTE_LIMIT - 3].decode(errors="ignore") + "..."

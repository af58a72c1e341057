"""Active predictions from the client's side: publish requests, await the replies the worker sends back.

Each request carries `reply_to` and a fresh `correlation_id`; the client listens on the reply topic from
before it publishes (never missing a fast reply) and keeps only the replies whose ids it is waiting for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from conveyor.errors import ConveyorError
from conveyor.stream.broker import CORRELATION_ID, REPLY_TO, Broker, open_broker


class ReplyTimeout(ConveyorError):
    exit_code = 7
    kind = "timeout"


def reply_topic_for(topic: str) -> str:
    return f"{topic}.replies"


class RequestClient:
    """`request(record)` → the worker's reply; `send` and `receive` for many requests in flight."""

    def __init__(self, broker: str, topic: str, reply_topic: str | None = None) -> None:
        self.topic = topic
        self.reply_topic = reply_topic or reply_topic_for(topic)
        self._out: Broker = open_broker(broker)
        self._in: Broker = open_broker(broker)
        self._out.ensure_topic(topic)
        self._in.listen(self.reply_topic)

    def send(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Publish requests; returns their correlation ids, in order."""
        ids = [uuid.uuid4().hex for _ in records]
        self._out.publish(
            self.topic,
            [orjson.dumps(r) for r in records],
            headers=[{REPLY_TO: self.reply_topic, CORRELATION_ID: cid} for cid in ids],
        )
        return ids

    def receive(self, timeout: float, max_messages: int = 500) -> list[dict[str, Any]]:
        """Replies that arrived within `timeout` seconds (any correlation id: the caller matches them)."""
        replies = []
        messages = self._in.consume(max_messages, timeout)
        self._in.ack(messages)  # Pub/Sub would redeliver unacked replies; a no-op on Kafka and Redis listeners
        for m in messages:
            try:
                body = orjson.loads(m.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(body, dict):
                body.setdefault(CORRELATION_ID, m.headers.get(CORRELATION_ID))
                replies.append(body)
        return replies

    def request_many(self, records: Sequence[Mapping[str, Any]], timeout: float = 10.0) -> list[dict[str, Any]]:
        """Send all, then wait until every reply is in; replies come back in the order of `records`."""
        ids = self.send(records)
        waiting = set(ids)
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout(
                    f"{len(waiting)} of {len(ids)} request(s) got no reply on {self.reply_topic!r} within "
                    f"{timeout:g}s: is a worker running in active mode on {self.topic!r}?"
                )
            for body in self.receive(min(left, 0.5)):
                cid = body.get(CORRELATION_ID)
                if cid in waiting:
                    waiting.discard(cid)
                    got[cid] = body
        return [got[cid] for cid in ids]

    def request(self, record: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return self.request_many([record], timeout)[0]

    def close(self) -> None:
        self._out.close()
        self._in.close()

    def __enter__(self) -> RequestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Redis Streams with consumer groups: XREADGROUP in batches, XACK after the work is done.

A stream entry holds the payload in field `data`, the key in `key`, and headers as further fields
(`reply_to`, `correlation_id`, ...). A restarted consumer first re-reads its own pending entries (those it
read but never acked, e.g. after kill -9), then claims entries other consumers left idle too long.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import require
from conveyor.stream.broker import Broker, BrokerError, Message

log = logging.getLogger("conveyor.stream")

DATA, KEY = b"data", b"key"


class RedisBroker(Broker):
    def __init__(
        self, uri: str, consumer: str | None = None, claim_idle: float = 60.0, maxlen: int | None = None
    ) -> None:
        redis = require("redis", "redis")
        self.uri = uri
        self._errors = (redis.RedisError, OSError)
        parts = urllib.parse.urlsplit(uri)
        options = urllib.parse.parse_qs(parts.query)
        self.client = redis.Redis.from_url(urllib.parse.urlunsplit(parts._replace(query="")), socket_timeout=30)
        # A stable name (host name by default) lets a restarted worker find the entries it had not acked.
        self.consumer = consumer or options.get("consumer", [None])[0] or socket.gethostname()
        self.claim_idle_ms = int(claim_idle * 1000)
        self.maxlen = maxlen or (int(options["maxlen"][0]) if "maxlen" in options else None)
        self.topic = self.group = ""
        self._backlog = True  # our own pending entries come first after a (re)start
        self._next_claim = 0.0
        self._last_id: str | None = None  # set by `listen`: read without a group, after this entry id

    def subscribe(self, topic: str, group: str) -> None:
        self.topic, self.group = topic, group
        try:
            # "0": a new group starts at the oldest entry, so events published before the worker lose nothing.
            self.client.xgroup_create(topic, group, id="0", mkstream=True)
        except self._errors as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis: cannot create group {group!r} on {topic!r}: {exc}") from exc

    def listen(self, topic: str) -> None:
        self.topic = topic
        try:
            last = self.client.xrevrange(topic, count=1)
        except self._errors as exc:
            raise BrokerError(f"redis: cannot read {topic!r}: {exc}") from exc
        self._last_id = last[0][0].decode() if last else "0-0"

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        try:
            if self._last_id is not None:
                reply = self.client.xread(
                    {self.topic: self._last_id}, count=max_messages, block=max(1, int(timeout * 1000))
                )
                messages = [m for _, entries in reply or [] for m in self._messages(entries)]
                if messages:
                    self._last_id = messages[-1].handle.decode()
                return messages
            if self._backlog:
                entries = self._read("0", max_messages, None)
                if entries:
                    return entries
                self._backlog = False
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
                claimed = self._claim(max_messages)
                if claimed:
                    return claimed
            return self._read(">", max_messages, max(1, int(timeout * 1000)))
        except self._errors as exc:
            raise BrokerError(f"redis: cannot read {self.topic!r}: {exc}") from exc

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Message]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.topic: start}, count=count, block=block_ms)
        return [m for _, entries in reply or [] for m in self._messages(entries)]

    def _claim(self, count: int) -> list[Message]:
        reply = self.client.xautoclaim(self.topic, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count)
        if reply and reply[1]:
            log.warning(
                "claimed %d entries idle for over %ss from other consumers", len(reply[1]), self.claim_idle_ms / 1000
            )
        return list(self._messages(reply[1] if reply else []))

    def _messages(self, entries: Sequence[tuple[bytes, Mapping[bytes, bytes] | None]]) -> list[Message]:
        out = []
        for entry_id, fields in entries:
            sid = entry_id.decode()
            if fields is None:  # trimmed away (MAXLEN) after delivery: nothing left to process
                log.warning("entry %s of %s was trimmed before it was acked; acking it", sid, self.topic)
                self.client.xack(self.topic, self.group, entry_id)
                continue
            headers = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items() if k not in (DATA, KEY)}
            out.append(
                Message(fields.get(DATA, b""), fields.get(KEY), headers, id=f"{self.topic}/{sid}", handle=entry_id)
            )
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        if not messages or self._last_id is not None:
            return
        try:
            self.client.xack(self.topic, self.group, *[m.handle for m in messages])
        except self._errors as exc:
            raise BrokerError(f"redis: cannot ack on {self.topic!r}: {exc}") from exc

    def publish(
        self, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> None:  # fmt: skip
        pipe = self.client.pipeline(transaction=False)
        for i, value in enumerate(values):
            fields: dict[Any, Any] = {DATA: value}
            if keys is not None and keys[i] is not None:
                fields[KEY] = keys[i]
            if headers is not None:
                fields.update(headers[i])
            pipe.xadd(topic, fields, maxlen=self.maxlen, approximate=True)
        try:
            pipe.execute()
        except self._errors as exc:
            raise BrokerError(f"redis: cannot publish to {topic!r}: {exc}") from exc

    def lag(self) -> int | None:
        try:
            for info in self.client.xinfo_groups(self.topic):
                if info.get("name") in (self.group, self.group.encode()):
                    lag = info.get("lag")
                    return int(lag) if lag is not None else None
        except self._errors:
            return None
        return None

    def close(self) -> None:
        self.client.close()

"""Redis Streams with consumer groups: XREADGROUP in batches, XACK after the work is done.

A stream entry holds the payload in field `data`, the key in `key`, and headers as further fields
(`reply_to`, `correlation_id`, ...). Each worker is its own consumer, named `HOST-PID-RANDOM` unless
`?consumer=NAME` says otherwise: two workers on one host (or two pods that both run as pid 1) never share a
name, so never each other's pending entries. What a consumer read and did not ack (it was killed) is claimed
by any member of the group once idle for `claim_idle` seconds; a live worker resets the idle time of the
entries it holds every `claim_idle / 4` seconds (`keepalive`), so a slow batch is never taken from it.
Consumers that are gone and hold nothing are removed from the group, so names do not pile up over restarts.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import InvalidInput, require
from conveyor.stream.broker import Broker, BrokerError, Message

log = logging.getLogger("conveyor.stream")

DATA, KEY = b"data", b"key"
CLAIM_IDLE = 30.0  # seconds an entry may go untouched before another consumer takes it over
# A consumer with nothing pending, silent for longer than the claim time: gone (a live one reads every poll).
# Checked and removed in one script, so no read can slip in between (its pending entries would be lost).
_REMOVE_GONE = """
local removed = {}
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
  if c['name'] ~= ARGV[3] and c['pending'] == 0 and c['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    removed[#removed + 1] = c['name']
  end
end
return removed
"""


def consumer_name() -> str:
    """Unique per broker object: the host and pid say where it runs, the random part that it is not a restart."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisBroker(Broker):
    sequenced = True

    def __init__(
        self, uri: str, consumer: str | None = None, claim_idle: float | None = None, maxlen: int | None = None
    ) -> None:
        redis = require("redis", "redis")
        self.uri = uri
        self._errors = (redis.RedisError, OSError)
        parts = urllib.parse.urlsplit(uri)
        options = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        unknown = sorted(set(options) - {"consumer", "claim_idle", "maxlen"})
        if unknown:
            raise InvalidInput(f"redis broker: unknown option(s) {unknown}: use consumer, claim_idle, maxlen")
        self.client = redis.Redis.from_url(urllib.parse.urlunsplit(parts._replace(query="")), socket_timeout=30)
        # A name given in the URI is stable: a restarted worker then re-reads its own pending entries at once.
        self.consumer = consumer or options.get("consumer") or consumer_name()
        idle = claim_idle if claim_idle is not None else _positive(options, "claim_idle", CLAIM_IDLE)
        self.claim_idle_ms = int(idle * 1000)
        self.keepalive_interval = idle / 4
        self.maxlen = maxlen or (int(_positive(options, "maxlen", 0)) or None)
        self.topic = self.group = ""
        self._backlog = True  # our own pending entries come first after a (re)start
        self._next_claim = 0.0
        self._claim_from = "0-0"  # XAUTOCLAIM's cursor: a long list of stranded entries is taken over in turns
        self._held: dict[bytes, None] = {}  # read and not yet acked: their idle time is reset by keepalive
        self._lock = threading.Lock()
        self._remove_gone = self.client.register_script(_REMOVE_GONE)
        self._last_id: str | None = None  # set by `listen`: read without a group, after this entry id

    def subscribe(self, topic: str, group: str) -> None:
        self.topic, self.group = topic, group
        try:
            # "0": a new group starts at the oldest entry, so events published before the worker lose nothing.
            self.client.xgroup_create(topic, group, id="0", mkstream=True)
        except self._errors as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis: cannot create group {group!r} on {topic!r}: {exc}") from exc
        log.info("redis: consumer %s of group %r on %r", self.consumer, group, topic)

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
                entries = self._hold(self._read("0", max_messages, None))
                if entries:
                    return entries
                self._backlog = False
            if time.monotonic() >= self._next_claim:
                claimed = self._hold(self._claim(max_messages))
                if claimed:
                    return claimed
            return self._hold(self._read(">", max_messages, max(1, int(timeout * 1000))))
        except self._errors as exc:
            raise BrokerError(f"redis: cannot read {self.topic!r}: {exc}") from exc

    def _hold(self, messages: list[Message]) -> list[Message]:
        with self._lock:
            self._held.update((m.handle, None) for m in messages)
        return messages

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Message]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.topic: start}, count=count, block=block_ms)
        return [m for _, entries in reply or [] for m in self._messages(entries)]

    def _claim(self, count: int) -> list[Message]:
        """Entries idle for over `claim_idle` (their consumer is gone), then the gone consumers themselves."""
        cursor, entries, *_ = self.client.xautoclaim(
            self.topic, self.group, self.consumer, self.claim_idle_ms, self._claim_from, count=count
        )
        cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        # Back soon while the scan is under way or found something; else after half the claim time.
        done = cursor == "0-0" and not entries
        self._claim_from = cursor
        self._next_claim = time.monotonic() + (self.claim_idle_ms / 2000 if done else 0)
        if entries:
            log.warning(
                "claimed %d entries of group %r idle for over %ss: their consumer stopped before acking them",
                len(entries), self.group, self.claim_idle_ms / 1000,
            )  # fmt: skip
        if done:
            for name in self._remove_gone(keys=[self.topic], args=[self.group, self.claim_idle_ms, self.consumer]):
                # debug: before Redis 7.2 an idle but live worker looks silent too (it simply comes back)
                log.debug("removed consumer %s from group %r: silent with nothing pending", name.decode(), self.group)
        return self._messages(entries)

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
                Message(
                    fields.get(DATA, b""), fields.get(KEY), headers, id=f"{self.topic}/{sid}", handle=entry_id,
                    seq=entry_seq(sid),
                )
            )  # fmt: skip
        return out

    def ack(self, messages: Sequence[Message]) -> None:
        if not messages or self._last_id is not None:
            return
        try:
            self.client.xack(self.topic, self.group, *[m.handle for m in messages])
        except self._errors as exc:
            raise BrokerError(f"redis: cannot ack on {self.topic!r}: {exc}") from exc
        with self._lock:
            for m in messages:
                self._held.pop(m.handle, None)

    def keepalive(self) -> None:
        """Reset the idle time of the entries this consumer holds (XCLAIM to itself, JUSTID: no delivery counted),
        so no other consumer claims them while a slow batch is still being worked on."""
        with self._lock:
            held = list(self._held)
        if not held or self._last_id is not None:
            return
        try:
            # Only those still ours: an entry claimed away meanwhile (we stalled past claim_idle) stays claimed.
            pending = self.client.xpending_range(self.topic, self.group, "-", "+", len(held), self.consumer)
            ours = [p["message_id"] for p in pending if p["message_id"] in self._held]
            if ours:
                # An entry another worker claimed between the two calls was idle for ~0 ms: the minimum idle time
                # leaves it with them (ours have been idle since the last keepalive, far longer).
                idle_ms = int(self.keepalive_interval * 500) if self.keepalive_interval else 0
                self.client.xclaim(self.topic, self.group, self.consumer, idle_ms, ours, justid=True)
        except self._errors as exc:
            log.warning("redis: could not keep %d held entries: %s", len(held), exc)

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


def entry_seq(entry_id: str) -> int | None:
    """A stream entry id `MS-SEQ` as one growing integer (MS·2²⁰ + SEQ), or None past that range.

    Consumers of one group process a stream side by side, and a claimed entry is older than what its new owner
    already did: the sink keeps, per key, the row of the highest `event_seq`, so a late older event never
    replaces a newer one."""
    ms, _, seq = entry_id.partition("-")
    try:
        high, low = int(ms), int(seq or 0)
    except ValueError:
        return None
    return (high << 20) | low if high < 1 << 43 and low < 1 << 20 else None


def _positive(options: Mapping[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InvalidInput(f"redis broker: {name} must be a positive number, not {options[name]!r}")
    return value

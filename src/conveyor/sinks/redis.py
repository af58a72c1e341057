"""Predictions as Redis hashes, one per key (`<prefix>:<key values>`): HSET overwrites, so writes are idempotent.

The service (`serve --predictions redis://...`) or any client reads a prediction back with `HGETALL prefix:key`.
Needs `conveyor-ml[redis]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from conveyor.errors import ConveyorError, require

# HSET unless the hash holds a higher `order` field (ARGV[1], value ARGV[2]); integers as text, compared as such.
_NEWER = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local new = ARGV[2]
if stored and stored ~= '' and new ~= '' and (#stored > #new or (#stored == #new and stored > new)) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""


class RedisSink:
    def __init__(self, url: str, key: Sequence[str], prefix: str = "predictions", order: str | None = None) -> None:
        redis = require("redis", "redis")
        self.client = redis.Redis.from_url(url)
        self.key = tuple(key)
        self.prefix = prefix
        self.order = order  # a non-negative integer field a write never lowers (a late older event is skipped)
        self._newer = self.client.register_script(_NEWER)

    def write(self, records: Sequence[Mapping[str, Any]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for rec in records:
            missing = [k for k in self.key if k not in rec]
            if missing:
                raise ConveyorError(f"records lack the key column(s) {missing}")
            name = ":".join([self.prefix, *(str(rec[k]) for k in self.key)])
            fields = {k: _text(v) for k, v in rec.items()}
            if self.order and self.order in fields:
                pairs = [x for kv in fields.items() for x in kv]
                self._newer(keys=[name], args=[self.order, fields[self.order], *pairs], client=pipe)
            else:
                pipe.hset(name, mapping=fields)
        pipe.execute()
        return len(records)

    def write_frame(self, frame: pd.DataFrame) -> int:
        return self.write(frame.astype(object).where(frame.notna(), None).to_dict("records"))

    def get(self, key: str) -> list[dict[str, Any]]:
        """The stored prediction for `key` as one row (like `SQLSink.get`); JSON-looking values are decoded."""
        raw = self.client.hgetall(f"{self.prefix}:{key}")
        return [{k.decode(): _decode(v.decode()) for k, v in raw.items()}] if raw else []

    def close(self) -> None:
        self.client.close()


def _decode(text: str) -> Any:
    """Numbers, lists and objects back from their text; anything else stays a string ('' was None)."""
    if text == "":
        return None
    if text[:1] in "[{-0123456789" or text in ("true", "false"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict | tuple):
        return json.dumps(value, default=str)
    if hasattr(value, "item"):
        value = value.item()
    return str(value)

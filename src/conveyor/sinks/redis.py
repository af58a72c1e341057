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

# One call per chunk of records sharing their fields: ARGV = number of fields F, position of the order field,
# the F field names, then F values per record (KEYS[i] is record i's hash). A record is written unless its hash
# holds a higher order value (integers as text, compared as such).
_NEWER = """
local nf, at = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local base = 2 + nf + (i - 1) * nf
  local new, stored = ARGV[base + at], redis.call('HGET', key, ARGV[2 + at])
  if not (stored and stored ~= '' and new ~= '' and (#stored > #new or (#stored == #new and stored > new))) then
    local fields = {}
    for j = 1, nf do fields[2 * j - 1] = ARGV[2 + j]; fields[2 * j] = ARGV[base + j] end
    redis.call('HSET', key, unpack(fields))
  end
end
"""
_RECORDS_PER_SCRIPT = 1000


class RedisSink:
    def __init__(self, url: str, key: Sequence[str], prefix: str = "predictions", order: str | None = None) -> None:
        redis = require("redis", "redis")
        self.client = redis.Redis.from_url(url)
        self.key = tuple(key)
        self.prefix = prefix
        self.order = order  # a non-negative integer field a write never lowers (a late older event is skipped)
        self._newer = self.client.register_script(_NEWER)

    def write(self, records: Sequence[Mapping[str, Any]]) -> int:
        names, rows = [], []
        for rec in records:
            missing = [k for k in self.key if k not in rec]
            if missing:
                raise ConveyorError(f"records lack the key column(s) {missing}")
            names.append(":".join([self.prefix, *(str(rec[k]) for k in self.key)]))
            rows.append({k: _text(v) for k, v in rec.items()})
        if self.order and rows and all(self.order in r and r.keys() == rows[0].keys() for r in rows):
            fields = list(rows[0])
            at = fields.index(self.order) + 1
            for start in range(0, len(rows), _RECORDS_PER_SCRIPT):
                chunk = rows[start : start + _RECORDS_PER_SCRIPT]
                values = [r[f] for r in chunk for f in fields]
                self._newer(keys=names[start : start + _RECORDS_PER_SCRIPT], args=[len(fields), at, *fields, *values])
            return len(records)
        pipe = self.client.pipeline(transaction=False)
        for name, mapping in zip(names, rows, strict=True):
            pipe.hset(name, mapping=mapping)
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

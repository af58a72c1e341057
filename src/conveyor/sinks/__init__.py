"""Where predictions land: idempotent writers shared by the batch and stream paths.

Every sink takes a DataFrame batch (`write_frame`) or records (`write`); writing the same batch twice
leaves the same result. `open_sink` picks the sink from the URI, so callers never name a backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pandas as pd

from conveyor.errors import ConveyorError

SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "duckdb")


class Sink(Protocol):
    def write(self, records: Sequence[Mapping[str, Any]]) -> int: ...

    def write_frame(self, frame: pd.DataFrame) -> int: ...

    def close(self) -> None: ...


def kind(uri: str) -> str:
    """`sql`, `redis`, `bigquery` or `file`, from the URI's scheme."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in SQL_SCHEMES:
        return "sql"
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme == "bigquery":
        return "bigquery"
    return "file"


def open_sink(
    uri: str, *, key: Sequence[str] = (), table: str = "predictions", part: str | None = None, order: str | None = None
) -> Sink:
    """The sink for `uri`; `key` is the upsert key (SQL, Redis), `part` names a file sink's part, `order` a column
    whose stored value a write never lowers (SQL, Redis: a late older event does not replace a newer one)."""
    which = kind(uri)
    if which == "sql":
        from conveyor.sinks.sql import SQLSink

        if not key:
            raise ConveyorError(f"writing to {uri.split(':', 1)[0]} needs --key: the column(s) to upsert by")
        return SQLSink(uri, table, key=key, order=order)
    if which == "redis":
        from conveyor.sinks.redis import RedisSink

        if not key:
            raise ConveyorError("writing to Redis needs --key: the column(s) naming each hash")
        return RedisSink(uri, key=key, prefix=table, order=order)
    if which == "bigquery":
        raise ConveyorError("BigQuery is written by Beam's own IO inside the pipeline, not through open_sink")
    from conveyor.sinks.files import FileSink

    return FileSink(uri, part=part)


def open_reader(uri: str, table: str = "predictions") -> Any:
    """What the service reads stored predictions from: `get(key) -> rows`, for a SQL URL or redis://."""
    if kind(uri) == "redis":
        from conveyor.sinks.redis import RedisSink

        return RedisSink(uri, key=("key",), prefix=table)
    if kind(uri) != "sql":
        raise ConveyorError(f"--predictions must be a SQL URL or redis://..., not {uri!r}")
    from conveyor.sinks.sql import SQLSink

    return SQLSink(uri, table)

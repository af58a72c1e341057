"""Where predictions land: idempotent writers shared by the batch and stream paths.

Every sink takes a DataFrame batch (`write_frame`) or records (`write`); writing the same batch twice
leaves the same result. `open_sink` picks the sink from the URI, so callers never name a backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pandas as pd

from conveyor.errors import ConveyorError, StoreUnavailable, first_line, require

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
    uri: str,
    *,
    key: Sequence[str] = (),
    table: str = "predictions",
    part: str | None = None,
    order: str | None = None,
    replace: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> Sink:
    """The sink for `uri`; `key` is the upsert key (SQL, Redis), `part` names a file sink's part, `order` a column
    whose stored value a write never lowers (SQL, Redis: a late older event does not replace a newer one),
    `replace` columns whose stored rows a write supersedes, all of them, in one transaction (SQL). With
    `columns` (what the job will write), an existing SQL table of another layout is refused now, in one line."""
    which = kind(uri)
    if which == "sql":
        from conveyor.sinks.sql import SQLSink

        if not key:
            raise ConveyorError(f"writing to {uri.split(':', 1)[0]} needs --key: the column(s) to upsert by")
        sink = SQLSink(uri, table, key=key, order=order, replace=replace)
        if columns is not None:
            try:
                sink.check_layout(columns)
            except BaseException:
                sink.close()
                raise
        return sink
    if which == "redis":
        from conveyor.sinks.redis import RedisSink

        if not key:
            raise ConveyorError("writing to Redis needs --key: the column(s) naming each hash")
        return RedisSink(uri, key=key, prefix=table, order=order)
    if which == "bigquery":
        raise ConveyorError("BigQuery is written by Beam's own IO inside the pipeline, not through open_sink")
    from conveyor.sinks.files import FileSink

    return FileSink(uri, part=part)


class PredictionReader:
    """What the service reads stored predictions from: `get(key) -> rows`, from a SQL table or Redis hashes.

    A failure of the backend (unreachable, damaged, refused) becomes `StoreUnavailable`; its text never names
    the library, which stays in the exception's `__cause__` for the server log.
    """

    def __init__(self, uri: str, table: str = "predictions") -> None:
        self.where = redact(uri)
        if kind(uri) == "redis":
            redis = require("redis", "redis")
            from conveyor.sinks.redis import RedisSink

            self._sink: Any = RedisSink(uri, key=("key",), prefix=table)
            self._failures: tuple[type[BaseException], ...] = (redis.RedisError,)
            self._reach = lambda: self._sink.client.ping()
        elif kind(uri) == "sql":
            import sqlalchemy as sa

            from conveyor.sinks.sql import SQLSink

            self._sink = SQLSink(uri, table)
            self._failures = (sa.exc.SQLAlchemyError,)
            self._reach = self._sink.table  # connects and reflects the table (None until a job writes it)
        else:
            raise ConveyorError(f"--predictions must be a SQL URL or redis://..., not {self.where!r}")

    def check(self) -> None:
        """Reach the store now; refuses with the backend's reason (for the operator, not for clients)."""
        try:
            self._reach()
        except self._failures as exc:
            raise StoreUnavailable(f"cannot read stored predictions from {self.where}: {first_line(exc)}") from exc

    def get(self, key: str) -> list[dict[str, Any]]:
        try:
            return self._sink.get(key)
        except self._failures as exc:
            raise StoreUnavailable("stored predictions are unavailable right now: try again later") from exc

    def close(self) -> None:
        self._sink.close()


def open_reader(uri: str, table: str = "predictions") -> PredictionReader:
    """The stored-predictions reader for a SQL URL or redis://; it connects on first use."""
    return PredictionReader(uri, table)


def check_reader(uri: str, table: str = "predictions") -> None:
    """Refuse, in one line, a prediction store that cannot be read now (e.g. before a service starts)."""
    reader = PredictionReader(uri, table)
    try:
        reader.check()
    finally:
        reader.close()


def redact(uri: str) -> str:
    """`scheme://user:***@host/...`: a URI fit for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", uri)

"""Stored predictions in any SQL database SQLAlchemy reaches (SQLite embedded, PostgreSQL for real).

Writes are upserts by key, so a retried batch never duplicates a row; the service reads them back by key.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from conveyor.errors import ConveyorError, MissingExtra, NotFound

_TYPES = {bool: sa.Boolean, int: sa.BigInteger, float: sa.Float, str: sa.Text}
# Rows per INSERT statement: large enough to amortise round trips, small enough for SQLite's variable limit.
_ROWS_PER_STATEMENT = 2000


class SQLSink:
    """A table of predictions with a (possibly composite) key, e.g. `key` or `(model, series, date)`."""

    def __init__(
        self, url: str, table: str = "predictions", key: Sequence[str] | None = None, order: str | None = None
    ) -> None:
        self.url = url
        self.order = order  # a stored row is replaced only by one whose `order` is not lower (NULL: always)
        self.table_name = table
        # Without an explicit key, a reader takes the existing table's primary key (what the writer chose).
        self._key_given = bool(key)
        self.key = tuple(key) if key else ("key",)
        try:
            self.engine = sa.create_engine(driver_url(url), pool_pre_ping=True)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConveyorError(f"bad database URL {url!r}: {exc}") from None
        self._table: sa.Table | None = None

    def table(self, create_from: Mapping[str, Any] | None = None) -> sa.Table | None:
        """The table, reflected once it exists (or created from the first record written)."""
        if self._table is not None:
            return self._table
        meta = sa.MetaData()
        if sa.inspect(self.engine).has_table(self.table_name):
            self._table = sa.Table(self.table_name, meta, autoload_with=self.engine)
            primary = tuple(c.name for c in self._table.primary_key.columns)
            if primary and not self._key_given:
                self.key = primary
        elif create_from is not None:
            cols = [
                sa.Column(name, _column_type(value), primary_key=name in self.key, nullable=name not in self.key)
                for name, value in create_from.items()
            ]
            table = sa.Table(self.table_name, meta, *cols)
            try:
                meta.create_all(self.engine)
            except sa.exc.SQLAlchemyError:
                # Another worker created it between our check and our CREATE: use theirs.
                if not sa.inspect(self.engine).has_table(self.table_name):
                    raise
                table = sa.Table(self.table_name, sa.MetaData(), autoload_with=self.engine)
            self._table = table
        return self._table

    def write_frame(self, frame: pd.DataFrame) -> int:
        """Upsert a DataFrame batch: NaN becomes NULL, numpy scalars Python values."""
        if len(frame) == 0:
            return 0
        clean = frame.astype(object).where(frame.notna(), None)
        return self.write(clean.to_dict("records"))

    def write(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Upsert `records` (dicts with the key columns); lists and dicts are stored as JSON text."""
        if not records:
            return 0
        rows = [{k: _cell(v) for k, v in r.items()} for r in records]
        missing = [k for k in self.key if k not in rows[0]]
        if missing:
            raise ConveyorError(f"records lack the key column(s) {missing} of table {self.table_name}")
        table = self.table(create_from=rows[0])
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise ConveyorError(f"upserts are implemented for SQLite and PostgreSQL, not {dialect}")
        stmt = insert(table)
        updates = {c: stmt.excluded[c] for c in rows[0] if c not in self.key}
        newer = None
        if self.order and self.order in rows[0] and self.order in table.c:
            stored, incoming = table.c[self.order], stmt.excluded[self.order]
            newer = sa.or_(stored.is_(None), incoming.is_(None), stored <= incoming)
        stmt = (
            stmt.on_conflict_do_update(index_elements=list(self.key), set_=updates, where=newer)
            if updates
            else (stmt.on_conflict_do_nothing(index_elements=list(self.key)))
        )
        with self.engine.begin() as conn:
            for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                conn.execute(stmt, rows[start : start + _ROWS_PER_STATEMENT])
        return len(rows)

    def get(self, key: str, column: str | None = None) -> list[dict[str, Any]]:
        """Every row whose key column equals `key` (for a composite key, the first column)."""
        table = self.table()
        column = column or self.key[0]
        if table is None:
            raise NotFound(f"no stored predictions yet: table {self.table_name!r} does not exist")
        if column not in table.c:
            raise ConveyorError(f"table {self.table_name!r} has no column {column!r}")
        with self.engine.connect() as conn:
            order = [table.c[k] for k in self.key if k in table.c and k != column]
            result = conn.execute(sa.select(table).where(table.c[column] == key).order_by(*order))
            names = list(map(str, result.keys()))
            return [{k: _decode(v) for k, v in zip(names, row, strict=True)} for row in result]

    def close(self) -> None:
        self.engine.dispose()


def driver_url(url: str) -> str:
    """`postgresql://` means psycopg 3 (the `postgres` extra) unless psycopg2 is what is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise MissingExtra("psycopg", "postgres")


def _column_type(value: Any) -> Any:
    for py, sql in _TYPES.items():
        if type(value) is py:
            return sql
    return sa.Text


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict | tuple):
        return json.dumps(value, default=str)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value

"""Stored predictions in any SQL database SQLAlchemy reaches (SQLite embedded, PostgreSQL for real).

Writes are upserts by key, so a retried batch never duplicates a row; the service reads them back by key.
With `replace` columns (a forecast's series), a write also removes, in the same transaction, every older row
of the values it writes: a re-run with a shorter horizon leaves no stale dates, and a reader sees the old
rows or the new ones, never a mix. `check_layout` refuses an existing table of another shape before a job
starts, rather than on its first write.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from conveyor.errors import ConveyorError, InvalidInput, MissingExtra, NotFound, first_line

_TYPES = {bool: sa.Boolean, int: sa.BigInteger, float: sa.Float, str: sa.Text}
# Rows per INSERT statement: large enough to amortise round trips, small enough for SQLite's variable limit.
_ROWS_PER_STATEMENT = 2000
_VALUES_PER_DELETE = 500
_OTHER_TABLE = "pass --table NEW for a new table, or drop that one"


class SQLSink:
    """A table of predictions with a (possibly composite) key, e.g. `key` or `(model, series, date)`."""

    def __init__(
        self,
        url: str,
        table: str = "predictions",
        key: Sequence[str] | None = None,
        order: str | None = None,
        replace: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.order = order  # a stored row is replaced only by one whose `order` is not lower (NULL: always)
        self.replace = tuple(replace)  # a write supersedes every stored row with the same values of these
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
        try:
            with self.engine.begin() as conn:  # one transaction: the older rows go only if the new ones land
                if self.replace:
                    self._delete_older(conn, table, rows)
                for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                    conn.execute(stmt, rows[start : start + _ROWS_PER_STATEMENT])
        except sa.exc.SQLAlchemyError as exc:
            raise ConveyorError(
                f"cannot write to table {self.table_name!r} in {self._shown}: {first_line(exc)}"
            ) from exc
        return len(rows)

    def _delete_older(self, conn: Any, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        missing = [c for c in self.replace if c not in table.c or c not in rows[0]]
        if missing:
            raise ConveyorError(f"cannot replace rows by {missing}: table {self.table_name!r} or the records lack it")
        columns = [table.c[c] for c in self.replace]
        target = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
        values = list(
            dict.fromkeys(r[self.replace[0]] if len(columns) == 1 else tuple(r[c] for c in self.replace) for r in rows)
        )
        for start in range(0, len(values), _VALUES_PER_DELETE):
            conn.execute(sa.delete(table).where(target.in_(values[start : start + _VALUES_PER_DELETE])))

    def check_layout(self, columns: Sequence[str]) -> None:
        """Refuse an existing table that cannot take rows of `columns` upserted by this sink's key, in one line."""
        table = self.table()
        if table is None:
            return
        where = f"table {self.table_name!r} in {self._shown}"
        have = [c.name for c in table.columns]
        lacking = [c for c in columns if c not in have]
        if lacking:
            raise InvalidInput(f"{where} has columns {have} and lacks {lacking}, which this job writes: {_OTHER_TABLE}")
        unfilled = [
            c.name
            for c in table.columns
            if c.name not in columns and not c.nullable and c.server_default is None and c.default is None
        ]
        if unfilled:
            raise InvalidInput(f"{where} requires {unfilled}, which this job does not write: {_OTHER_TABLE}")
        if set(self.key) not in self._unique_keys(table):
            primary = [c.name for c in table.primary_key.columns]
            keyed = f"is keyed by {primary}" if primary else "has no primary key"
            raise InvalidInput(f"{where} {keyed}, not by {list(self.key)} as this job upserts: {_OTHER_TABLE}")

    def _unique_keys(self, table: sa.Table) -> list[set[str]]:
        """Column sets an upsert can name in ON CONFLICT: the primary key, unique constraints and indexes."""
        inspector = sa.inspect(self.engine)
        keys = [{c.name for c in table.primary_key.columns}]
        keys += [set(u["column_names"]) for u in inspector.get_unique_constraints(self.table_name)]
        keys += [set(i["column_names"]) for i in inspector.get_indexes(self.table_name) if i.get("unique")]
        return keys

    @property
    def _shown(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def get(self, key: str, column: str | None = None) -> list[dict[str, Any]]:
        """Every row whose key column equals `key` (for a composite key, the first column)."""
        table = self.table()
        column = column or self.key[0]
        if table is None:
            raise NotFound(f"no stored predictions yet: table {self.table_name!r} does not exist")
        if column not in table.c:
            raise ConveyorError(f"table {self.table_name!r} has no column {column!r}")
        value = _as_column_value(table.c[column], key)
        if value is None:  # "abc" for an integer key: no such row (comparing would be an error in PostgreSQL)
            return []
        with self.engine.connect() as conn:
            order = [table.c[k] for k in self.key if k in table.c and k != column]
            result = conn.execute(sa.select(table).where(table.c[column] == value).order_by(*order))
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


def _as_column_value(column: sa.Column, key: str) -> Any:
    """A key from a URL as the column's type (PostgreSQL refuses `bigint = text`), or None if it cannot be one."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return key
    if python_type is bool:
        return {"true": True, "false": False, "1": True, "0": False}.get(key.lower())
    if python_type in (int, float):
        try:
            return python_type(key)
        except ValueError:
            return None
    return key


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

"""Input tables read as DataFrame chunks, each with its first row number, so a bad row can be named.

CSV and JSONL are cut into blocks of lines and each block is parsed on its own: a line that cannot be
parsed (wrong number of fields, broken JSON) becomes a reject with its line and reason instead of failing
the file. A quoted CSV field holding a newline is therefore not supported; use Parquet or JSONL for those.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import fsspec
import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput, MalformedInput, NotFound
from conveyor.io import table_format

_SQL_URL = re.compile(r"^(sqlite|postgresql|postgres|mysql|mariadb|mssql|oracle|duckdb)(\+\w+)?:")
REJECT_COLUMNS = ("source", "row", "reason", "record")


@dataclass
class Chunk:
    """Rows `start .. start+len(frame)-1` of `source` (data rows, 0-based), and the lines that did not parse."""

    source: str
    start: int
    frame: pd.DataFrame
    rejects: list[dict] = field(default_factory=list)


def is_sql_url(uri: str) -> bool:
    return bool(_SQL_URL.match(uri))


def expand(uri: str) -> list[str]:
    """The files an input URI names (a path, a glob, or any fsspec URL); a SQL URL stands for itself."""
    if is_sql_url(uri):
        return [uri]
    fs, _ = fsspec.core.url_to_fs(uri)
    paths = sorted(fs.glob(uri)) if any(c in uri for c in "*?[") else [uri]
    if not paths or not all(fs.exists(p) for p in paths):
        raise NotFound(f"no such input: {uri}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [p if "://" in p or protocol == "file" else f"{protocol}://{p}" for p in paths]


def columns(uri: str, query: str | None = None) -> list[str]:
    """The column names of the first input, read cheaply, to check the schema before a pipeline starts."""
    first = expand(uri)[0]
    for chunk in read_chunks(first, 10, query=query):
        return list(chunk.frame.columns)
    raise InvalidInput(f"no rows: {uri} is empty")


def read_chunks(source: str, rows: int, query: str | None = None) -> Iterator[Chunk]:
    """Yield `source` as chunks of at most `rows` rows."""
    if is_sql_url(source):
        yield from _sql_chunks(source, query or "SELECT * FROM input", rows)
        return
    fmt = table_format(source)
    try:
        if fmt == "parquet":
            yield from _parquet_chunks(source, rows)
        else:
            yield from _line_chunks(source, rows, fmt)
    except FileNotFoundError:
        raise NotFound(f"no such file: {source}") from None


def _parquet_chunks(source: str, rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    start = 0
    with fsspec.open(source, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=rows):
            frame = batch.to_pandas()
            yield Chunk(source, start, frame)
            start += len(frame)


def _line_chunks(source: str, rows: int, fmt: str) -> Iterator[Chunk]:
    start = 0
    with fsspec.open(source, "rt", compression="infer", encoding="utf-8", newline="") as f:
        header = f.readline() if fmt == "csv" else ""
        if fmt == "csv" and not header.strip():
            raise InvalidInput(f"no rows: {source} is empty")
        while True:
            lines = list(islice(f, rows))
            if not lines:
                return
            parse = _parse_csv if fmt == "csv" else _parse_jsonl
            frame, rejects = parse(header, lines, source, start)
            yield Chunk(source, start, frame, rejects)
            start += len(lines)


def _parse_csv(header: str, lines: list[str], source: str, start: int) -> tuple[pd.DataFrame, list[dict]]:
    try:
        with warnings.catch_warnings():
            # A first line longer than the header is only a warning (and lost data) with index_col=False.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(header + "".join(lines)), index_col=False)
        if len(frame) == len(lines) and not _short_lines(frame, lines):
            frame.index = pd.RangeIndex(start, start + len(frame))
            return frame, []
    except (pd.errors.ParserError, pd.errors.ParserWarning):
        pass
    # Only for a block holding a bad line: count each line's fields with the csv module to name the bad ones.
    names = list(pd.read_csv(io.StringIO(header), nrows=0).columns)
    good, index, rejects = [], [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error as exc:
            rejects.append(_reject(source, start + i, f"unparseable CSV line: {_first(exc)}", line))
            continue
        if len(fields) != len(names):
            rejects.append(_reject(source, start + i, f"expected {len(names)} fields, saw {len(fields)}", line))
            continue
        good.append(line)
        index.append(start + i)
    frame = pd.read_csv(io.StringIO(header + "".join(good)), index_col=False) if good else pd.DataFrame(columns=names)
    frame.index = pd.Index(index, dtype="int64")
    return frame, rejects


def _short_lines(frame: pd.DataFrame, lines: list[str]) -> bool:
    """pandas pads a line with too few fields with NaN; only lines whose last field is empty can be such lines."""
    if frame.empty:
        return False
    width = len(frame.columns)
    suspects = np.flatnonzero(frame.iloc[:, -1].isna().to_numpy())
    return any(len(next(csv.reader([lines[i]]), [])) < width for i in suspects)


def _parse_jsonl(header: str, lines: list[str], source: str, start: int) -> tuple[pd.DataFrame, list[dict]]:
    records, index, rejects = [], [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            rejects.append(_reject(source, start + i, f"unparseable JSON: {_first(exc)}", line))
            continue
        if not isinstance(rec, dict):
            rejects.append(_reject(source, start + i, "expected a JSON object", line))
            continue
        records.append(rec)
        index.append(start + i)
    frame = pd.DataFrame.from_records(records)
    frame.index = pd.Index(index, dtype="int64")
    return frame, rejects


def _sql_chunks(url: str, query: str, rows: int) -> Iterator[Chunk]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    start = 0
    try:
        with engine.connect() as conn:
            for frame in pd.read_sql_query(sa.text(query), conn, chunksize=rows):
                frame.index = pd.RangeIndex(start, start + len(frame))
                yield Chunk(url, start, frame)
                start += len(frame)
    except sa.exc.SQLAlchemyError as exc:
        shown = engine.url.render_as_string(hide_password=True)
        raise MalformedInput(f"cannot read {shown} with {query!r}: {_first(getattr(exc, 'orig', exc))}") from None
    finally:
        engine.dispose()


def _reject(source: str, row: int, reason: str, record: str) -> dict:
    return {"source": source, "row": row, "reason": reason, "record": record.rstrip("\r\n")}


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

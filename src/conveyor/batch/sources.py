"""Input tables read as DataFrame chunks, each with its first row number, so a bad row can be named.

CSV and JSONL are cut into blocks of lines and each block is parsed on its own: a line that cannot be
parsed (wrong number of fields, broken JSON) becomes a reject with its row and reason instead of failing
the file. CSV blocks come from `conveyor.io.csv_blocks`, the parser every other path uses too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import fsspec
import pandas as pd

from conveyor.errors import InvalidInput, MalformedInput, NotFound, first_line
from conveyor.io import csv_blocks, filesystem, open_text, table_format

_SQL_URL = re.compile(r"^(sqlite|postgresql|postgres|mysql|mariadb|mssql|oracle|duckdb)(\+\w+)?:")
REJECT_COLUMNS = ("source", "row", "reason", "record")


@dataclass
class Chunk:
    """Rows of `source` from data row `start` (0-based; the frame is indexed by row), and the lines that did not parse."""

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
    fs, _ = filesystem(uri)
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


def read_chunks(
    source: str, rows: int, query: str | None = None, row_groups: tuple[int, int] | None = None
) -> Iterator[Chunk]:
    """Yield `source` as chunks of at most `rows` rows; of a Parquet file, only row groups [first, stop) when
    `row_groups` is given (their rows keep their numbers in the whole file)."""
    if is_sql_url(source):
        yield from _sql_chunks(source, query or "SELECT * FROM input", rows)
        return
    fmt = table_format(source)
    try:
        if fmt == "parquet":
            yield from _parquet_chunks(source, rows, row_groups)
        else:
            yield from _line_chunks(source, rows, fmt)
    except FileNotFoundError:
        raise NotFound(f"no such file: {source}") from None


def parquet_row_groups(source: str) -> list[int]:
    """The rows of each row group of a Parquet file, from its footer: how a file can be split across tasks."""
    import pyarrow.parquet as pq

    with fsspec.open(source, "rb") as f:
        meta = pq.ParquetFile(f).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _parquet_chunks(source: str, rows: int, row_groups: tuple[int, int] | None = None) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    with fsspec.open(source, "rb") as f:
        parquet = pq.ParquetFile(f)
        first, stop = row_groups or (0, parquet.num_row_groups)
        start = sum(parquet.metadata.row_group(i).num_rows for i in range(first))
        if first >= stop:
            return
        for batch in parquet.iter_batches(batch_size=rows, row_groups=range(first, stop)):
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))  # a reject names its row in the file
            yield Chunk(source, start, frame)
            start += len(frame)


def _line_chunks(source: str, rows: int, fmt: str) -> Iterator[Chunk]:
    with open_text(source) as f:
        if fmt == "csv":
            for block in csv_blocks(f, source, rows):
                if not block.size:  # a header without rows: no chunk, as for an empty JSONL file
                    continue
                rejects = [_reject(source, b.row, f"line {b.line}: {b.reason}", b.text) for b in block.bad]
                yield Chunk(source, block.start, block.frame, rejects)
            return
        start = 0
        while True:
            lines = list(islice(f, rows))
            if not lines:
                return
            frame, rejects = _parse_jsonl(lines, source, start)
            yield Chunk(source, start, frame, rejects)
            start += len(lines)


def _parse_jsonl(lines: list[str], source: str, start: int) -> tuple[pd.DataFrame, list[dict]]:
    records, index, rejects = [], [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            rejects.append(_reject(source, start + i, f"unparseable JSON: {first_line(exc)}", line))
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
        raise MalformedInput(f"cannot read {shown} with {query!r}: {first_line(exc)}") from None
    finally:
        engine.dispose()


def _reject(source: str, row: int, reason: str, record: str) -> dict:
    return {"source": source, "row": row, "reason": reason, "record": record.rstrip("\r\n")}

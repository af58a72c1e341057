"""Tables in and out of files (CSV, Parquet, JSONL) at any fsspec path: one reader and one writer for every command.

CSV has one parser for every path (HTTP bodies, `conveyor predict`, batch): pandas' C parser plus the checks
it lacks. Left alone, pandas moves the extra leading fields of a long row into the index (every value shifts
a column), drops an extra empty field on the first row, pads a short row with NaN and renames a duplicate
column; here a record whose field count differs from the header's is a bad line, named by its line number
and both counts, and a duplicate column name refuses the file.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import fsspec
import numpy as np
import pandas as pd

from conveyor.errors import ConveyorError, MalformedInput, MissingExtra, NotFound

FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".jsonl.gz": "jsonl",
}


def table_format(path: str) -> str:
    lower = path.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return FORMATS[ext]
    raise ConveyorError(f"cannot tell the format of {path!r}: use a .csv, .parquet or .jsonl file")


# The fsspec filesystem of a URL scheme and the extra that brings it (fsspec itself only says "Please install gcsfs").
FILESYSTEM_EXTRAS = {"gs": ("gcsfs", "gcp"), "gcs": ("gcsfs", "gcp"), "s3": ("s3fs", "aws"), "s3a": ("s3fs", "aws")}


def filesystem(uri: str) -> tuple[Any, str]:
    """fsspec's filesystem and path for `uri`, or the one line naming the extra its scheme needs."""
    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme in FILESYSTEM_EXTRAS:
            module, extra = FILESYSTEM_EXTRAS[scheme]
            raise MissingExtra(f"{module} (for {scheme}://)", extra) from None
        raise ConveyorError(f"cannot open {uri}: {exc}") from None
    except ValueError as exc:  # an unknown protocol
        raise ConveyorError(f"cannot open {uri}: {exc}") from None


def read_table(path: str) -> pd.DataFrame:
    fmt = table_format(path)
    filesystem(path)
    try:
        if fmt == "csv":
            with open_text(path) as f:
                return read_csv(f, path, path)
        with fsspec.open(path, "rb", compression="infer") as f:
            if fmt == "parquet":
                return pd.read_parquet(f)
            return pd.read_json(f, lines=True)
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        if isinstance(exc, pd.errors.EmptyDataError):
            raise MalformedInput(f"{path} is empty") from None
        raise MalformedInput(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0]}") from None


def write_table(frame: pd.DataFrame, path: str) -> None:
    fmt = table_format(path)
    filesystem(path)
    with fsspec.open(path, "wb", compression="infer", auto_mkdir=True) as f:
        if fmt == "csv":
            frame.to_csv(f, index=False)
        elif fmt == "parquet":
            frame.to_parquet(f, index=False)
        else:
            frame.to_json(f, orient="records", lines=True, date_format="iso", double_precision=15)


def open_text(path: str) -> Any:
    """A text file at any fsspec path: decompressed, UTF-8 with or without a BOM, line ends kept (as csv needs)."""
    filesystem(path)  # a missing filesystem extra is one line, not fsspec's ImportError
    return fsspec.open(path, "rt", compression="infer", encoding="utf-8-sig", newline="")


# --- CSV ---------------------------------------------------------------------------------------------

# Lines held at once when a whole file has to be checked line by line (bounds that pass's memory).
BLOCK_LINES = 100_000


@dataclass(frozen=True)
class BadLine:
    """A CSV record that cannot be a row: its data row (0-based), its line in the file (1-based), why, its text."""

    row: int
    line: int
    reason: str
    text: str


@dataclass
class CsvBlock:
    """`size` records from data row `start`: the rows that parsed (indexed by row number) and the bad lines."""

    start: int
    size: int
    frame: pd.DataFrame
    bad: list[BadLine] = field(default_factory=list)


def read_csv(f: TextIO, source: str, path: str | None = None) -> pd.DataFrame:
    """The whole CSV as one DataFrame, or MalformedInput naming its first bad line.

    pandas parses the file once (a column's type comes from all its values). Only what pandas cannot tell from
    a good file — it refused a row, the last column has empty values (a short row is padded with them), or the
    first row's width is off — sends the file through the line-by-line check that names the bad lines.
    """
    if not f.seekable():
        f = io.StringIO(f.read(), newline="")
    header = _Header.read(f, source)
    first_row = _next_record(f)
    f.seek(0)
    # given the file's path, pandas reads it with its own C reader: twice as fast as through a Python handle
    frame = _parse_frame(path if path is not None else f)
    if (
        frame is not None
        and (first_row is None or _width(first_row) == len(header.names))
        and not (len(frame) and frame.iloc[:, -1].isna().any())
    ):
        return frame
    f.seek(0)
    bad = _unquoted_bad_lines(f, header)
    if bad is None:  # quoted fields: records may span lines, the csv module splits them
        f.seek(0)
        bad = [b for block in csv_blocks(f, source, BLOCK_LINES) for b in block.bad]
    if bad:
        more = len(bad) - 1
        extra = f" (and {more} more bad line{'s' if more > 1 else ''})" if more else ""
        raise MalformedInput(f"{source}: line {bad[0].line}: {bad[0].reason}{extra}")
    if frame is None:  # every line checked out, yet pandas refused: say so rather than guess
        raise MalformedInput(f"{source}: cannot parse as CSV")
    return frame


def _unquoted_bad_lines(f: TextIO, header: _Header) -> list[BadLine] | None:
    """The lines whose commas are not the header's, counted with numpy over large pieces of the file (one line
    is one record where nothing is quoted); None at the first quote, or at line ends other than \\n and \\r\\n."""
    f.seek(0)
    for _ in range(header.lines):
        f.readline()
    commas = len(header.names) - 1
    line, row, bad = header.lines + 1, 0, []
    while piece := f.read(_LineReader.PIECE):
        if not piece.endswith("\n"):
            piece += f.readline() or "\n"  # to the end of its line; the file's last line may lack its "\n"
        if '"' in piece or piece.count("\r") != piece.count("\r\n"):
            return None
        data = np.frombuffer(piece.encode(), dtype=np.uint8)
        ends = np.flatnonzero(data == ord("\n"))
        counts = np.diff(np.cumsum(data == ord(","), dtype=np.int64)[ends], prepend=0)
        starts = np.concatenate(([0], ends[:-1] + 1))
        blank = (ends - starts) <= np.where(data[np.maximum(ends - 1, 0)] == ord("\r"), 1, 0)
        rows = row + np.cumsum(~blank) - 1  # pandas skips blank lines: they are not rows
        for i in np.flatnonzero((counts != commas) & ~blank):
            text = data[starts[i] : ends[i] + 1].tobytes().decode().rstrip("\r\n")
            reason = f"expected {commas + 1} fields, saw {int(counts[i]) + 1}"
            bad.append(BadLine(int(rows[i]), line + int(i), reason, text))
        line += len(ends)
        row += int((~blank).sum())
    return bad


def _next_record(f: TextIO) -> str | None:
    """The first non-blank line after the header (a record, unless a quoted field breaks it over lines)."""
    for text in f:
        if text.strip():
            return None if '"' in text else text
    return None


def csv_blocks(f: TextIO, source: str, rows: int | None = None) -> Iterator[CsvBlock]:
    """`f` (opened with newline="") in blocks of about `rows` lines, or one block; a header-only CSV is one
    empty block. A quoted field running over several lines stays in one block."""
    header = _Header.read(f, source)
    reader = _LineReader(f)
    start, line = 0, header.lines + 1
    first = True
    while True:
        lines = reader.take(rows)
        if not lines:
            if first:
                yield CsvBlock(0, 0, _parse_frame(io.StringIO(header.text)))
            return
        first = False
        open_at = _open_record(lines, 0)
        if open_at is not None:  # a quoted field runs past the block: read on to its end
            while more := reader.take(1):
                lines += more
                if '"' in more[0] and _open_record(lines, open_at) is None:
                    open_at = None
                    break
        block = _parse_block(header, lines, start, line, open_at is not None)
        yield block
        start += block.size
        line += len(lines)


class _LineReader:
    """A text file's lines in lists, read in large pieces: iterating a file object line by line costs more than
    pandas' whole parse."""

    PIECE = 1 << 22  # characters

    def __init__(self, f: TextIO) -> None:
        self.f = f
        self.pending: list[str] = []
        self.done = False

    def take(self, n: int | None) -> list[str]:
        """The next `n` lines (all that are left when `n` is None); fewer only at the end of the file."""
        while not self.done and (n is None or len(self.pending) < n):
            piece = self.f.read(self.PIECE)
            if not piece:
                self.done = True
                break
            if not piece.endswith("\n"):
                piece += self.f.readline()  # to the end of its line ("\r" + "\n" stay together)
            self.pending += io.StringIO(piece, newline="").readlines()  # the file's own line ends, kept
        if n is None or n >= len(self.pending):
            out, self.pending = self.pending, []
        else:
            out, self.pending = self.pending[:n], self.pending[n:]
        return out


def _open_record(lines: list[str], start: int) -> int | None:
    """The index of the line where a record left open by the lines (inside a quoted field) begins, or None.

    A quote opens a field only at its start (`5" pipe` is a plain field, for pandas too), so an odd count of
    quotes is only a hint, checked with the csv module."""
    tail = "".join(lines[start:])
    if tail.count('"') % 2 == 0:
        return None
    reader = csv.reader(lines[start:], strict=True)
    begun = 0
    while True:
        try:
            next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return start + begun
        begun = reader.line_num


@dataclass(frozen=True)
class _Header:
    source: str
    text: str
    names: list[str]
    lines: int  # lines up to and including the header (blank lines before it count)

    @classmethod
    def read(cls, f: TextIO, source: str) -> _Header:
        skipped = 0
        for first in f:
            if first.strip():
                break
            skipped += 1
        else:
            raise MalformedInput(f"{source} is empty")
        lines = [first]
        while _open_record(lines, 0) is not None:
            more = f.readline()
            if not more:
                raise MalformedInput(f"{source}: line {skipped + 1}: unterminated quoted field in the header")
            lines.append(more)
        names = next(csv.reader(lines))
        duplicated = sorted({n for n in names if n and names.count(n) > 1})
        if duplicated:
            raise MalformedInput(f"{source}: duplicate column name(s) {duplicated} in the header")
        text = "".join(lines)
        return cls(source, text if text.endswith("\n") else text + "\n", names, skipped + len(lines))


def _parse_frame(f: TextIO | str) -> pd.DataFrame | None:
    """pandas' parse of a header and records, or None where pandas would refuse or lose data."""
    try:
        with warnings.catch_warnings():
            # A first row longer than the header is only a warning (and lost data) with index_col=False.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(f, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning):
        return None


def _parse_block(header: _Header, lines: list[str], start: int, line: int, unterminated: bool) -> CsvBlock:
    width = len(header.names)
    text = "".join(lines)
    if not unterminated:  # the common case, a clean block: one pandas parse and a few cheap checks
        frame = _parse_frame(io.StringIO(header.text + text))
        if (
            frame is not None
            and len(frame) == len(lines)  # one row per line: no blank line, no quoted line break
            and _width(lines[0]) == width  # pandas drops an extra empty field on the first row
            and not _short_lines(frame, lines, width)
        ):
            frame.index = pd.RangeIndex(start, start + len(frame))
            return CsvBlock(start, len(lines), frame)
    # Only for a block holding a bad line (or a quoted line break): the csv module splits it into records.
    good, index, bad = [], [], []
    reader = csv.reader(lines)
    row, done = start, 0
    while True:
        try:
            fields = next(reader)
            reason = None
        except StopIteration:
            break
        except csv.Error as exc:
            fields, reason = [], f"unparseable CSV line: {exc}"
        record = "".join(lines[done : reader.line_num])
        at, done = line + done, reader.line_num
        if reason is None and unterminated and done == len(lines):
            reason = "unterminated quoted field"
        if reason is None and not record.strip():
            row += 1
            continue
        if reason is None and len(fields) != width:
            reason = f"expected {width} fields, saw {len(fields)}"
        if reason is None:
            good.append(record)
            index.append(row)
        else:
            bad.append(BadLine(row, at, reason, record.rstrip("\r\n")))
        row += 1
    frame = _parse_frame(io.StringIO(header.text + "".join(good)))
    if frame is None or len(frame) != len(good):
        raise MalformedInput(f"{header.source}: cannot parse lines {line}..{line + len(lines) - 1} as CSV")
    frame.index = pd.Index(index, dtype="int64")
    return CsvBlock(start, row - start, frame, bad)


def _width(line: str) -> int:
    return len(next(csv.reader([line]), []))


def _short_lines(frame: pd.DataFrame, lines: list[str], width: int) -> bool:
    """pandas pads a row with too few fields with NaN; only rows whose last field is empty can be such rows.
    Their fields are counted by their commas, with the csv module only for a line that quotes."""
    if frame.empty:
        return False
    commas = width - 1
    for i in np.flatnonzero(frame.iloc[:, -1].isna().to_numpy()):
        text = lines[i]
        if (text.count(",") < commas) if '"' not in text else (_width(text) < width):
            return True
    return False

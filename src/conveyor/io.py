"""Tables in and out of files (CSV, Parquet, JSONL) at any fsspec path: one reader and one writer for every command."""

from __future__ import annotations

import fsspec
import pandas as pd

from conveyor.errors import ConveyorError, MalformedInput, NotFound

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


def read_table(path: str) -> pd.DataFrame:
    fmt = table_format(path)
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            if fmt == "csv":
                return pd.read_csv(f)
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
    with fsspec.open(path, "wb", compression="infer", auto_mkdir=True) as f:
        if fmt == "csv":
            frame.to_csv(f, index=False)
        elif fmt == "parquet":
            frame.to_parquet(f, index=False)
        else:
            frame.to_json(f, orient="records", lines=True, date_format="iso", double_precision=15)

"""What the score and forecast pipelines share: reading chunks, writing frames and rejects, running Beam.

Elements are DataFrame chunks, never single rows: per-element overhead on Beam is large, per-row work is
vectorised. After a run the driver merges file parts, reads the counters and enforces the reject rate.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd

from conveyor.batch import sources
from conveyor.errors import ConveyorError, InvalidInput, require
from conveyor.sinks import kind, open_sink

beam = require("apache_beam", "beam")

from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

NAMESPACE = "conveyor"
REJECTS = "rejects"


class TooManyRejects(InvalidInput):
    """More rows were rejected than `--max-reject-rate` allows."""


def job_run_id(paths: Sequence[str], *settings: object) -> str:
    """The default run id: a digest of the inputs (size, mtime or etag) and everything that shapes the output.

    The same job on unchanged input gets the same id, so a re-run (an Airflow retry, say) leaves a SQL
    sink identical, run_id included; changed input or settings give a new id. A SQL input stands for
    itself and its query: pass --run-id when the table behind it changes.
    """
    digest = hashlib.sha256(json.dumps([str(s) for s in settings]).encode())
    for path in paths:
        digest.update(path.encode())
        if not sources.is_sql_url(path):
            fs, local = fsspec.core.url_to_fs(path)
            info = fs.info(local)
            stamp = [info.get(k) for k in ("size", "mtime", "ETag", "etag", "md5Hash", "LastModified", "updated")]
            digest.update(json.dumps(stamp, default=str).encode())
    return "run-" + digest.hexdigest()[:16]


@dataclass
class Output:
    """Where results and rejects go: a file/SQL/Redis/BigQuery URI, its upsert key and table; `replace`: columns
    whose older rows a write supersedes in a SQL table (a forecast's series)."""

    uri: str
    key: tuple[str, ...] = ()
    table: str = "predictions"
    rejects: str | None = None
    max_reject_rate: float = 0.0
    replace: tuple[str, ...] = ()


@dataclass
class Report:
    run_id: str
    model: str
    rows_in: int
    rows_out: int
    rejected: int
    seconds: float
    output: str
    rejects: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reject_rate(self) -> float:
        return self.rejected / self.rows_in if self.rows_in else 0.0


# --- DoFns shared by both pipelines ------------------------------------------------------------------


class ReadChunks(beam.DoFn):
    """(source number, URI) -> Chunks of at most `rows` rows; unparseable lines go to the rejects output."""

    def __init__(self, rows: int, query: str | None) -> None:
        self.rows = rows
        self.query = query

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        number, uri = element
        for chunk in sources.read_chunks(uri, self.rows, self.query):
            Metrics.counter(NAMESPACE, "rows_in").inc(len(chunk.frame) + len(chunk.rejects))
            for rej in chunk.rejects:
                yield beam.pvalue.TaggedOutput(REJECTS, rej)
            if len(chunk.frame):
                yield number, chunk


class WriteFrames(beam.DoFn):
    """Writes (part name, frame) through the sink for `uri`, opened once per worker."""

    def __init__(self, uri: str, key: Sequence[str], table: str, counter: str, replace: Sequence[str] = ()) -> None:
        self.uri = uri
        self.key = tuple(key)
        self.table = table
        self.counter = counter
        self.replace = tuple(replace)

    def setup(self) -> None:
        self.sink = open_sink(self.uri, key=self.key, table=self.table, replace=self.replace)
        self.is_file = kind(self.uri) == "file"

    def process(self, element: tuple[str, pd.DataFrame]) -> None:
        part, frame = element
        # A file part is named after its input chunk, so a retried bundle rewrites the same part.
        written = self.sink.write_frame(frame, part=part) if self.is_file else self.sink.write_frame(frame)
        Metrics.counter(NAMESPACE, self.counter).inc(written)

    def teardown(self) -> None:
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.close()


def write_frames(pcoll: Any, out: Output, counter: str, label: str) -> None:
    if kind(out.uri) == "bigquery":
        from conveyor.sinks import bigquery

        (
            pcoll
            | f"{label}Rows" >> beam.FlatMap(lambda e: bigquery.rows(e[1]))
            | f"{label}BigQuery" >> bigquery.write_transform(out.uri)
        )
        return
    pcoll | label >> beam.ParDo(WriteFrames(out.uri, out.key, out.table, counter, out.replace))


def write_rejects(rejects: Any, path: str) -> None:
    (
        rejects
        | "BatchRejects" >> beam.BatchElements(min_batch_size=1, max_batch_size=10_000)
        | "RejectFrames" >> beam.Map(lambda recs: (uuid.uuid4().hex, pd.DataFrame.from_records(recs)))
        | "WriteRejects" >> beam.ParDo(WriteFrames(path, (), "rejects", "rejected"))
    )


# --- the driver ------------------------------------------------------------------------------------------


def check_key(out: Output, columns: Sequence[str]) -> None:
    if kind(out.uri) in ("sql", "redis"):
        if not out.key:
            raise InvalidInput(f"writing to {out.uri.split(':', 1)[0]} needs --key: the column(s) to upsert by")
        unknown = [k for k in out.key if k not in columns]
        if unknown:
            raise InvalidInput(f"--key column(s) {unknown} are not in the output; it has {list(columns)}")


def rejects_target(out: Output) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """`--rejects`, or a scratch file when none was given: rejects are always kept long enough to report."""
    if out.rejects:
        return out.rejects, None
    scratch = tempfile.TemporaryDirectory(prefix="conveyor-rejects-")
    return f"{scratch.name}/rejects.jsonl", scratch


def prepare(out: Output, rejects: str, columns: Sequence[str]) -> None:
    """Before the pipeline runs: refuse a SQL table of another layout (one line, nothing written), then clear
    what an earlier run left in file outputs."""
    from conveyor.sinks.files import FileSink

    if kind(out.uri) == "sql":  # a bad URL or a missing driver fails here too
        open_sink(out.uri, key=out.key, table=out.table, columns=columns).close()
    for path in (out.uri, rejects):
        if kind(path) == "file":
            FileSink(path).prepare()


def run(build: Any, beam_args: Sequence[str]) -> dict[str, int]:
    options = PipelineOptions(list(beam_args))
    try:
        with beam.Pipeline(options=options) as p:
            build(p)
        result = p.result
    except ConveyorError:
        raise
    except Exception as exc:
        raise _conveyor_error(exc) from exc
    return {
        c.key.metric.name: int(c.committed or c.attempted or 0)
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    }


def _conveyor_error(exc: BaseException) -> ConveyorError:
    """The ConveyorError a worker raised (Beam wraps it), else one line naming what failed."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConveyorError):
            return type(seen)(str(seen).splitlines()[0])
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().splitlines()
    for line in text:
        for cls in (InvalidInput, ConveyorError):
            marker = f"{cls.__name__}: "
            if marker in line:
                return cls(line.split(marker, 1)[1])
    return ConveyorError(f"batch pipeline failed: {type(exc).__name__}: {text[0] if text else ''}")


def finish(
    out: Output,
    counters: dict[str, int],
    run_id: str,
    model: str,
    started: float,
    rejects_path: str,
    scratch: tempfile.TemporaryDirectory | None,
    paths: Sequence[str],
) -> Report:
    from conveyor.sinks.files import FileSink

    if kind(out.uri) == "file":
        FileSink(out.uri).finalize()
    FileSink(rejects_path).finalize()
    report = Report(
        run_id=run_id,
        model=model,
        rows_in=counters.get("rows_in", 0),
        rows_out=counters.get("rows_out", 0),
        rejected=counters.get("rejected", 0),
        seconds=time.perf_counter() - started,
        output=out.uri,
        rejects=out.rejects,
    )
    try:
        if report.rows_in == 0:
            raise InvalidInput(f"no rows: {', '.join(paths)} is empty")
        if report.rejected and report.reject_rate > out.max_reject_rate:
            first = _first_reject(rejects_path)
            where = f"see {out.rejects}" if out.rejects else "pass --rejects FILE to keep them"
            raise TooManyRejects(
                f"{report.rejected:,} of {report.rows_in:,} rows rejected ({report.reject_rate:.3%}), "
                f"more than --max-reject-rate {out.max_reject_rate:g}; first: {first}; {where}"
            )
    finally:
        if scratch is not None:
            scratch.cleanup()
    return report


def _first_reject(path: str) -> str:
    from conveyor.io import read_table

    try:
        frame = read_table(path)
    except ConveyorError:
        return "unknown"
    if not len(frame):
        return "unknown"
    first = frame.sort_values(["source", "row"]).iloc[0]
    return f"row {first['row']} of {first['source']}: {first['reason']}"

"""What a batch job is, whatever engine runs it: its output, its run id, its report, the checks before it
starts and the accounting after it ends, and what happens to one chunk of rows (validated, then labelled).

Beam (`pipeline.py`) and Spark (`spark.py`) call these, so both engines refuse, label and report alike.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd

from conveyor import validation
from conveyor.batch import forecasting, sources
from conveyor.errors import ConveyorError, InvalidInput
from conveyor.signature import Signature
from conveyor.sinks import kind, open_sink


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


@dataclass
class ScoreJob:
    store: str
    model: str
    input: str
    output: Output
    query: str | None = None
    batch_rows: int = 100_000
    run_id: str | None = None
    beam_args: Sequence[str] = ()


@dataclass
class ScorePlan:
    """What the driver settles before any engine starts: the model version, the inputs, the run id, the columns."""

    ref: Any
    signature: Signature
    paths: list[str]
    run_id: str
    columns: list[str]
    rejects_path: str
    scratch: tempfile.TemporaryDirectory | None
    started: float


def plan_score(job: ScoreJob) -> ScorePlan:
    """Resolve the model, check the input's columns and the output's key, and clear the outputs: every refusal
    happens here, in one line, before an engine runs."""
    from conveyor.store import ModelStore

    started = time.perf_counter()
    store = ModelStore(job.store)
    ref = store.resolve(job.model)
    manifest = store.manifest(ref)
    signature = Signature.from_dict(manifest["signature"])
    paths = sources.expand(job.input)
    run_id = job.run_id or job_run_id(paths, "score", manifest, job.query, job.output.key)
    names = sources.columns(job.input, job.query)
    validation.check_columns(signature, names)
    columns = [*names, *(c for c in signature.output_names if c not in names), "model", "version", "run_id"]
    check_key(job.output, columns)
    rejects_path, scratch = rejects_target(job.output)
    prepare(job.output, rejects_path, columns)
    return ScorePlan(ref, signature, paths, run_id, columns, rejects_path, scratch, started)


@dataclass
class ForecastJob:
    name: str
    history: str
    steps: int
    output: Output
    spec: forecasting.HistorySpec = field(default_factory=forecasting.HistorySpec)
    aggregate: str | None = None
    shards: int = 64
    query: str | None = None
    batch_rows: int = 200_000
    run_id: str | None = None
    beam_args: Sequence[str] = ()
    store: str | None = None


@dataclass
class ForecastPlan:
    """What the driver settles before any engine forecasts: inputs, the output (a series' rows supersede its
    older ones), the stored model if any, the label every row carries and the run id."""

    paths: list[str]
    output: Output
    stored: tuple[str, str] | None
    label: dict[str, Any]
    run_id: str
    rejects_path: str
    scratch: tempfile.TemporaryDirectory | None
    started: float


def plan_forecast(job: ForecastJob) -> ForecastPlan:
    """Check the history's columns, --aggregate, --range and the output's key, settle the date format (in
    `job.spec`, for every engine's chunks), and clear the outputs."""
    from dataclasses import replace

    started = time.perf_counter()
    paths = sources.expand(job.history)
    names = sources.columns(job.history, job.query)
    job.spec.check(names)
    if job.aggregate and job.aggregate not in job.spec.series_cols:
        raise InvalidInput(f"--aggregate {job.aggregate!r} must be one of --series-cols {list(job.spec.series_cols)}")
    if not 1 <= job.steps <= 3660:
        raise InvalidInput(f"--range must be between 1 and 3660, got {job.steps}")
    job.spec = replace(job.spec, date_format=_date_format(job, paths[0]))
    columns = [*forecasting.SERIES_COLUMNS, *job.spec.series_cols, "model", "version", "run_id"]
    check_key(job.output, columns)
    # A series' forecast is its whole horizon: it supersedes every older row of the series (a re-run with a
    # shorter --range leaves no stale dates), and a series' rows are written together, in one transaction.
    output = replace(job.output, replace=("series",))
    rejects_path, scratch = rejects_target(output)
    prepare(output, rejects_path, columns)
    stored = None
    name, version = job.name, 0
    if job.store is not None:
        from conveyor.store import ModelStore

        ref = ModelStore(job.store).resolve(job.name)
        stored, name, version = (job.store, str(ref)), ref.name, ref.version
    run_id = job.run_id or job_run_id(
        paths, "forecast", name, version, job.steps, job.spec, job.aggregate, job.query, stored and stored[1]
    )
    label = {"model": name, "version": version, "run_id": run_id}
    return ForecastPlan(paths, output, stored, label, run_id, rejects_path, scratch, started)


def _date_format(job: ForecastJob, first: str) -> str | None:
    """--date-format, or the format of the first chunk's dates: every chunk, on any worker, reads with it (left
    to guess on its own, a chunk of days <= 12 read 01/02/2016 as January 2nd, the next chunk as February 1st)."""
    from conveyor.sales_data import settle_date_format

    spec = job.spec
    for chunk in sources.read_chunks(first, job.batch_rows, query=job.query):
        return settle_date_format(chunk.frame[spec.date_col], spec.date_col, f"history {first}", spec.date_format)
    return spec.date_format


@dataclass
class Batch:
    """Accepted rows of one input chunk: original values (`rows`), model input, and, once scored, output."""

    source: int
    start: int
    rows: pd.DataFrame
    inputs: pd.DataFrame
    predictions: pd.DataFrame | None = None


def batch_rows(batch: Batch) -> int:
    return len(batch.inputs)


def validate_chunk(signature: Signature, number: int, chunk: sources.Chunk) -> tuple[Batch | None, list[dict]]:
    """A chunk's accepted rows as a Batch (None when none are), and a reject record for each refused row."""
    result = validation.split(signature, chunk.frame)
    rejects = list(validation.reject_records(chunk.frame, result.rejects, chunk.source))
    if result.inputs is None:
        return None, rejects
    return Batch(number, chunk.start, result.rows, result.inputs), rejects


def part_name(source: int, start: int) -> str:
    """A file part named after its input chunk, so a retried task rewrites the same part."""
    return f"{source:05d}-{start:012d}"


def labelled(batch: Batch, name: str, version: int, run_id: str) -> pd.DataFrame:
    """A scored Batch as output rows: the input columns, the predictions, then model, version and run id."""
    rows = batch.rows.reset_index(drop=True)
    # The model's columns as validated: one type for every part, whatever a chunk's CSV parsing inferred.
    for column in batch.inputs.columns:
        if column in rows.columns:
            rows[column] = batch.inputs[column]
    predictions = batch.predictions
    predictions = predictions.drop(columns=[c for c in predictions.columns if c in rows.columns])
    frame = pd.concat([rows, predictions], axis=1)
    frame["model"] = name
    frame["version"] = version
    frame["run_id"] = run_id
    return frame


# --- the driver, before and after ------------------------------------------------------------------------


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


def conveyor_error(exc: BaseException) -> ConveyorError:
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

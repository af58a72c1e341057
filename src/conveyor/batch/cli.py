"""`conveyor batch score` and `conveyor batch forecast`: Beam pipelines from the command line.

Anything after `--` goes to Beam as pipeline options, so every runner works without new flags:
`conveyor batch score sales --input ... --output ... --runner DataflowRunner -- --project P --region R`.
"""

from __future__ import annotations

import logging

import click

from conveyor.cli_options import STORE_OPTION, Group

_SEP = ","


def _columns(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(_SEP) if c.strip()) if text else ()


def _beam_args(runner: str | None, workers: int | None, verbose: bool, extra: tuple[str, ...]) -> list[str]:
    args = list(extra)
    if runner:
        args.append(f"--runner={runner}")
    if workers:
        args += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    if not verbose:
        args.append("--default_sdk_harness_log_level=ERROR")
    return args


def _quiet(verbose: bool) -> None:
    """Beam logs routine warnings (memory probes, missing GCP clients) that would bury the one-line result, and
    a worker's traceback before the job fails with its one-line error; `-v` shows them all."""
    logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.NOTSET if verbose else logging.CRITICAL)


RUNNER = click.option(
    "--runner",
    default=None,
    help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner, PortableRunner.",
)
WORKERS = click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 256),
    help="DirectRunner worker processes (multi_processing mode) [default: one process].",
)
OUTPUT = click.option(
    "--output",
    required=True,
    metavar="URI",
    help="file.parquet|.csv|.jsonl (or DIR/ for part files), sqlite:///db, postgresql://..., redis://..., "
    "bigquery://PROJECT/DATASET.TABLE",
)
TABLE = click.option("--table", default="predictions", show_default=True, help="SQL table or Redis key prefix.")
REJECTS = click.option(
    "--rejects", default=None, metavar="FILE", help="Where refused rows go, with their reason (CSV/Parquet/JSONL)."
)
MAX_REJECT = click.option(
    "--max-reject-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Exit non-zero when a larger share of rows is rejected.",
)
QUERY = click.option("--query", default=None, help="SQL query when the input is a database URL.")
RUN_ID = click.option(
    "--run-id",
    default=None,
    help="Identifier stamped on every output row [default: a digest of the inputs and settings: a re-run is identical].",
)
VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Show Beam's log.")
BEAM_ARGS = click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)


@click.group(cls=Group)
def batch() -> None:
    """Score or forecast large data on Apache Beam (DirectRunner by default; Dataflow, Flink, Spark)."""


@batch.command("score", context_settings={"ignore_unknown_options": True})
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@click.option("--input", "input_uri", required=True, metavar="URI", help="CSV/Parquet/JSONL path or glob, or SQL URL.")
@OUTPUT
@click.option("--key", default=None, metavar="COLS", help="Comma-separated upsert key for SQL/Redis outputs.")
@TABLE
@REJECTS
@MAX_REJECT
@QUERY
@click.option("--batch-rows", default=100_000, show_default=True, type=click.IntRange(1), help="Rows per batch.")
@RUNNER
@WORKERS
@RUN_ID
@VERBOSE
@STORE_OPTION
@BEAM_ARGS
def score_cmd(model, input_uri, output, key, table, rejects, max_reject_rate, query, batch_rows, runner, workers,
              run_id, verbose, store, beam_args):  # fmt: skip
    """Score every row of --input with MODEL; each output row keeps its input columns, model, version, run id."""
    _quiet(verbose)
    from conveyor.batch.jobs import Output
    from conveyor.batch.score import ScoreJob, score

    job = ScoreJob(
        store=store,
        model=model,
        input=input_uri,
        output=Output(output, _columns(key), table, rejects, max_reject_rate),
        query=query,
        batch_rows=batch_rows,
        run_id=run_id,
        beam_args=_beam_args(runner, workers, verbose, beam_args),
    )
    report = score(job)
    _echo(report, "scored")


@batch.command("forecast", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--history", required=True, metavar="URI", help="Sales history: CSV/Parquet/JSONL path or glob, or SQL.")
@click.option("--range", "steps", required=True, type=click.IntRange(1, 3660), help="Forecast horizon in periods.")
@OUTPUT
@click.option("--series-cols", default=None, metavar="COLS", help="Columns naming a series, e.g. store_nbr,family.")
@click.option("--date-col", default="date", show_default=True)
@click.option("--sales-col", default="sales", show_default=True)
@click.option("--aggregate", default=None, metavar="COL", help="Also write totals per value of COL (a series column).")
@click.option(
    "--from-store",
    "from_store",
    is_flag=True,
    help="Forecast with the stored model NAME[:VERSION|@ALIAS] instead of fitting per series.",
)
@STORE_OPTION
@click.option(
    "--shards", default=64, show_default=True, type=click.IntRange(1), help="Groups of series fitted together."
)
@TABLE
@REJECTS
@MAX_REJECT
@QUERY
@RUNNER
@WORKERS
@RUN_ID
@VERBOSE
@BEAM_ARGS
def forecast_cmd(name, history, steps, output, series_cols, date_col, sales_col, aggregate, from_store, store, shards,
                 table, rejects, max_reject_rate, query, runner, workers, run_id, verbose, beam_args):  # fmt: skip
    """Fit a forecaster per series of --history (or use NAME from the store with --from-store) and write
    --range forecasts with bounds per series and date.

    SQL outputs are keyed by (series, date), so `conveyor serve ... --predictions URL` answers
    GET /predictions/{series} from them, and a re-run replaces rather than duplicates.
    """
    _quiet(verbose)
    from conveyor.batch.forecast import ForecastJob, forecast
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import Output

    job = ForecastJob(
        name=name,
        history=history,
        steps=steps,
        output=Output(output, ("series", "date"), table, rejects, max_reject_rate),
        spec=HistorySpec(date_col, sales_col, _columns(series_cols)),
        aggregate=aggregate,
        shards=shards,
        query=query,
        run_id=run_id,
        beam_args=_beam_args(runner, workers, verbose, beam_args),
        store=store if from_store else None,
    )
    report = forecast(job)
    _echo(report, f"forecast {report.extra['series']:,} series,")


def _echo(report, verb: str) -> None:
    rejected = f", rejected {report.rejected:,}" + (f" (see {report.rejects})" if report.rejects else "")
    click.echo(
        f"{verb} {report.rows_in:,} rows with {report.model} in {report.seconds:.1f}s: "
        f"wrote {report.rows_out:,} rows to {report.output}{rejected if report.rejected else ''} "
        f"(run {report.run_id})"
    )


if __name__ == "__main__":
    batch()

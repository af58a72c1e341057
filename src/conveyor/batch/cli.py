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
ENGINE = click.option(
    "--engine",
    type=click.Choice(["beam", "spark"]),
    default="beam",
    show_default=True,
    help="Apache Beam (DirectRunner here, Dataflow and others with --runner) or Apache Spark (--master).",
)
MASTER = click.option(
    "--master",
    default="local[*]",
    show_default=True,
    metavar="URL",
    help="With --engine spark: spark://HOST:7077, local[N], yarn or k8s://HOST:PORT.",
)
SPARK_CONF = click.option(
    "--spark-conf",
    multiple=True,
    metavar="KEY=VALUE",
    help="With --engine spark: a Spark setting (repeatable), e.g. spark.executor.memory=2g.",
)
BEAM_ARGS = click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)


def _check_engine(ctx: click.Context, engine: str, runner, workers, beam_args) -> None:
    """Options of one engine given to the other are refused, not ignored."""
    from conveyor.errors import InvalidSetting

    source = ctx.get_parameter_source
    if engine == "spark" and (runner or workers or beam_args):
        raise InvalidSetting(
            "--runner, --workers and options after -- are Beam's; with --engine spark use --master and --spark-conf"
        )
    if engine == "beam" and (source("master") != click.core.ParameterSource.DEFAULT or ctx.params.get("spark_conf")):
        raise InvalidSetting("--master and --spark-conf are for --engine spark")


@click.group(cls=Group)
def batch() -> None:
    """Score or forecast large data on Apache Beam (DirectRunner by default; Dataflow, Flink) or Apache Spark."""


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
@ENGINE
@MASTER
@SPARK_CONF
@STORE_OPTION
@BEAM_ARGS
def score_cmd(model, input_uri, output, key, table, rejects, max_reject_rate, query, batch_rows, runner, workers,
              run_id, verbose, engine, master, spark_conf, store, beam_args):  # fmt: skip
    """Score every row of --input with MODEL; each output row keeps its input columns, model, version, run id."""
    _quiet(verbose)
    _check_engine(click.get_current_context(), engine, runner, workers, beam_args)
    from conveyor.batch.jobs import Output, ScoreJob

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
    if engine == "spark":
        from conveyor.batch.spark import parse_conf
        from conveyor.batch.spark import score as score_on_spark

        report = score_on_spark(job, master, parse_conf(spark_conf))
    else:
        from conveyor.batch.score import score

        report = score(job)
    _echo(report, "scored")


@batch.command("forecast", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--history", required=True, metavar="URI", help="Sales history: CSV/Parquet/JSONL path or glob, or SQL.")
@click.option("--range", "steps", required=True, type=click.IntRange(1, 3660), help="Forecast horizon in periods.")
@OUTPUT
@click.option("--series-cols", default=None, metavar="COLS", help="Columns naming a series, e.g. store_nbr,family.")
@click.option("--date-col", default="date", show_default=True)
@click.option(
    "--date-format",
    default=None,
    metavar="FORMAT",
    help="How --date-col is written, as a strftime format (%d/%m/%Y, %m/%d/%Y, %Y%m%d) or ISO8601. "
    "Default: detected once from the first chunk; rows that do not match it are rejects.",
)
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
@ENGINE
@MASTER
@SPARK_CONF
@BEAM_ARGS
def forecast_cmd(name, history, steps, output, series_cols, date_col, date_format, sales_col, aggregate, from_store,
                 store, shards, table, rejects, max_reject_rate, query, runner, workers, run_id, verbose, engine, master,
                 spark_conf, beam_args):  # fmt: skip
    """Fit a forecaster per series of --history (or use NAME from the store with --from-store) and write
    --range forecasts with bounds per series and date.

    SQL outputs are keyed by (series, date), so `conveyor serve ... --predictions URL` answers
    GET /predictions/{series} from them, and a re-run replaces rather than duplicates.
    """
    _quiet(verbose)
    _check_engine(click.get_current_context(), engine, runner, workers, beam_args)
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import ForecastJob, Output

    job = ForecastJob(
        name=name,
        history=history,
        steps=steps,
        output=Output(output, ("series", "date"), table, rejects, max_reject_rate),
        spec=HistorySpec(date_col, sales_col, _columns(series_cols), date_format),
        aggregate=aggregate,
        shards=shards,
        query=query,
        run_id=run_id,
        beam_args=_beam_args(runner, workers, verbose, beam_args),
        store=store if from_store else None,
    )
    if engine == "spark":
        from conveyor.batch.spark import forecast as forecast_on_spark
        from conveyor.batch.spark import parse_conf

        report = forecast_on_spark(job, master, parse_conf(spark_conf))
    else:
        from conveyor.batch.forecast import forecast

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

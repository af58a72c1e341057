"""The `conveyor` command: train, register, serve and score models from one store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from conveyor.cli_options import STORE_OPTION, Group
from conveyor.errors import ConveyorError


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="conveyor-ml", prog_name="conveyor")
def main() -> None:
    """Conveyor takes a trained model to production.

    \b
    Quick start:
      conveyor train sales              # train the demo sales forecaster into ./models
      conveyor serve sales              # serve it on http://127.0.0.1:8080
      curl 'http://127.0.0.1:8080/predict?range=3'
    """


def _store(uri: str):
    from conveyor.store import ModelStore

    return ModelStore(uri)


# --- train ---------------------------------------------------------------------------------------
@main.group()
def train() -> None:
    """Train a model and register it as a new version in the store."""


@train.command("sales")
@click.option(
    "--data",
    "source",
    metavar="FILE|SQL-URL",
    help="History: CSV, Parquet or a SQLAlchemy URL. Default: the demo data shipped with Conveyor.",
)
@click.option("--query", default=None, help="SQL query when --data is a database URL [default: SELECT * FROM sales].")
@click.option(
    "--series-cols",
    default=None,
    metavar="COLS",
    help="Comma-separated columns naming a series, e.g. store_nbr,family. "
    "Default: a 'series' column if present, else one series.",
)
@click.option("--date-col", default="date", show_default=True)
@click.option(
    "--date-format",
    default=None,
    metavar="FORMAT",
    help="How --date-col is written, as a strftime format (%d/%m/%Y, %m/%d/%Y, %Y%m%d) or ISO8601. "
    "Default: detected from its values; recorded in the model's manifest.",
)
@click.option("--sales-col", default="sales", show_default=True)
@click.option(
    "--range-max",
    default=None,
    type=click.IntRange(1, 3660),
    help="Longest horizon the model will answer, in periods of the data's frequency "
    "[default: 365 days, 104 weeks or 24 months].",
)
@click.option(
    "--holdout",
    default=None,
    type=click.IntRange(1),
    help="Periods per cross-validation window (three windows end at the history's end) [default: from the data].",
)
@click.option(
    "--fill",
    type=click.Choice(["interpolate", "zero"]),
    default="interpolate",
    show_default=True,
    help="What a period without a sales row is: unknown (scored nowhere, filled for the models that need a "
    "complete series) or zero sales. Recorded in the manifest.",
)
@click.option(
    "--country",
    default=None,
    metavar="CODE",
    help="Add this country's public holidays (ISO code, e.g. US, GB, EC) to New Year and Christmas.",
)
@click.option(
    "--candidates",
    default="auto",
    show_default=True,
    metavar="auto|basic|all|NAMES",
    help="Models to cross-validate per series: basic = seasonal_naive, linear, holt_winters; all adds "
    "statsforecast's ets, arima, theta, mstl; auto = basic + ets, arima, theta for small monthly/quarterly jobs, "
    "else basic; or a comma-separated list of names.",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Processes fitting series in parallel (worth it from a few hundred series).",
)
@click.option("--name", default="sales", show_default=True, help="Model name in the store.")
@click.option(
    "--promote", "alias", default=None, metavar="ALIAS", help="Point ALIAS (e.g. production) at the new version."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the backtest plot here (it is always stored with the model).",
)
@STORE_OPTION
def train_sales_cmd(source, query, series_cols, date_col, date_format, sales_col, range_max, holdout, fill, country,
                    candidates, jobs, name, alias, plot_path, store):  # fmt: skip
    """Train the sales forecaster: per series, the candidate (or mean of the best few) that cross-validates best.

    Missing periods stay missing, New Year, Christmas and --country holidays are learned, the total is the sum of
    its series, and the 80% and 95% bands are calibrated on cross-validated errors."""
    from conveyor.sales_data import load_history
    from conveyor.training import train_and_register

    cols = [c.strip() for c in series_cols.split(",")] if series_cols else None
    history = load_history(
        source, query=query, date_col=date_col, sales_col=sales_col, series_cols=cols, date_format=date_format
    )
    used = history.attrs["date_format"]  # given or detected; None when the column held datetimes
    click.echo(
        f"history: {len(history):,} rows, {history['series'].nunique():,} series, "
        f"{history['date'].min():%Y-%m-%d} .. {history['date'].max():%Y-%m-%d}"
        + (f" (dates read as {used})" if used not in (None, "ISO8601") else "")
    )
    ms = _store(store)
    extra = {"read": {"date_col": date_col, "sales_col": sales_col, "series_cols": cols, "date_format": used}}
    if used:
        extra["date_format"] = used
    names = tuple(c.strip() for c in candidates.split(",")) if "," in candidates or candidates not in (
        "auto", "basic", "all") else candidates  # fmt: skip
    trained = train_and_register(
        history, ms, name, range_max=range_max, holdout=holdout, progress=True, plot_path=plot_path, extra=extra,
        fill=fill, country=country, candidates=names, n_jobs=jobs,
    )  # fmt: skip
    for warning in trained.warnings():
        click.echo(f"warning: {warning}", err=True)
    if alias:
        ms.promote(trained.ref, alias)
    click.echo(trained.line())
    click.echo("methods: " + ", ".join(f"{m} x{n}" for m, n in trained.summary["methods"].items()))
    from conveyor.forecast.report import cv_summary

    for line in cv_summary(trained.summary):
        click.echo(line)
    if alias:
        click.echo(f"{trained.ref.name}@{alias} -> {trained.ref.version}")


# --- models --------------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Register, list, inspect, promote and remove model versions."""


@models.command("add")
@click.argument("name")
@click.argument("source", metavar="FILE")
@click.option(
    "--flavor",
    type=click.Choice(["sklearn", "forecaster", "statsmodels", "mlflow", "function"]),
    default=None,
    help="How to load FILE [default: guessed from FILE].",
)
@click.option(
    "--example",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV/Parquet/JSONL with a few input rows: gives the signature when the artifact has none.",
)
@click.option("--promote", "alias", default=None, metavar="ALIAS", help="Point ALIAS at the new version.")
@STORE_OPTION
def models_add(name, source, flavor, example, alias, store):
    """Register an existing artifact (joblib/pickle/skops file, MLflow model, statsmodels pickle, .py:func)."""
    from conveyor.io import read_table

    frame = read_table(str(example)) if example is not None else None
    ms = _store(store)
    ref = ms.add(name, source, flavor=flavor, example=frame)
    if alias:
        ms.promote(ref, alias)
    sig = ms.manifest(ref)["signature"]
    click.echo(
        f"added {ref} ({ms.manifest(ref)['flavor']}): inputs "
        + ", ".join(f"{f['name']}:{f['type']}" for f in sig["inputs"])
    )


@models.command("list")
@STORE_OPTION
def models_list(store):
    """Every model with its versions and aliases."""
    from rich.console import Console
    from rich.table import Table

    ms = _store(store)
    names = ms.names()
    if not names:
        click.echo(f"no models in {store}: run `conveyor train sales` or `conveyor models add`")
        return
    table = Table("model", "versions", "aliases", "latest flavor", "created")
    for n in names:
        versions = ms.versions(n)
        latest = ms.manifest(f"{n}:{versions[-1]}")
        aliases = ", ".join(f"{a}->{v}" for a, v in ms.aliases(n).items())
        table.add_row(n, ",".join(map(str, versions)), aliases, latest["flavor"], latest["created"])
    Console().print(table)


@models.command("show")
@click.argument("ref", metavar="NAME[:VERSION|@ALIAS]")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@STORE_OPTION
def models_show(ref, as_json, store):
    """A version's manifest: flavor, signature, metrics, files and checksums."""
    ms = _store(store)
    m = ms.manifest(ref)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    click.echo(f"{m['name']}:{m['version']}  flavor {m['flavor']}  created {m['created']}")
    aliases = [a for a, v in ms.aliases(m["name"]).items() if v == m["version"]]
    if aliases:
        click.echo(f"aliases: {', '.join(aliases)}")
    click.echo("inputs:  " + ", ".join(_field(f) for f in m["signature"]["inputs"]))
    click.echo("outputs: " + ", ".join(f"{f['name']}:{f['type']}" for f in m["signature"]["outputs"]))
    metrics = m.get("metrics", {})
    if metrics.get("overall"):
        shown = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics["overall"].items())
        click.echo("metrics: " + ", ".join(shown))
    if "beats_naive_text" in metrics:
        methods = ", ".join(f"{k} x{v}" for k, v in metrics.get("methods", {}).items())
        click.echo(f"         {metrics['beats_naive_text']}; methods: {methods}")
    for rel, info in m["files"].items():
        click.echo(f"file:    {rel}  {info['size']:,} bytes  sha256 {info['sha256'][:16]}...")
    click.echo("signed:  " + ("yes (HMAC-SHA256)" if m.get("hmac") else "no"))


def _field(f: dict[str, Any]) -> str:
    text = f"{f['name']}:{f['type']}"
    if "min" in f or "max" in f:
        text += f"[{f.get('min', '')}..{f.get('max', '')}]"
    if "default" in f:
        text += f"={f['default']}"
    return text


@models.command("promote")
@click.argument("name")
@click.argument("version", type=click.IntRange(1))
@click.option("--alias", default="production", show_default=True)
@STORE_OPTION
def models_promote(name, version, alias, store):
    """Point ALIAS at VERSION (atomic: services following the alias swap to it)."""
    ref = _store(store).promote(f"{name}:{version}", alias)
    click.echo(f"{name}@{alias} -> {ref.version}")


@models.command("rm")
@click.argument("ref", metavar="NAME:VERSION")
@click.option("--force", is_flag=True, help="Also remove aliases that point to it.")
@STORE_OPTION
def models_rm(ref, force, store):
    """Remove one version."""
    removed = _store(store).remove(ref, force=force)
    click.echo(f"removed {removed}")


# --- evaluate ------------------------------------------------------------------------------------
@main.command()
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@click.option(
    "--data",
    "source",
    metavar="FILE|SQL-URL",
    help="History to evaluate on (CSV, Parquet or a SQLAlchemy URL), read as the model's training data was. "
    "Default: the demo data shipped with Conveyor.",
)
@click.option("--query", default=None, help="SQL query when --data is a database URL [default: SELECT * FROM sales].")
@click.option("--per-series", is_flag=True, help="Also print each series' method, MASE, sMAPE and band coverage.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the backtest chart (history, last cross-validation window, forecast, bands) to this PNG.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole evaluation as JSON.")
@STORE_OPTION
def evaluate(model, source, query, per_series, plot_path, as_json, store):
    """Score a sales forecaster on a history: cross-validation of every candidate and of the per-series choice
    against seasonal naive, band coverage, and the stored forecasts on any dates after the model's training."""
    import json

    from conveyor.errors import InvalidInput
    from conveyor.forecast import SalesForecaster, plot_backtest, train_sales
    from conveyor.forecast.report import ahead_lines, ahead_of_training, cv_summary, per_series_lines
    from conveyor.sales_data import load_history

    ms = _store(store)
    ref = ms.resolve(model)
    loaded = ms.load(ref)
    forecaster = loaded.predictor
    if not isinstance(forecaster, SalesForecaster):
        raise InvalidInput(f"{ref} is a {loaded.flavor} model, not a sales forecaster: evaluate scores forecasters")
    manifest = ms.manifest(ref)
    read = {k: v for k, v in manifest.get("read", {}).items() if v is not None}
    history = load_history(source, query=query, **read)
    training = forecaster.training
    fit = train_sales(
        history,
        range_max=forecaster.range_max,
        holdout=None,
        fill=training.get("fill", "interpolate"),
        country=training.get("country"),
        candidates=tuple(training["candidates"]) if training.get("candidates") else "auto",
        progress=not as_json,
    )
    summary = fit.summary()
    ahead = ahead_of_training(forecaster, history)
    if plot_path is not None:
        plot_backtest(fit, history, plot_path)
    if as_json:
        click.echo(json.dumps({"model": str(ref), "cross_validation": summary, "ahead_of_training": ahead}))
        return
    click.echo(
        f"evaluated {ref} on {len(history):,} rows, {history['series'].nunique():,} series, "
        f"{history['date'].min():%Y-%m-%d} .. {history['date'].max():%Y-%m-%d}"
    )
    for line in cv_summary(summary):
        click.echo(line)
    if per_series:
        for line in per_series_lines(summary):
            click.echo(line)
    if ahead is None:
        click.echo(f"ahead of training: no dates after {forecaster.last_date[:10]} in the data to score")
    else:
        for line in ahead_lines(ahead):
            click.echo(line)
    if plot_path is not None:
        click.echo(f"wrote {plot_path}")


# --- serve ---------------------------------------------------------------------------------------
def _setting(flag: str, metavar: str, text: str) -> Any:
    """A serve flag passed on as typed: conveyor.settings validates flags and CONVEYOR_* variables alike."""
    env = "CONVEYOR_" + flag.removeprefix("--").upper().replace("-", "_")
    return click.option(flag, default=None, metavar=metavar, help=f"{text} [env {env}]")


@main.command()
@click.argument("models", nargs=-1, metavar="NAME[:VERSION|@ALIAS]...", envvar="CONVEYOR_MODEL")
@click.option("--all", "all_models", is_flag=True, help="Serve every model of the store. [env CONVEYOR_ALL_MODELS]")
@_setting("--host", "ADDRESS", "Address to bind [127.0.0.1; 0.0.0.0 in a container].")
@_setting("--port", "INTEGER", "HTTP port: REST, the Open Inference Protocol (/v2), /docs [8080].")
@_setting(
    "--grpc-port",
    "INTEGER",
    "Also serve the Open Inference Protocol over gRPC on this port, with the standard health service "
    "(grpc.health.v1) for Kubernetes probes [none].",
)
@_setting(
    "--grpc-listeners",
    "INTEGER",
    "gRPC servers per worker sharing --grpc-port, 1..64: each accepts one call at a time, so several take "
    "calls from several connections together, and those calls batch [8].",
)
@_setting("--metrics-port", "INTEGER", "Serve /metrics on this port only, not on --port [none: on --port].")
@_setting("--workers", "INTEGER", "gunicorn worker processes, 1..64 [one per CPU it may use: affinity, cgroup quota].")
@_setting("--max-batch-rows", "INTEGER", "Most rows per predict call [256].")
@_setting("--max-wait-ms", "NUMBER", "Extra wait for a batch to fill, 0..1000 [0: adaptive only].")
@_setting("--max-body-bytes", "INTEGER", "Largest request body; more answers 413 [8388608: 8 MiB].")
@_setting("--max-rows-per-request", "INTEGER", "Most rows in one request; more answers 413 [100000].")
@_setting(
    "--max-forecast-steps",
    "INTEGER",
    "Most forecast steps (range summed over the rows) in one request; more answers 413 [1000000].",
)
@_setting("--request-timeout", "SECONDS", "Time for a prediction before it answers 504 [30].")
@_setting("--poll-interval", "SECONDS", "Time between alias checks for hot reload; 0 turns it off [5].")
@_setting("--graceful-timeout", "SECONDS", "Time in-flight requests get to finish after SIGTERM [30].")
@_setting("--predictions", "URL", "Answer GET /predictions/{key} from this SQL database or redis://host:port/db.")
@_setting("--predictions-table", "NAME", "Table (SQL) or key prefix (Redis) of stored predictions [predictions].")
@_setting("--log-level", "LEVEL", "debug, info, warning, error or critical [info].")
@STORE_OPTION
def serve(models, all_models, store, **flags):
    """Serve one or more models over HTTP (and gRPC with --grpc-port) from gunicorn + uvicorn workers.

    \b
    Each model answers at /v2/models/NAME (Open Inference Protocol, REST and gRPC) and at
    /predict?model=NAME; the first one named also answers plain GET /predict?range=N and POST /predict.
    A reference without a version follows its alias (production, else the latest) and is hot-reloaded.
    A model that cannot be loaded is refused and reported while the others serve; the repository API
    (POST /v2/repository/index, /v2/repository/models/NAME/load and /unload) lists, loads and unloads them.

    \b
    Ports: --port answers HTTP (REST, /v2, /docs, /metrics unless --metrics-port); --grpc-port adds
    inference.GRPCInferenceService (KServe, Triton and MLServer clients); every worker serves both, gRPC
    from --grpc-listeners servers on the port so that calls from many connections batch.

    \b
    Examples:
      conveyor serve sales
      conveyor serve sales iris@production churn:3 --grpc-port 8081
      conveyor serve --all --workers 4
    """
    from conveyor.errors import InvalidInput
    from conveyor.serve.server import run
    from conveyor.settings import load_serve_settings, ref_name

    ms = _store(store)
    if all_models or _env_flag("CONVEYOR_ALL_MODELS"):
        if models:
            raise InvalidInput(f"name models or give --all, not both (named: {' '.join(models)})")
        models = tuple(ms.names())
        if not models:
            raise InvalidInput(f"--all: the store {store} has no model; train or register one first")
    if not models:
        raise InvalidInput("name the model(s) to serve, e.g. `conveyor serve sales`, or give --all")
    settings = load_serve_settings({"model": " ".join(models), "store": store, **flags})
    names = [ref_name(ref) for ref in settings.requested_refs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # one server serves a name once: which of the references was meant?
        raise InvalidInput(f"model(s) {twice} named more than once: one server serves each name once")
    if settings.grpc_port is not None:
        from conveyor.serve.oip import check_grpc

        check_grpc(settings.host, settings.grpc_port)  # the extra and a free port, refused here in one line
    served = []
    for ref in settings.model_refs:
        resolved = ms.resolve(ref)  # an unknown name or version fails here, in one line
        try:
            model = ms.load(resolved)  # verified once here: workers load their own copy
        except ConveyorError as exc:
            if len(settings.model_refs) == 1:
                raise
            click.echo(f"warning: not serving {ref}: {exc}", err=True)  # the others serve; the index tells why
            continue
        served.append((resolved, set(model.signature.input_names)))
    if not served:
        raise InvalidInput("none of the models named could be loaded (see the warnings above)")
    if settings.predictions:
        from conveyor.sinks import check_reader

        check_reader(settings.predictions, settings.predictions_table)  # reachable now, or refused in one line
    url = f"http://{settings.host}:{settings.port}"
    inputs = served[0][1]
    example = "/predict?range=1" if {"range", "series"} <= inputs else "/docs"
    workers = f"{settings.workers} worker{'s' if settings.workers != 1 else ''}"
    names = ", ".join(str(r) for r, _ in served)
    grpc = f" and gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port else ""
    click.echo(f"serving {names} from {store} on {url}{grpc} ({workers}); try: curl '{url}{example}'")
    run(settings)


def _env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --- predict -------------------------------------------------------------------------------------
@main.command()
@click.argument("model", metavar="NAME[:VERSION|@ALIAS]")
@click.option("--input", "input_path", required=True, metavar="FILE", help="CSV, Parquet or JSONL rows.")
@click.option("--output", "output_path", required=True, metavar="FILE", help="CSV, Parquet or JSONL.")
@click.option("--batch-size", default=100_000, show_default=True, type=click.IntRange(1))
@STORE_OPTION
def predict(model, input_path, output_path, batch_size, store):
    """Score a file locally with MODEL; the input columns are kept beside the predictions."""
    import sys

    import pandas as pd
    from rich.progress import Progress

    from conveyor.io import filesystem, read_table, table_format, write_table

    table_format(output_path)  # an output that cannot be written is refused before any work
    filesystem(output_path)
    m = _store(store).load(model)
    frame = read_table(input_path)
    parts = []
    with Progress(transient=True, disable=not sys.stdout.isatty()) as progress:  # a pipe gets the result only
        task = progress.add_task(f"scoring with {m.ref}", total=len(frame))
        for start in range(0, max(len(frame), 1), batch_size):
            chunk = frame.iloc[start : start + batch_size]
            try:
                out = m.predict_frame(chunk)
            except ConveyorError as exc:
                raise type(exc)(f"{input_path}: {exc}") from None
            parts.append(out)
            progress.advance(task, len(chunk))
    predictions = pd.concat(parts, ignore_index=True)
    predictions = predictions.drop(columns=[c for c in predictions.columns if c in frame.columns])
    result = pd.concat([frame.reset_index(drop=True), predictions], axis=1)
    write_table(result, output_path)
    click.echo(f"wrote {len(result):,} predictions by {m.ref} to {output_path}")


# --- data ----------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Sales data sets for demos and benchmarks."""


@data.command("generate")
@click.option("--stores", default=54, show_default=True, type=click.IntRange(1))
@click.option("--families", default=33, show_default=True, type=click.IntRange(1))
@click.option("--days", default=730, show_default=True, type=click.IntRange(14))
@click.option("--seed", default=0, show_default=True)
@click.option("--output", required=True, metavar="FILE", help="CSV or Parquet.")
def data_generate(stores, families, days, seed, output):
    """Synthetic sales in Kaggle's Store Sales shape (date, store_nbr, family, sales)."""
    from conveyor.io import write_table
    from conveyor.sales_data import generate_sales

    frame = generate_sales(stores, families, periods=days, seed=seed)
    write_table(frame, output)
    click.echo(f"wrote {len(frame):,} rows ({stores * families:,} series x {days} days) to {output}")


def _register_command_groups() -> None:
    """Command groups that live beside the code they drive (their heavy imports stay inside the commands)."""
    from conveyor.batch.cli import batch
    from conveyor.deploy.cli import deploy
    from conveyor.plan.cli import plan
    from conveyor.stream.cli import stream
    from conveyor.workflow.cli import pipeline

    main.add_command(batch)
    main.add_command(deploy)
    main.add_command(pipeline)
    main.add_command(plan)
    main.add_command(stream)


_register_command_groups()

if __name__ == "__main__":
    main()

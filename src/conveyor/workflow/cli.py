"""`conveyor pipeline`: write a DAG file, run it on an embedded Airflow, list runs, rerun part of a run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from conveyor.cli_options import STORE_OPTION, Group
from conveyor.errors import InvalidSetting, NotFound

HOME = click.option(
    "--home",
    envvar="CONVEYOR_AIRFLOW_HOME",
    default=".conveyor/airflow",
    show_default=True,
    metavar="DIR",
    help="The embedded Airflow's home: its SQLite metadata (runs, task states, XComs) and logs "
    "(env CONVEYOR_AIRFLOW_HOME).",
)
DAGS = click.option(
    "--dags-folder",
    envvar="CONVEYOR_DAGS_FOLDER",
    default="dags",
    show_default=True,
    metavar="DIR",
    help="Folder of DAG files (env CONVEYOR_DAGS_FOLDER).",
)

DAG_FILE = '''"""{name}: the sales forecast pipeline, written by `conveyor pipeline init` on {today}.

extract -> validate_data -> train -> evaluate -> promote -> forecast -> report

Review and commit this file like any code. `conveyor pipeline run {name}` runs it here on an embedded
airflow; `airflow standalone` and Cloud Composer run it from their dags folder. Every keyword argument:
help(conveyor.workflow.SalesPipeline).
"""

import datetime as dt

from conveyor.workflow import Alerts, DataChecks, Gate, sales_pipeline

dag = sales_pipeline(
    {name!r},
    data={data!r},  # history: a CSV/Parquet path or glob, gs://..., or a SQL URL (None: the demo data)
    query=None,  # the SQL query when data is a SQL URL [default: SELECT * FROM sales]
    series_cols={series_cols!r},  # columns naming a series (None: a `series` column, or the demo's)
    store={store!r},  # the model store `conveyor serve` reads
    predictions={predictions!r},  # `conveyor serve --predictions` answers from it
    range={range},  # periods forecast per series
    schedule={schedule!r},
    owner={owner!r},
    retries=2,  # with exponential backoff from retry_delay up to max_retry_delay
    retry_delay=dt.timedelta(minutes=2),
    execution_timeout=dt.timedelta(hours=1),
    checks=DataChecks(max_age=None, closed_days=(), max_missing=0),
    gate=Gate(margin=0.05, alias="production"),
    alerts=Alerts(email={email!r}, webhook_conn_id={webhook!r}),
)
'''


@click.group(cls=Group)
def pipeline() -> None:
    """Batch model pipelines on Apache Airflow: train, gate, promote, forecast, report.

    \b
      conveyor pipeline init sales          # write dags/sales.py: review and commit it
      conveyor pipeline run sales           # one run on an embedded Airflow (SQLite, in this process)
      conveyor pipeline runs sales          # runs with their states
      conveyor pipeline rerun sales RUN_ID --failed   # the failed task and what follows it
    """


def _local(uri: str) -> str:
    """A path the DAG file can hold: absolute, since Airflow runs tasks from another working directory."""
    if "://" in uri:
        return uri
    return str(Path(uri).resolve())


def _sql_local(url: str) -> str:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


@pipeline.command("init")
@click.argument("name")
@DAGS
@click.option("--data", default=None, metavar="FILE|SQL-URL", help="History to train on [default: the demo data].")
@click.option("--series-cols", default=None, metavar="COLS", help="Comma-separated columns naming a series.")
@STORE_OPTION
@click.option(
    "--predictions",
    default="sqlite:///predictions.db",
    show_default=True,
    metavar="URL",
    help="Where forecasts go (SQL or Redis): what `conveyor serve --predictions` reads.",
)
@click.option("--range", "steps", default=90, show_default=True, type=click.IntRange(1, 3660), help="Periods forecast.")
@click.option("--schedule", default="@daily", show_default=True, help="Cron expression or preset; 'none': manual.")
@click.option("--owner", default="data-team", show_default=True, help="The team that owns the pipeline.")
@click.option("--email", multiple=True, metavar="ADDRESS", help="Alert this address (repeatable).")
@click.option("--webhook-conn-id", default=None, metavar="CONN", help="Airflow connection of a Slack-style webhook.")
@click.option("--force", is_flag=True, help="Overwrite an existing DAG file.")
def init_cmd(name, dags_folder, data, series_cols, store, predictions, steps, schedule, owner, email,
             webhook_conn_id, force):  # fmt: skip
    """Write DAGS_FOLDER/NAME.py: the sales pipeline as a DAG file to review and commit."""
    from conveyor.store import check_name

    check_name(name, "pipeline name")
    target = Path(dags_folder) / f"{name}.py"
    if target.exists() and not force:
        raise InvalidSetting(f"{target} exists: edit it, or pass --force to write it again")
    text = DAG_FILE.format(
        name=name,
        today=dt.date.today().isoformat(),
        data=_local(data) if data and "://" not in data else data,
        series_cols=tuple(c.strip() for c in series_cols.split(",")) if series_cols else None,
        store=_local(store),
        predictions=_sql_local(predictions),
        range=steps,
        schedule=None if schedule.lower() == "none" else schedule,
        owner=owner,
        email=tuple(email),
        webhook=webhook_conn_id,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    click.echo(f"wrote {target}: run it with  conveyor pipeline run {name} --dags-folder {dags_folder}")


def _embedded(home: str, dags_folder: str):
    from conveyor.workflow.embedded import Embedded

    return Embedded(home, dags_folder)


def _finish(emb, name: str, row) -> None:
    for t in row.tasks:  # what never ran (after a skip or a failure) has no line yet
        if t.tries == 0 and t.state != "success":
            click.echo(f"  {t.task_id:<14} {t.state:<15}      -  not run")
    report = emb.report(name, row.run_id)
    if report:
        click.echo("")
        click.echo(report)
    took = f" in {row.seconds:.1f}s" if row.seconds is not None else ""
    click.echo(f"run {row.run_id}: {row.state}{took}")
    if row.state != "success":
        failed = [t.task_id for t in row.tasks if t.state == "failed"]
        where = f" at {', '.join(failed)}" if failed else ""
        click.secho(
            f"error: the run failed{where}; after fixing the cause: "
            f"conveyor pipeline rerun {name} '{row.run_id}' --failed   (log: {emb.log_path})",
            fg="red",
            err=True,
        )
        raise SystemExit(1)


@pipeline.command("run")
@click.argument("name")
@click.option("--data", default=None, metavar="FILE|SQL-URL", help="History for this run [default: the DAG's].")
@click.option("--query", default=None, help="SQL query when --data is a database URL.")
@DAGS
@HOME
def run_cmd(name, data, query, dags_folder, home):
    """Run the DAG NAME once, in this process, and print each task's state and duration."""
    if data and "://" not in data and not Path(data).exists():
        raise NotFound(f"history file {data!r} does not exist")
    emb = _embedded(home, dags_folder)
    conf = {"data": _local(data) if data and "://" not in data else data, "query": query}
    conf = {k: v for k, v in conf.items() if v is not None}
    click.echo(f"running {name} from {emb.dags_folder} (Airflow home {emb.home})")
    row = emb.run(name, conf)
    _finish(emb, name, row)


@pipeline.command("runs")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="Most recent runs shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (run, state, tasks) instead of a table.")
@DAGS
@HOME
def runs_cmd(name, limit, as_json, dags_folder, home):
    """NAME's runs, newest first, with their states and each task's."""
    emb = _embedded(home, dags_folder)
    rows = emb.runs(name, limit)
    if as_json:
        click.echo(json.dumps([_row_dict(r) for r in rows], indent=2, default=str))
        return
    if not rows:
        click.echo(f"{name} has no runs yet: conveyor pipeline run {name}")
        return
    width = max(len(r.run_id) for r in rows)
    click.echo(f"{'run':<{width}}  {'state':<8} {'started':<19} {'seconds':>7}  tasks")
    for r in rows:
        tasks = " ".join(f"{t.task_id}:{t.state}" for t in r.tasks)
        started = f"{r.started:%Y-%m-%d %H:%M:%S}" if r.started else "-"
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        click.echo(f"{r.run_id:<{width}}  {r.state:<8} {started:<19} {seconds:>7}  {tasks}")


def _row_dict(row) -> dict:
    return {
        "run_id": row.run_id,
        "state": row.state,
        "started": row.started,
        "seconds": row.seconds,
        "tasks": [t.__dict__ for t in row.tasks],
    }


@pipeline.command("rerun")
@click.argument("name")
@click.argument("run_id")
@click.option("--failed", is_flag=True, help="Re-execute the failed task(s) and everything downstream.")
@click.option("--from", "from_task", default=None, metavar="TASK", help="Re-execute TASK and everything downstream.")
@DAGS
@HOME
def rerun_cmd(name, run_id, failed, from_task, dags_folder, home):
    """Re-execute part of run RUN_ID (or "latest"); upstream tasks are not run again, their results are reused.

    Uses Airflow's clear (as the UI does), so the same rerun works in the Airflow UI and on Cloud Composer.
    """
    if failed == (from_task is not None):
        raise click.UsageError("pass exactly one of --failed or --from TASK")
    emb = _embedded(home, dags_folder)
    run_id = emb.resolve_run(name, run_id)
    click.echo(f"rerunning {name} run {run_id} " + ("from its failed task(s)" if failed else f"from {from_task}"))
    row = emb.rerun(name, run_id, from_task=from_task)
    _finish(emb, name, row)

"""Batch on Apache Spark: the same jobs as on Beam, on the master a team names (a standalone cluster, YARN,
Kubernetes or local[N]).

The driver plans exactly as the Beam engine does (`jobs.plan_score`: every refusal before the job starts).
Executors then read their inputs with Conveyor's own readers (so a bad line is named and refused as on Beam),
validate, predict and label each chunk with the model loaded once per Python worker, and write through the
same sinks: a file part is named after its chunk and SQL and Redis rows are upserts by key, so a task Spark
retries rewrites what it wrote. Only per-task counts travel back to the driver, as Arrow batches.

Work in progress (issue 12): score from files and SQL into files, SQL and Redis; forecast comes next.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from conveyor.batch import sources
from conveyor.batch.jobs import (
    Report,
    ScoreJob,
    conveyor_error,
    finish,
    labelled,
    part_name,
    plan_score,
    validate_chunk,
)
from conveyor.errors import ConveyorError, InvalidSetting, require
from conveyor.model import Model
from conveyor.sinks import kind, open_sink

require("pyspark", "spark")
# PySpark 4.3 warns on each use of pandas >= 3; its Arrow and pandas-function paths work (they are what we use).
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="pyspark")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def runs_here(master: str) -> bool:
    """Executors on this machine (local[N], a loopback standalone master): they can run this very Python."""
    if master.startswith("local"):
        return True
    return master.startswith("spark://") and (urlsplit(master).hostname or "") in LOOPBACK


def parse_conf(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`--spark-conf k=v` values as a dict; a pair without '=' is one line saying so."""
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidSetting(f"--spark-conf {pair!r}: expected KEY=VALUE, e.g. spark.executor.memory=2g")
        conf[key.strip()] = value
    return conf


def session(master: str, conf: Mapping[str, str] | None = None, app: str = "conveyor") -> Any:
    """A SparkSession on `master`; `conf` (from --spark-conf) wins over every default set here."""
    from pyspark.sql import SparkSession

    log4j = resources.files("conveyor") / "data" / "spark-log4j2.properties"
    java = f"-Dlog4j2.configurationFile=file:{log4j}"
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.executorEnv.PYTHONWARNINGS": "ignore::FutureWarning",
        "spark.driver.extraJavaOptions": java,
        "spark.executor.extraJavaOptions": java,
        # Conveyor plans its own partitions (one per input chunk or group of series): keep them apart.
        "spark.sql.adaptive.coalescePartitions.enabled": "false",
    }
    if runs_here(master):
        defaults["spark.pyspark.python"] = sys.executable
        defaults["spark.driver.host"] = "127.0.0.1"
        defaults["spark.driver.bindAddress"] = "127.0.0.1"
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app)
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def stop(spark: Any) -> None:
    """End the application and the driver's JVM (`spark.stop()` alone leaves the JVM until Python exits)."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    finally:
        if proc is not None:
            proc.stdin.close()  # the JVM exits at the end of its stdin
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
        SparkContext._gateway = None
        SparkContext._jvm = None


# --- score -------------------------------------------------------------------------------------------------

COUNTS = "rows_in long, rows_out long, rejected long"
_models: dict[tuple[str, str], Model] = {}


def _model(store: str, ref: str) -> Model:
    """The verified model, loaded once per executor Python worker (Spark reuses its workers across tasks)."""
    model = _models.get((store, ref))
    if model is None:
        from conveyor.store import ModelStore

        model = _models[(store, ref)] = ModelStore(store).load(ref)
    return model


def score_tasks(job: ScoreJob, ref: str, run_id: str, rejects: str) -> Callable[[Iterator[pd.DataFrame]], Any]:
    """The function each task runs over its (source, path) rows: read, validate, predict, label, write."""
    output, store, rows, query = job.output, job.store, job.batch_rows, job.query

    def run(tasks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _model(store, ref)
        sink = open_sink(output.uri, key=output.key, table=output.table, replace=output.replace)
        refused_sink = open_sink(rejects, key=(), table="rejects")
        is_file = kind(output.uri) == "file"
        try:
            for frame in tasks:
                for number, path in zip(frame["source"].tolist(), frame["path"].tolist(), strict=True):
                    counts = [0, 0, 0]
                    for chunk in sources.read_chunks(path, rows, query):
                        counts[0] += len(chunk.frame) + len(chunk.rejects)
                        part = part_name(number, chunk.start)
                        refused = list(chunk.rejects)
                        if len(chunk.frame):
                            batch, bad = validate_chunk(model.signature, number, chunk)
                            refused += bad
                            if batch is not None:
                                batch = replace(batch, predictions=model.predict(batch.inputs))
                                out = labelled(batch, model.name, model.version, run_id)
                                counts[1] += sink.write_frame(out, part=part) if is_file else sink.write_frame(out)
                        if refused:
                            counts[2] += refused_sink.write_frame(pd.DataFrame.from_records(refused), part=part)
                    yield pd.DataFrame([counts], columns=["rows_in", "rows_out", "rejected"])
        finally:
            sink.close()
            refused_sink.close()

    return run


def score(job: ScoreJob, master: str, conf: Mapping[str, str] | None = None) -> Report:
    """Score every row of `job.input` on Spark; the same outputs, rejects, run id and report as `score.score`."""
    if kind(job.output.uri) == "bigquery":
        raise InvalidSetting("--engine spark writes files, SQL and Redis; for BigQuery use --engine beam")
    from pyspark import SparkContext

    plan = plan_score(job)
    # A session already running in this process (a notebook's, a platform's, any thread's) is used and left running.
    running = SparkContext._active_spark_context is not None
    spark = session(master, conf)
    try:
        tasks = spark.sparkContext.parallelize(list(enumerate(plan.paths)), len(plan.paths))
        frame = spark.createDataFrame(tasks, "source long, path string")
        run = score_tasks(job, str(plan.ref), plan.run_id, plan.rejects_path)
        counts = frame.mapInPandas(run, COUNTS).toPandas()
    except ConveyorError:
        raise
    except Exception as exc:
        raise conveyor_error(exc) from exc  # a task's error arrives as text inside a Java exception
    finally:
        if not running:
            stop(spark)
    totals = {name: int(counts[name].sum()) for name in counts.columns}
    return finish(
        job.output, totals, plan.run_id, str(plan.ref), plan.started, plan.rejects_path, plan.scratch, plan.paths
    )

"""Batch on Apache Spark: the same jobs as on Beam, on the master a team names (a standalone cluster, YARN,
Kubernetes or local[N]).

The driver plans exactly as the Beam engine does (`jobs.plan_score`: every refusal before the job starts).
Executors then read their inputs with Conveyor's own readers (so a bad line is named and refused as on Beam),
validate, predict and label each chunk with the model loaded once per Python worker, and write through the
same sinks: a file part is named after its chunk and SQL and Redis rows are upserts by key, so a task Spark
retries rewrites what it wrote. Only per-task counts travel back to the driver, as Arrow batches.

Forecasting groups the tidy history by shard (`applyInPandas`): each group is fitted on an executor as a Beam
worker fits a shard, and only the partial sums for `--aggregate` come back. A master that is wrong, down or
without room for an executor fails in seconds with one line, where Spark alone would retry or wait.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from conveyor.batch import forecasting, sources
from conveyor.batch.jobs import (
    ForecastJob,
    ForecastPlan,
    Report,
    ScoreJob,
    conveyor_error,
    finish,
    labelled,
    part_name,
    plan_forecast,
    plan_score,
    validate_chunk,
)
from conveyor.errors import ConveyorError, InvalidSetting, first_line, require
from conveyor.io import table_format
from conveyor.model import Model
from conveyor.sinks import kind, open_sink

require("pyspark", "spark")
# PySpark 4.3 warns on each use of pandas >= 3; its Arrow and pandas-function paths work (they are what we use).
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="pyspark")
# A failed job's Java stack trace, as a warning just before the error itself (which becomes one line).
warnings.filterwarnings("ignore", message="toPandas attempted Arrow optimization")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# What Spark 4's JVM prints at every start (the Vector API module it loads; a log level the session sets again
# right after): not news to a user.
JVM_NOISE = (b"WARNING: Using incubator modules", b"Setting default log level to", b"To adjust logging level use")


# The masters Spark 4 knows: local, local[N], local[*], local[N,F], local-cluster[N,C,M], spark://H:P[,H:P],
# yarn, k8s://[https://]HOST[:PORT].
_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://[^/\s]+|yarn|k8s://\S+"
)
_JAVA_ERROR = re.compile(r"([\w.$]*(?:Exception|Error)): (.+)$")
# How long a job waits for its first executor before it fails (180 s; a master without free workers would keep
# it waiting for ever); `--spark-conf spark.conveyor.executorTimeout=600` for clusters that start them slowly.
EXECUTOR_TIMEOUT = "spark.conveyor.executorTimeout"
# How long a start may wait on a standalone master once the driver's JVM is up; off by default, as creating the
# context takes long on a loaded machine: Spark itself gives up after a minute of registration retries.
START_TIMEOUT = "spark.conveyor.startTimeout"
SPLIT_FILES = 1_000


def check_master(master: str, timeout: float = 5.0) -> None:
    """A master URL Spark takes, and a standalone master or Kubernetes API that answers: a wrong URL or a
    cluster that is down fails in seconds, not after Spark's minute of registration retries."""
    if not _MASTER.fullmatch(master):
        raise InvalidSetting(
            f"--master {master!r}: expected local[N], local[*], spark://HOST:PORT, yarn or k8s://https://HOST:PORT"
        )
    if master == "yarn" and not (os.environ.get("HADOOP_CONF_DIR") or os.environ.get("YARN_CONF_DIR")):
        raise InvalidSetting(
            "--master yarn: set HADOOP_CONF_DIR (or YARN_CONF_DIR) to the folder of the cluster's yarn-site.xml"
        )
    endpoints = _endpoints(master)
    errors = []
    for host, port in endpoints:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc or type(exc).__name__}")
    if errors:
        what = "Kubernetes API server" if master.startswith("k8s://") else "Spark master"
        raise ConveyorError(
            f"cannot reach the {what} of --master {master} ({'; '.join(errors)}): is the cluster up, and is that "
            "the master's own port (7077 for a standalone master, not its web UI's)?"
        )


def _endpoints(master: str) -> list[tuple[str, int]]:
    """The (host, port) pairs to probe: a standalone master's (one or several) or the Kubernetes API's."""
    if master.startswith("spark://"):
        hosts, default = master.removeprefix("spark://").split(","), 7077
    elif master.startswith("k8s://"):
        api = master.removeprefix("k8s://")
        hosts, default = [urlsplit(api if "://" in api else f"https://{api}").netloc], 443
    else:
        return []
    pairs = []
    for netloc in hosts:
        parts = urlsplit(f"//{netloc}")
        try:
            pairs.append((parts.hostname or "", parts.port or default))
        except ValueError:
            raise InvalidSetting(f"--master {master!r}: {netloc!r} is not HOST:PORT") from None
    return pairs


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
    jvm = _JvmStderr(JVM_NOISE)
    failed: Exception | None = None
    wait = _seconds(conf or {}, START_TIMEOUT, 0)
    gave_up = _StartTimeout(master, wait) if master.startswith("spark://") and wait > 0 else None
    with jvm.attached():
        try:
            spark = builder.getOrCreate()
        except Exception as exc:  # the JVM's reason is in its stderr or inside a Java exception's text
            failed = exc
        finally:
            if gave_up is not None:
                gave_up.cancel()
    if failed is not None:
        if gave_up is not None and gave_up.fired:
            _forget_gateway()
            raise ConveyorError(gave_up.reason) from None
        if master.startswith("spark://") and "stopped SparkContext" in str(failed):  # Spark's own give-up
            raise ConveyorError(
                f"the Spark master at {master} did not take the application (Spark retried for a minute): is that a "
                "Spark master's own port (7077 by default, not its web UI's), and is the master the same Spark version?"
            ) from None
        raise ConveyorError(f"Spark did not start on {master}: {jvm.reason(failed)}") from failed
    jvm.release()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


class _StartTimeout(threading.Thread):
    """Ends a start that waits on a standalone master which does not answer Spark's RPC (a port that takes TCP
    but is no master, a proxy): Spark itself retries for a minute and more before it gives up. The clock starts
    once the driver's JVM is up, so a slow machine's JVM start does not count."""

    def __init__(self, master: str, seconds: float) -> None:
        super().__init__(name="spark-start", daemon=True)
        self.seconds, self.fired, self.done = seconds, False, threading.Event()
        self.reason = (
            f"the Spark master at {master} did not take the application in {seconds:.0f}s: is that a Spark "
            "master's own port (7077 by default, not its web UI's), and is the master the same Spark version? "
            f"(--spark-conf {START_TIMEOUT}=SECONDS waits longer)"
        )
        self.start()

    def cancel(self) -> None:
        self.done.set()

    def run(self) -> None:
        from pyspark import SparkContext

        while (proc := getattr(SparkContext._gateway, "proc", None)) is None:
            if self.done.wait(0.2):
                return
        if not self.done.wait(self.seconds):
            self.fired = True
            proc.kill()  # the driver's JVM: the call waiting on it returns with an error


def _forget_gateway() -> None:
    from pyspark import SparkContext

    SparkContext._gateway = SparkContext._jvm = SparkContext._active_spark_context = None


class _JvmStderr:
    """The stderr of the processes started meanwhile (the driver's JVM), read through a pipe for their lifetime:
    held while Spark starts (a failed start becomes one line, not a Java stack trace), then passed on without
    the start-up chatter."""

    def __init__(self, noise: tuple[bytes, ...]) -> None:
        self.noise, self.held, self.holding = noise, [], True
        self.lock = threading.Lock()
        self.pump: threading.Thread | None = None
        self.out: Any = None

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real stderr (a notebook kernel): nothing to filter
            yield
            return
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.out = os.fdopen(os.dup(saved), "wb", buffering=0)
        self.pump = threading.Thread(target=self._pump, args=(read,), name="spark-stderr", daemon=True)
        self.pump.start()
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as lines, self.out as out:
            for line in lines:
                with self.lock:
                    if line.startswith(self.noise):
                        continue
                    if self.holding:
                        self.held.append(line)
                    else:
                        out.write(line)

    def release(self) -> None:
        """From now on the JVM's lines reach stderr; what it said while starting too."""
        with self.lock:
            self.holding = False
            held, self.held = self.held, []
            for line in held:
                self.out.write(line)  # only lines the pump read: self.out exists

    def reason(self, exc: Exception) -> str:
        """The Java exception's message behind a failed start (an exited JVM said it on stderr)."""
        if self.pump is not None:
            self.pump.join(2)  # the rest of an exited JVM's last words
        with self.lock:
            said = [line.decode(errors="replace") for line in self.held]
        for line in [*str(exc).splitlines(), *said]:
            found = _JAVA_ERROR.search(line)
            if found and "Py4J" not in found.group(1):
                return found.group(2).strip()
        return first_line(exc)


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
        _forget_gateway()


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
        try:
            for frame in tasks:
                for number, chunks in _task_inputs(frame, rows, query):
                    counts = [0, 0, 0]
                    for chunk in chunks:
                        counts[0] += len(chunk.frame) + len(chunk.rejects)
                        part = part_name(number, chunk.start)
                        refused = list(chunk.rejects)
                        if len(chunk.frame):
                            batch, bad = validate_chunk(model.signature, number, chunk)
                            refused += bad
                            if batch is not None:
                                batch = replace(batch, predictions=model.predict(batch.inputs))
                                out = labelled(batch, model.name, model.version, run_id)
                                counts[1] += _write(sink, output.uri, out, part)
                        if refused:
                            counts[2] += refused_sink.write_frame(pd.DataFrame.from_records(refused), part=part)
                    yield pd.DataFrame([counts], columns=["rows_in", "rows_out", "rejected"])
        finally:
            sink.close()
            refused_sink.close()

    return run


def _refuse_bigquery(uri: str) -> None:
    if kind(uri) == "bigquery":
        raise InvalidSetting("--engine spark writes files, SQL and Redis; for BigQuery use --engine beam")


@contextlib.contextmanager
def _on_spark(master: str, conf: Mapping[str, str] | None, paths: list[str], rows: int) -> Iterator[tuple[Any, Any]]:
    """A session and the job's tasks, one row and partition each (`_task_rows`); a task's error becomes one
    line. A session already running in this process (a notebook's, any thread's) is used and left running."""
    from pyspark import SparkContext

    running = SparkContext._active_spark_context is not None
    wait = _seconds(conf or {}, EXECUTOR_TIMEOUT, 180)
    if not running:
        check_master(master)
    spark = session(master, conf)
    watch = None if master.startswith("local") else _ExecutorWatch(spark.sparkContext, wait)
    try:
        work = _task_rows(paths, rows)
        inputs = spark.sparkContext.parallelize(work, len(work))
        yield spark, spark.createDataFrame(inputs, "source long, path string, first long, stop long")
    except ConveyorError:
        raise
    except Exception as exc:
        if watch is not None and watch.reason:
            raise ConveyorError(watch.reason) from None
        raise conveyor_error(exc) from exc  # a task's error arrives as text inside a Java exception
    finally:
        if watch is not None:
            watch.done.set()
        if not running:
            stop(spark)


def _task_rows(paths: list[str], rows: int) -> list[tuple[int, str, int, int]]:
    """(source, path, first, stop): a task per input, and a Parquet file of several row groups split into runs
    of whole groups of at least `rows` rows, so one big file is spread over the cluster (first = -1: all of it).
    Past SPLIT_FILES inputs the files alone are work enough, and their footers are not read."""
    tasks = []
    for number, path in enumerate(paths):
        if len(paths) > SPLIT_FILES or sources.is_sql_url(path) or table_format(path) != "parquet":
            tasks.append((number, path, -1, -1))
            continue
        sizes = sources.parquet_row_groups(path)
        first = taken = 0
        for i, size in enumerate(sizes):
            taken += size
            if taken >= rows or i == len(sizes) - 1:
                tasks.append((number, path, first, i + 1))
                first, taken = i + 1, 0
        if not sizes:
            tasks.append((number, path, -1, -1))
    return tasks


def _task_inputs(frame: pd.DataFrame, rows: int, query: str | None) -> Iterator[tuple[int, Iterator[Any]]]:
    """Each task row's source number and its chunks (a Parquet task reads its row groups only)."""
    for number, path, first, stop in frame[["source", "path", "first", "stop"]].itertuples(index=False):
        groups = (int(first), int(stop)) if first >= 0 else None
        yield int(number), sources.read_chunks(path, rows, query, groups)


def _seconds(conf: Mapping[str, str], key: str, default: float) -> float:
    text = conf.get(key, str(default)).strip().removesuffix("s")
    try:
        return float(text)
    except ValueError:
        raise InvalidSetting(f"--spark-conf {key}={conf[key]}: expected seconds, e.g. {key}=300") from None


class _ExecutorWatch:
    """Cancels the job when no executor has joined within `seconds` (0: wait for ever): a master without a free
    worker, or with none of the cores and memory asked for, would otherwise keep the job waiting silently."""

    def __init__(self, sc: Any, seconds: float) -> None:
        self.sc, self.seconds, self.reason = sc, seconds, ""
        self.done = threading.Event()
        if seconds > 0:
            threading.Thread(target=self._watch, name="spark-executors", daemon=True).start()

    def _executors(self) -> int:
        return self.sc._jsc.sc().getExecutorIds().size()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.seconds
        try:
            while not self.done.wait(0.5):
                if self._executors():
                    return
                if time.monotonic() > deadline:
                    conf = self.sc.getConf()
                    asked = ", ".join(
                        f"{key}={conf.get(key)}"
                        for key in ("spark.executor.cores", "spark.executor.memory")
                        if conf.contains(key)
                    )
                    self.reason = (
                        f"no executor joined in {self.seconds:.0f}s on {self.sc.master}: no worker alive, or none with "
                        f"the cores and memory asked for{f' ({asked})' if asked else ''}; see the master's web UI "
                        f"(--spark-conf {EXECUTOR_TIMEOUT}=SECONDS waits longer)"
                    )
                    while True:  # a job submitted after this moment is cancelled too
                        self.sc.cancelAllJobs()
                        if self.done.wait(1):
                            return
        except Exception:  # the context stopped meanwhile: the job's own error says why
            return


def _write(sink: Any, uri: str, frame: pd.DataFrame, part: str) -> int:
    """A file sink writes `part` (rewritten by a retried task); SQL and Redis sinks upsert by key."""
    return sink.write_frame(frame, part=part) if kind(uri) == "file" else sink.write_frame(frame)


def score(job: ScoreJob, master: str, conf: Mapping[str, str] | None = None) -> Report:
    """Score every row of `job.input` on Spark; the same outputs, rejects, run id and report as `score.score`."""
    _refuse_bigquery(job.output.uri)
    plan = plan_score(job)
    with _on_spark(master, conf, plan.paths, job.batch_rows) as (_, tasks):
        counts = tasks.mapInPandas(score_tasks(job, str(plan.ref), plan.run_id, plan.rejects_path), COUNTS).toPandas()
    totals = {name: int(counts[name].sum()) for name in counts.columns}
    return finish(
        job.output, totals, plan.run_id, str(plan.ref), plan.started, plan.rejects_path, plan.scratch, plan.paths
    )


# --- forecast ----------------------------------------------------------------------------------------------

# What each step sends on: one schema for history rows, counts, rejects and partial sums, told apart by `kind`.
_STEP_FIELDS = {
    "kind": "string",
    "shard": "long",
    "series": "string",
    "date": "string",  # of a partial sum, as Beam's path keys it
    "at": "long",  # of a history row: nanoseconds since the epoch, no text to format and parse
    "sales": "double",
    "forecast": "double",
    "lower": "double",
    "upper": "double",
    "n": "long",
    "labels": "string",
}


def _schema(extra: Mapping[str, str] | None = None) -> str:
    return ", ".join(f"{k} {v}" for k, v in {**_STEP_FIELDS, **(extra or {})}.items())


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas 3's Arrow-backed text columns as object columns: PySpark 4.3's Arrow conversion takes only those."""
    text = [c for c in frame.columns if frame[c].dtype != object and pd.api.types.is_string_dtype(frame[c])]
    return frame.astype(dict.fromkeys(text, object)) if text else frame


def _step_rows(kind: str, n: int = 0, **columns: Any) -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series([None], dtype=object) for name in _STEP_FIELDS})
    frame["kind"], frame["n"] = kind, n
    for name, value in columns.items():
        frame[name] = value
    return frame


def tidy_tasks(job: ForecastJob, rejects: str) -> Callable[[Iterator[pd.DataFrame]], Any]:
    """Per (source, path): the tidy history rows, each with its shard, and one count row; rejects are written."""
    spec, rows, query, shards = job.spec, job.batch_rows, job.query, job.shards
    cols = list(spec.series_cols)

    def run(tasks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import json

        from conveyor import validation

        refused_sink = open_sink(rejects, key=(), table="rejects")
        try:
            for frame in tasks:
                for number, chunks in _task_inputs(frame, rows, query):
                    total = rejected = 0
                    for chunk in chunks:
                        total += len(chunk.frame) + len(chunk.rejects)
                        refused = list(chunk.rejects)
                        if len(chunk.frame):
                            tidy, bad = forecasting.tidy(chunk.frame, spec)
                            refused += validation.reject_records(chunk.frame, bad, chunk.source)
                            if len(tidy):
                                yield _history_rows(tidy, cols, shards)
                        if refused:
                            part = part_name(number, chunk.start)
                            rejected += refused_sink.write_frame(pd.DataFrame.from_records(refused), part=part)
                    yield _plain(_step_rows("count", total, labels=json.dumps({"rejected": rejected})))
        finally:
            refused_sink.close()

    return run


def _history_rows(tidy: pd.DataFrame, cols: list[str], shards: int) -> pd.DataFrame:
    """A chunk's tidy rows as step rows; a series' labels (its values of `cols`, as JSON) ride on its first row
    of the chunk only, as the fit needs them once per series."""
    import json

    import numpy as np

    labels = np.full(len(tidy), None, dtype=object)
    if cols:
        first = ~tidy["series"].duplicated().to_numpy()
        labels[first] = [json.dumps(list(r.values())) for r in tidy.loc[first, cols].to_dict("records")]
    frame = pd.DataFrame(
        {
            "kind": "row",
            "shard": forecasting.shard_of(tidy["series"], shards),
            "series": tidy["series"].astype(str).to_numpy(dtype=object),
            "at": tidy["date"].to_numpy(dtype="datetime64[ns]").view("int64"),
            "sales": tidy["sales"].to_numpy(dtype="float64"),
            "n": 0,
            "labels": labels,
        }
    )
    return _steps(frame)


def _steps(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every step column, in order; a column it lacks is all nulls (an all-NaN float column would
    not convert to a text field)."""
    for name in _STEP_FIELDS:
        if name not in frame:
            frame[name] = pd.Series(None, index=frame.index, dtype=object)
    return _plain(frame[list(_STEP_FIELDS)])


def _series_labels(history: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Each series' values of `cols`, from the rows that carry them."""
    import json

    firsts = history.loc[history["labels"].notna(), ["series", "labels"]].drop_duplicates("series")
    return pd.DataFrame([json.loads(t) for t in firsts["labels"]], columns=cols, index=firsts["series"].to_numpy())


def fit_groups(job: ForecastJob, plan: ForecastPlan) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """One shard's history -> its forecasts written through the sink (the shard's rows in one write, as on
    Beam), and count, reject and partial-sum rows for the driver."""
    import json

    from threadpoolctl import threadpool_limits

    output, rejects, steps, aggregate = plan.output, plan.rejects_path, job.steps, job.aggregate
    cols, label, stored = list(job.spec.series_cols), plan.label, plan.stored

    def run(history: pd.DataFrame) -> pd.DataFrame:
        shard = int(history["shard"].iloc[0])
        tidy = pd.DataFrame(
            {
                "series": history["series"].to_numpy(),
                "date": history["at"].to_numpy(dtype="int64").view("datetime64[ns]"),
                "sales": history["sales"].to_numpy(),
            }
        )
        if cols:
            tidy = tidy.join(_series_labels(history, cols), on="series")
        with threadpool_limits(1):  # each series is a small fit: BLAS threads would only fight the other tasks
            if stored is not None:
                out, failed = forecasting.stored_forecasts(_model(*stored), tidy, steps, cols)
            else:
                out, failed = forecasting.fit_shard(tidy, steps, cols)
        rows = [_step_rows("series", tidy["series"].nunique() - len(failed))]
        if failed:
            records = [
                {"source": "history", "row": -1, "reason": f"series {name!r}: {reason}", "record": name}
                for name, reason in failed
            ]
            sink = open_sink(rejects, key=(), table="rejects")
            try:
                written = sink.write_frame(pd.DataFrame.from_records(records), part=f"shard-{shard:05d}")
            finally:
                sink.close()
            rows.append(_step_rows("failed", len(failed), labels=json.dumps({"rejected": written})))
        if len(out):
            sink = open_sink(output.uri, key=output.key, table=output.table, replace=output.replace)
            try:
                written = _write(sink, output.uri, out.assign(**label), f"shard-{shard:05d}")
            finally:
                sink.close()
            rows.append(_step_rows("written", written))
            if aggregate:
                sums = forecasting.partial_sums(out, aggregate)
                keys, values = [k for k, _ in sums], [v for _, v in sums]
                frame = pd.DataFrame(values, columns=["forecast", "lower", "upper"], dtype="float64")
                frame["kind"], frame["n"] = "sum", 0
                frame["series"], frame["date"] = [k[0] for k in keys], [k[1] for k in keys]
                rows.append(_steps(frame))
        return _plain(pd.concat(rows, ignore_index=True))

    return run


def forecast(job: ForecastJob, master: str, conf: Mapping[str, str] | None = None) -> Report:
    """`batch forecast` on Spark: the same outputs, totals, rejects and report as `forecast.forecast`."""
    import json

    _refuse_bigquery(job.output.uri)
    plan = plan_forecast(job)
    with _on_spark(master, conf, plan.paths, job.batch_rows) as (spark, tasks):
        staged = tasks.mapInPandas(tidy_tasks(job, plan.rejects_path), _schema()).persist()
        read = staged.filter("kind = 'count'").toPandas()
        results = (
            staged.filter("kind = 'row'")
            .repartition(min(job.shards, max(2, spark.sparkContext.defaultParallelism * 2)), "shard")
            .groupBy("shard")
            .applyInPandas(fit_groups(job, plan), _schema())
            .toPandas()
        )
        staged.unpersist()
    written = int(results.loc[results["kind"] == "written", "n"].sum())
    if job.aggregate:
        sums = results[results["kind"] == "sum"]
        partial = pd.DataFrame(sums[["series", "date", "forecast", "lower", "upper"]])
        totals = partial.groupby(["series", "date"], sort=True)[["forecast", "lower", "upper"]].sum()
        items = [((k[0], k[1]), tuple(map(float, v))) for k, v in zip(totals.index, totals.to_numpy(), strict=True)]
        if items:
            frame = forecasting.aggregate_frame(items, job.aggregate, list(job.spec.series_cols)).assign(**plan.label)
            sink = open_sink(plan.output.uri, key=plan.output.key, table=plan.output.table, replace=plan.output.replace)
            try:
                written += _write(sink, plan.output.uri, frame, "totals")
            finally:
                sink.close()
    rejected = sum(json.loads(t)["rejected"] for t in read["labels"]) + sum(
        json.loads(t)["rejected"] for t in results.loc[results["kind"] == "failed", "labels"]
    )
    counters = {"rows_in": int(read["n"].sum()), "rows_out": written, "rejected": int(rejected)}
    report = finish(plan.output, counters, plan.run_id, job.name, plan.started, plan.rejects_path, plan.scratch,
                    plan.paths)  # fmt: skip
    series_failed = int(results.loc[results["kind"] == "failed", "n"].sum())
    report.extra = {"series": int(results.loc[results["kind"] == "series", "n"].sum()), "series_failed": series_failed}
    return report

"""Batch benchmark: Beam's DirectRunner against the in-process ceiling on the same data and machine.

Scoring: N rows (default 1,000,000) of four features through a scikit-learn classifier, Parquet in and
out. The ceiling is the same job without Beam: read the Parquet, validate and predict in one vectorised
call, write the Parquet. Forecasting: S series (default 10,000) of two years of daily sales, 30-day
horizon; its ceiling is `train_sales` over a sample of the series in one process, scaled to S.

    python benchmarks/batch.py [--rows N] [--series S] [--workers W] [--skip-forecast] [--skip-score]

With --engine spark (run from the repository root: it starts the tests' standalone cluster, a master and two
workers of 2 cores on loopback), on one running cluster: scoring N rows (default 10,000,000) from 8 Parquet
files, Conveyor's `batch.spark.score` against MLflow's `pyfunc.spark_udf` on the same fitted estimator and
the same executors, each its own application in turn; then forecasting S series through `batch.spark.forecast`,
against the Beam figure recorded in batch.json.

    python benchmarks/batch.py --engine spark [--rows N] [--series S] [--skip-forecast] [--skip-score]

Writes benchmarks/results/batch.json and batch.md (a Spark run replaces only their "spark" part).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def bench_score(tmp: Path, rows: int, workers: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from conveyor.batch.jobs import Output
    from conveyor.batch.score import ScoreJob, score
    from conveyor.io import read_table, write_table
    from conveyor.store import ModelStore

    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(1000, 4)), columns=["x0", "x1", "x2", "x3"])
    store = ModelStore(tmp / "store")
    est = LogisticRegression().fit(train, np.where(train["x0"] + train["x1"] > 0, "yes", "no"))
    store.add("clf", est, flavor="sklearn", example=train.iloc[:5])
    data = pd.DataFrame(rng.normal(size=(rows, 4)), columns=["x0", "x1", "x2", "x3"])
    data.insert(0, "id", np.arange(rows))
    source = tmp / "score.parquet"
    data.to_parquet(source)
    model = store.load("clf")

    def ceiling() -> None:
        frame = read_table(str(source))
        out = pd.concat([frame, model.predict_frame(frame)], axis=1)
        out["model"], out["version"], out["run_id"] = model.name, model.version, "ceiling"
        write_table(out, str(tmp / "ceiling.parquet"))

    _, ceiling_s = _timed(ceiling)
    _, predict_s = _timed(lambda: model.predict_frame(data))
    result = {"rows": rows, "ceiling_s": ceiling_s, "predict_only_s": predict_s, "runs": {}}
    # One output file (parts merged by the driver) and a directory of part files (what scales out).
    runs = [(w, "file") for w in sorted({1, workers})] + [(1, "directory")]
    for w, shape in runs:
        args = [] if w == 1 else ["--direct_num_workers", str(w), "--direct_running_mode", "multi_processing"]
        target = f"{tmp}/out-{w}-{shape}.parquet" + ("/" if shape == "directory" else "")
        job = ScoreJob(str(tmp / "store"), "clf", str(source), Output(target), beam_args=args)
        report, seconds = _timed(lambda job=job: score(job))
        assert report.rows_out == rows, report
        result["runs"][f"{w} worker(s), {shape} output"] = {"seconds": seconds, "rows_per_s": rows / seconds}
        print(
            f"score, {w} worker(s), {shape} output: {rows:,} rows in {seconds:.1f}s = {rows / seconds:,.0f} rows/s",
            flush=True,
        )
    result["ceiling_rows_per_s"] = rows / ceiling_s
    single = [r["rows_per_s"] for k, r in result["runs"].items() if k.endswith("file output")]
    result["ratio_to_ceiling"] = max(single) / result["ceiling_rows_per_s"]
    print(
        f"score ceiling (same read + validate + predict + label + write, no Beam): {rows / ceiling_s:,.0f} rows/s; "
        f"predict alone {rows / predict_s:,.0f} rows/s; Beam (one output file) at {result['ratio_to_ceiling']:.0%} of the ceiling",
        flush=True,
    )
    return result


def _sales_history(tmp: Path, series: int, days: int) -> tuple[pd.DataFrame, int, int, Path]:
    """About `series` series (stores x families) of `days` days of sales, as one Parquet file."""
    from conveyor.sales_data import generate_sales

    stores = max(1, int(np.sqrt(series)))
    families = series // stores
    raw = generate_sales(stores, families, periods=days, seed=0)
    n_series = stores * families
    source = tmp / "history.parquet"
    raw.to_parquet(source)
    print(f"forecast: {n_series:,} series x {days} days = {len(raw):,} rows of history", flush=True)
    return raw, n_series, families, source


def bench_forecast(tmp: Path, series: int, workers: int, days: int = 730, steps: int = 30) -> dict:
    from conveyor.batch.forecast import ForecastJob, forecast
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import Output
    from conveyor.forecast import train_sales

    raw, n_series, families, source = _sales_history(tmp, series, days)

    sample = raw[raw["store_nbr"] == raw["store_nbr"].iloc[0]].head(days * min(families, 100))
    tidy = sample.assign(series=sample["store_nbr"].astype(str) + "/" + sample["family"].astype(str))[
        ["date", "series", "sales"]
    ]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # as the Beam workers run it: faster for many small fits
        _, sample_s = _timed(lambda: train_sales(tidy, range_max=steps))
    per_series = sample_s / tidy["series"].nunique()
    ceiling_s = per_series * n_series
    print(f"forecast ceiling (train_sales in one process): {per_series * 1000:.0f} ms/series", flush=True)

    spec = HistorySpec(series_cols=("store_nbr", "family"))
    args = [] if workers == 1 else ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    job = ForecastJob(
        "sales", str(source), steps, Output(str(tmp / "forecast.parquet")), spec=spec, aggregate="store_nbr",
        shards=max(8, n_series // 100), beam_args=args,
    )  # fmt: skip
    report, seconds = _timed(lambda: forecast(job))
    assert report.extra["series"] == n_series, report
    print(
        f"forecast, {workers} worker(s): {n_series:,} series in {seconds:.1f}s = {n_series / seconds:,.1f} series/s "
        f"({report.rows_out:,} rows); single-process ceiling {ceiling_s:.0f}s",
        flush=True,
    )
    return {
        "series": n_series,
        "days": days,
        "range": steps,
        "history_rows": len(raw),
        "workers": workers,
        "seconds": seconds,
        "series_per_s": n_series / seconds,
        "rows_out": report.rows_out,
        "ceiling_ms_per_series": per_series * 1000,
        "ceiling_s_one_process": ceiling_s,
        "ratio_to_one_process_ceiling": ceiling_s / seconds,
    }


# --- on Apache Spark ---------------------------------------------------------------------------------------

FEATURES = ["x0", "x1", "x2", "x3"]
SPARK_FILES = 8
# What tests/integration/spark_cluster.py starts, and what each application asks of it: two executors of 2 cores.
SPARK_CLUSTER = {"workers": 2, "worker_cores": 2, "worker_memory": "2g"}
SPARK_CONF = {"spark.cores.max": "4", "spark.executor.cores": "2", "spark.executor.memory": "1g"}
# Conveyor's own waits for a driver JVM and executors to start (Spark passes these keys by): long, as JVMs start
# slowly on a busy 2-core machine, and the same for both contestants.
RUN_CONF = {**SPARK_CONF, "spark.conveyor.startTimeout": "300", "spark.conveyor.executorTimeout": "300"}


def _cluster_idle(cluster, timeout: float = 60) -> None:
    """Until the previous application has left the cluster: every core free for the next contestant."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = cluster.state()
        if not state.get("activeapps") and not any(w.get("coresused") for w in state["workers"]):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the cluster is still busy after {timeout:.0f}s: {cluster.state().get('activeapps')}")


def _application(cluster, job) -> dict:
    """One contestant as its own application: start a session and wait for its executors, run `job(spark)`,
    stop the session (and the driver's JVM). Seconds end to end, and of each step."""
    from conveyor.batch import spark as engine

    _cluster_idle(cluster)
    executors = int(SPARK_CONF["spark.cores.max"]) // int(SPARK_CONF["spark.executor.cores"])
    started = time.perf_counter()
    spark = engine.session(cluster.master, RUN_CONF)
    try:
        status = spark.sparkContext._jsc.sc().getExecutorMemoryStatus  # the driver's entry included
        while status().size() < executors + 1:
            if time.perf_counter() - started > 120:
                raise TimeoutError(f"{executors} executors not registered in 120s")
            time.sleep(0.05)
        ready = time.perf_counter()
        detail = job(spark) or {}
        done = time.perf_counter()
    finally:
        engine.stop(spark)
    ended = time.perf_counter()
    return {
        "seconds": ended - started, "session_s": ready - started, "job_s": done - ready, "stop_s": ended - done,
        **detail,
    }  # fmt: skip


def _spark_score_data(tmp: Path, rows: int) -> tuple[Path, Path, Path]:
    """The estimator of bench_score in a Conveyor store and as an MLflow model; `rows` rows in 8 Parquet files."""
    import mlflow.sklearn
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    from conveyor.store import ModelStore

    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(1000, 4)), columns=FEATURES)
    est = LogisticRegression().fit(train, np.where(train["x0"] + train["x1"] > 0, "yes", "no"))
    ModelStore(tmp / "store").add("clf", est, flavor="sklearn", example=train.iloc[:5])
    mlflow_model = tmp / "mlflow-model"
    mlflow.sklearn.save_model(est, str(mlflow_model), input_example=train.iloc[:5])
    folder = tmp / "score-input"
    folder.mkdir()
    values = rng.normal(size=(rows, 4))
    bounds = np.linspace(0, rows, SPARK_FILES + 1).astype(int)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        columns = {"id": pa.array(np.arange(a, b, dtype=np.int64))}
        columns |= {name: pa.array(values[a:b, j]) for j, name in enumerate(FEATURES)}
        pq.write_table(pa.table(columns), folder / f"part-{i:02d}.parquet")
    return tmp / "store", mlflow_model, folder


def _spark_predictions(path: Path, ids: np.ndarray) -> pd.Series:
    """The predictions of the rows `ids` in a folder of Parquet parts, in id order."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    wanted = ds.field("id").isin(pa.array(ids))
    frame = ds.dataset(path, format="parquet").to_table(columns=["id", "prediction"], filter=wanted).to_pandas()
    return frame.set_index("id")["prediction"].astype(str).sort_index()


def bench_spark_score(tmp: Path, cluster, rows: int) -> dict:
    import mlflow
    import pyarrow.dataset as ds

    from conveyor.batch import spark as engine
    from conveyor.batch.jobs import Output, ScoreJob

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")  # not ./mlflow.db, MLflow 3's default
    (store, model, folder), prepare_s = _timed(lambda: _spark_score_data(tmp, rows))
    print(f"spark score: {rows:,} rows in {SPARK_FILES} Parquet files, written in {prepare_s:.1f}s", flush=True)
    outputs = {"conveyor": tmp / "out-conveyor", "spark_udf": tmp / "out-spark-udf"}

    def conveyor(spark) -> dict:
        job = ScoreJob(str(store), "clf", f"{folder}/*.parquet", Output(f"{outputs['conveyor']}/"))
        report = engine.score(job, cluster.master, RUN_CONF)  # uses the running session, leaves it running
        assert report.rows_out == rows and report.rejected == 0, report
        return {}

    def spark_udf(spark) -> dict:
        import mlflow.pyfunc
        from pyspark.sql.functions import struct

        # A struct hands the model a pandas DataFrame with the columns' names (MLflow's own example).
        predict, setup_s = _timed(
            lambda: mlflow.pyfunc.spark_udf(spark, str(model), result_type="string", env_manager="local")
        )
        frame = spark.read.parquet(str(folder))
        frame.withColumn("prediction", predict(struct(*FEATURES))).write.mode("overwrite").parquet(
            str(outputs["spark_udf"])
        )
        return {"udf_setup_s": setup_s}

    from mlflow.models import Model

    saved_as = Model.load(str(model)).flavors["sklearn"]["serialization_format"]  # skops: MLflow 3's default

    result: dict = {"rows": rows, "files": SPARK_FILES, "prepare_s": prepare_s, "mlflow_format": saved_as}
    names = {"conveyor": "Conveyor batch.spark.score", "spark_udf": "MLflow pyfunc.spark_udf"}
    for name, job in (("conveyor", conveyor), ("spark_udf", spark_udf)):
        r = _application(cluster, job)
        written = ds.dataset(outputs[name], format="parquet").count_rows()
        assert written == rows, (name, written, rows)
        r |= {"rows_per_s": rows / r["seconds"], "job_rows_per_s": rows / r["job_s"]}
        result[name] = r
        setup = f", udf setup {r['udf_setup_s']:.1f}s" if "udf_setup_s" in r else ""
        print(
            f"spark score, {names[name]}: {rows:,} rows in {r['seconds']:.1f}s end to end = {r['rows_per_s']:,.0f} "
            f"rows/s (session start {r['session_s']:.1f}s, job {r['job_s']:.1f}s{setup}, stop {r['stop_s']:.1f}s; "
            f"job alone {r['job_rows_per_s']:,.0f} rows/s)",
            flush=True,
        )
    ids = np.sort(np.random.default_rng(1).choice(rows, size=min(rows, 10_000), replace=False))
    ours, theirs = _spark_predictions(outputs["conveyor"], ids), _spark_predictions(outputs["spark_udf"], ids)
    assert len(ours) == len(theirs) == len(ids), (len(ours), len(theirs), len(ids))
    agree = int((ours.to_numpy() == theirs.to_numpy()).sum())
    result["sample"], result["agree"] = len(ids), agree
    result["ratio"] = result["conveyor"]["rows_per_s"] / result["spark_udf"]["rows_per_s"]
    result["job_ratio"] = result["conveyor"]["job_rows_per_s"] / result["spark_udf"]["job_rows_per_s"]
    print(
        f"spark score: predictions agree on {agree:,} of {len(ids):,} sampled ids; Conveyor / spark_udf = "
        f"{result['ratio']:.2f}x end to end, {result['job_ratio']:.2f}x job alone",
        flush=True,
    )
    assert agree == len(ids), f"predictions differ on {len(ids) - agree} of {len(ids)} sampled ids"
    return result


def bench_spark_forecast(tmp: Path, cluster, series: int, beam: dict | None, days: int = 730, steps: int = 30) -> dict:
    from conveyor.batch import spark as engine
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import ForecastJob, Output

    raw, n_series, _, source = _sales_history(tmp, series, days)
    job = ForecastJob(
        "sales", str(source), steps, Output(str(tmp / "spark-forecast.parquet")),
        spec=HistorySpec(series_cols=("store_nbr", "family")), aggregate="store_nbr", shards=max(8, n_series // 100),
    )  # fmt: skip
    _cluster_idle(cluster)
    report, seconds = _timed(lambda: engine.forecast(job, cluster.master, RUN_CONF))  # its own session
    assert report.extra["series"] == n_series, report
    result = {
        "series": n_series, "days": days, "range": steps, "history_rows": len(raw), "seconds": seconds,
        "series_per_s": n_series / seconds, "rows_out": report.rows_out,
    }  # fmt: skip
    versus = ""
    if beam:
        result["beam"] = {k: beam[k] for k in ("series", "workers", "seconds", "series_per_s")}
        result["ratio_to_beam"] = result["series_per_s"] / beam["series_per_s"]
        versus = (
            f"; Beam DirectRunner ({beam['workers']} workers) recorded {beam['series_per_s']:.1f} series/s "
            f"({beam['series']:,} series in {beam['seconds']:.0f}s): Spark at {result['ratio_to_beam']:.2f}x"
        )
    print(
        f"spark forecast: {n_series:,} series in {seconds:.1f}s end to end (session start included) = "
        f"{n_series / seconds:,.1f} series/s ({report.rows_out:,} rows){versus}",
        flush=True,
    )
    return result


def _versions(*modules: str) -> dict[str, str]:
    import importlib

    return {name: importlib.import_module(name).__version__ for name in modules}


def bench_spark(args: argparse.Namespace, results: dict, previous: dict) -> None:
    """Scoring then forecasting on one running cluster; `results["spark"]` written after each."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)  # `tests` importable however the script is started
    from tests.integration.spark_cluster import running_cluster

    earlier = previous.get("spark") or {}
    spark = results["spark"] = {
        "machine": f"{platform.python_version()}, {os.cpu_count()} cores", "argv": sys.argv[1:],
        "cluster": {**SPARK_CLUSTER, "conf": SPARK_CONF}, "versions": _versions("pyspark", "mlflow", "sklearn"),
    }  # fmt: skip
    for part, skip in (("score", args.skip_score), ("forecast", args.skip_forecast)):
        if skip and earlier.get(part):
            spark[part] = earlier[part]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with running_cluster(Path(tmp) / "spark", workers=SPARK_CLUSTER["workers"]) as cluster:
            print(
                f"spark: standalone master + {SPARK_CLUSTER['workers']} workers x {SPARK_CLUSTER['worker_cores']} "
                f"cores up in {time.perf_counter() - started:.1f}s at {cluster.master}; each application: "
                + ", ".join(f"{k}={v}" for k, v in SPARK_CONF.items()),
                flush=True,
            )
            if not args.skip_score:
                spark["score"] = bench_spark_score(Path(tmp), cluster, args.rows)
                write_results(results)
            if not args.skip_forecast:
                spark["forecast"] = bench_spark_forecast(Path(tmp), cluster, args.series, previous.get("forecast"))
                write_results(results)


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    results = {k: v for k, v in results.items() if k != "spark"} | (
        {"spark": results["spark"]} if "spark" in results else {}
    )
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2) + "\n")
    machine = results.get("machine") or results["spark"]["machine"]
    lines = [f"# Batch benchmark ({machine})", ""]
    s = results.get("score")
    if s:
        lines += [
            f"Scoring {s['rows']:,} rows (Parquet in and out, scikit-learn classifier):",
            "",
            "| path | seconds | rows/s | share of ceiling |",
            "|---|---|---|---|",
            f"| in-process ceiling (no Beam) | {s['ceiling_s']:.1f} | {s['ceiling_rows_per_s']:,.0f} | 100% |",
        ]
        for name, r in s["runs"].items():
            share = r["rows_per_s"] / s["ceiling_rows_per_s"]
            lines.append(
                f"| Beam DirectRunner, {name.replace('_', ' ')} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {share:.0%} |"
            )
        lines += ["", f"Predict alone (no I/O): {s['rows'] / s['predict_only_s']:,.0f} rows/s.", ""]
    f = results.get("forecast")
    if f:
        lines += [
            f"Forecasting {f['series']:,} series x {f['days']} days ({f['history_rows']:,} rows), horizon {f['range']}, "
            f"{f['workers']} worker(s): {f['seconds']:.0f}s ({f['series_per_s']:.1f} series/s); one process without "
            f"Beam would take ~{f['ceiling_s_one_process']:.0f}s ({f['ceiling_ms_per_series']:.0f} ms/series).",
            "",
        ]
    if results.get("spark"):
        lines += _spark_lines(results["spark"])
    (RESULTS / "batch.md").write_text("\n".join(lines))


def _spark_lines(sp: dict) -> list[str]:
    c = sp["cluster"]
    conf = ", ".join(f"`{k}={v}`" for k, v in c["conf"].items())
    lines = [
        f"## On Apache Spark ({sp['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in sp.get("versions", {}).items())
        + ")",
        "",
        f"One standalone cluster on loopback: a master and {c['workers']} workers x {c['worker_cores']} cores, "
        f"{c['worker_memory']} each (tests/integration/spark_cluster.py). Each application asks for {conf}: "
        f"two executors of 2 cores.",
        "",
    ]
    s = sp.get("score")
    if s:
        u = s["spark_udf"]
        lines += [
            f"Scoring {s['rows']:,} rows (id + four float features, {s['files']} Parquet files in, a folder of Parquet "
            "parts out) with the same scikit-learn LogisticRegression (string labels), each contestant its own "
            "application in turn on the same executors. End to end: session start (driver JVM up and both "
            "executors registered) + job + stop.",
            "",
            "| path | seconds end to end | rows/s end to end | session start (s) | job alone (s) | rows/s job alone |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (
            ("conveyor", "Conveyor `batch.spark.score`"),
            ("spark_udf", 'MLflow `pyfunc.spark_udf` (`env_manager="local"`, `struct` of the 4 columns)'),
        ):
            r = s[name]
            lines.append(
                f"| {label} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['session_s']:.1f} | {r['job_s']:.1f} "
                f"| {r['job_rows_per_s']:,.0f} |"
            )
        lines += [
            f"| Conveyor / spark_udf | | {s['ratio']:.2f}x | | | {s['job_ratio']:.2f}x |",
            "",
            f"spark_udf's job time includes building the UDF ({u['udf_setup_s']:.1f}s: the model copied, zipped and "
            f"shipped to the executors). MLflow saved the estimator as {s.get('mlflow_format', '?')} (its default), "
            f"Conveyor's store as joblib. Predictions agree on {s['agree']:,} of {s['sample']:,} sampled ids.",
            "",
        ]
    f = sp.get("forecast")
    if f:
        line = (
            f"Forecasting {f['series']:,} series x {f['days']} days ({f['history_rows']:,} rows), horizon {f['range']}, "
            f"with `batch.spark.forecast`: {f['seconds']:.0f}s end to end, session start included "
            f"({f['series_per_s']:.1f} series/s)"
        )
        b = f.get("beam")
        if b:
            line += (
                f"; Beam's DirectRunner ({b['workers']} workers, above) took {b['seconds']:.0f}s for {b['series']:,} "
                f"series ({b['series_per_s']:.1f} series/s): Spark at {f['ratio_to_beam']:.2f}x its series/s"
            )
        lines += [line + ".", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("beam", "spark"), default="beam")
    parser.add_argument("--rows", type=int, help="Rows to score: 1,000,000 on beam, 10,000,000 on spark by default.")
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-forecast", action="store_true")
    parser.add_argument("--skip-score", action="store_true", help="Keep the recorded scoring results.")
    args = parser.parse_args()
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    results: dict = {"machine": f"{platform.python_version()}, {os.cpu_count()} cores", "argv": sys.argv[1:]}
    previous = json.loads((RESULTS / "batch.json").read_text()) if (RESULTS / "batch.json").exists() else {}
    if args.engine == "spark":
        args.rows = args.rows or 10_000_000
        bench_spark(args, dict(previous), previous)  # the other keys as they were
        return
    args.rows = args.rows or 1_000_000
    if previous.get("spark"):
        results["spark"] = previous["spark"]  # a Beam run keeps the Spark figures
    if args.skip_forecast and previous.get("forecast"):
        results["forecast"] = previous["forecast"]  # keep the last forecast figures beside a new scoring run
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_score and previous.get("score"):
            results["score"] = previous["score"]
        else:
            results["score"] = bench_score(Path(tmp), args.rows, args.workers)
            write_results(results)
        if not args.skip_forecast:
            results["forecast"] = bench_forecast(Path(tmp), args.series, args.workers)
            write_results(results)


if __name__ == "__main__":
    main()

"""The Spark engine on a real standalone cluster (a master and two workers on loopback), beside the Beam engine."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from conveyor.errors import InvalidSetting

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def spark(spark_cluster) -> Iterator:
    from conveyor.batch import spark as engine

    session = engine.session(
        spark_cluster.master, {"spark.executor.cores": "1", "spark.executor.memory": "512m", "spark.cores.max": "2"}
    )
    try:
        yield session
    finally:
        engine.stop(session)


def _executors(session) -> dict[str, int]:
    """Tasks completed per executor, from the driver's REST API."""
    sc = session.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/allexecutors"
    with urllib.request.urlopen(url, timeout=30) as reply:
        return {e["id"]: e["completedTasks"] for e in json.load(reply) if e["id"] != "driver"}


def test_a_session_on_the_cluster_runs_arrow_batches_on_both_executors(spark):
    def double(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in batches:
            yield frame.assign(y=frame["x"] * 2.0, pid=os.getpid())

    frame = spark.range(0, 40_000, numPartitions=8).selectExpr("CAST(id AS DOUBLE) AS x")
    out = frame.mapInPandas(double, "x double, y double, pid long").toPandas()
    assert len(out) == 40_000 and (out["y"] == out["x"] * 2).all()
    assert out["pid"].nunique() >= 2  # Python workers of two executors
    done = _executors(spark)
    assert len(done) == 2 and all(n > 0 for n in done.values()), done


def test_spark_conf_pairs_are_checked():
    from conveyor.batch.spark import parse_conf, runs_here

    assert parse_conf(["spark.executor.memory=2g", "a.b=x=y"]) == {"spark.executor.memory": "2g", "a.b": "x=y"}
    with pytest.raises(InvalidSetting, match="expected KEY=VALUE"):
        parse_conf(["spark.executor.memory"])
    assert runs_here("local[2]") and runs_here("spark://127.0.0.1:7077")
    assert not runs_here("spark://spark-master.prod:7077") and not runs_here("yarn")


def _both_engines(spark_cluster, job_for) -> tuple:
    """The same job on Beam and on the cluster: (report, output rows, rejects) of each."""
    from conveyor.batch import spark as engine
    from conveyor.batch.score import score
    from conveyor.io import read_table

    results = []
    for name in ("beam", "spark"):
        job = job_for(name)
        report = score(job) if name == "beam" else engine.score(job, spark_cluster.master, {"spark.cores.max": "2"})
        out = read_table(job.output.uri).sort_values("id").reset_index(drop=True)
        refused = read_table(job.output.rejects).sort_values(["source", "row"]).reset_index(drop=True)
        results.append((report, out, refused))
    return tuple(results)


def test_scoring_on_the_cluster_gives_the_rows_and_rejects_beam_gives(tmp_path, store_dir, spark_cluster):
    from conveyor.batch.jobs import Output, ScoreJob

    rng = np.random.default_rng(3)
    for i in range(4):  # four files: four tasks for two executors
        frame = pd.DataFrame(rng.normal(size=(5_000, 4)).round(6), columns=["x0", "x1", "x2", "x3"])
        frame.insert(0, "id", np.arange(5_000) + i * 5_000)
        path = tmp_path / "in" / f"part-{i}.csv"
        path.parent.mkdir(exist_ok=True)
        frame.to_csv(path, index=False)
    lines = (tmp_path / "in" / "part-2.csv").read_text().splitlines()
    lines[11] = "10010,not-a-number,1,2,3"  # a bad value
    lines[21] = "10020,1,2,3,4,5,6"  # a line of too many fields
    (tmp_path / "in" / "part-2.csv").write_text("\n".join(lines) + "\n")

    def job_for(engine: str) -> ScoreJob:
        out = Output(str(tmp_path / engine / "out.parquet"), rejects=str(tmp_path / engine / "rejects.jsonl"),
                     max_reject_rate=0.01)  # fmt: skip
        return ScoreJob(str(store_dir), "iris", str(tmp_path / "in" / "*.csv"), out, batch_rows=3_000)

    (beam, beam_out, beam_refused), (spark, spark_out, spark_refused) = _both_engines(spark_cluster, job_for)
    assert (spark.rows_in, spark.rows_out, spark.rejected) == (beam.rows_in, beam.rows_out, beam.rejected)
    assert (spark.rows_in, spark.rejected) == (20_000, 2) and spark.run_id == beam.run_id
    assert list(spark_out.columns) == list(beam_out.columns)
    pd.testing.assert_frame_equal(spark_out, beam_out, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(spark_refused, beam_refused)
    assert spark_refused["reason"].tolist()[1] == "line 22: expected 5 fields, saw 7"


@pytest.mark.postgres
def test_a_worker_killed_mid_job_has_its_tasks_rerun_and_postgresql_gets_every_row_once(
    tmp_path, store_dir, spark, spark_cluster, postgres_url
):
    import threading
    import time

    import sqlalchemy as sa

    from conveyor.batch import spark as engine
    from conveyor.batch.jobs import Output, ScoreJob
    from conveyor.sinks.sql import driver_url

    rng = np.random.default_rng(4)
    n, files = 6_000, 8
    for i in range(files):
        frame = pd.DataFrame(rng.normal(size=(n, 4)), columns=["x0", "x1", "x2", "x3"])
        frame.insert(0, "id", np.arange(n) + i * n)
        frame.to_csv(tmp_path / f"part-{i}.csv", index=False)
    # 200-row chunks: each task writes 30 upserts, slow enough to be killed half-way
    job = ScoreJob(str(store_dir), "iris", str(tmp_path / "*.csv"), Output(postgres_url, ("id",), "killed"),
                   batch_rows=200)  # fmt: skip
    db = sa.create_engine(driver_url(postgres_url))

    def written() -> int:
        with db.connect() as conn:
            try:
                return conn.execute(sa.text("SELECT COUNT(*) FROM killed")).scalar_one()
            except sa.exc.ProgrammingError:
                return 0

    result: dict = {}
    job_thread = threading.Thread(target=lambda: result.update(report=engine.score(job, spark_cluster.master)))
    job_thread.start()
    deadline = time.monotonic() + 120
    while written() < n // 2:  # both executors are writing their first files
        assert time.monotonic() < deadline and job_thread.is_alive(), result
        time.sleep(0.05)
    spark_cluster.kill_worker(1)
    job_thread.join(600)
    try:
        report = result["report"]
        assert report.rows_in == report.rows_out == n * files
        with db.connect() as conn:
            count, distinct = conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT id) FROM killed")).one()
        assert count == distinct == n * files  # every input row exactly once
        assert written() == n * files
    finally:
        db.dispose()
        spark_cluster.start_worker(1)  # the next tests get two workers again
        spark_cluster.wait_alive(2)


def test_forecasting_on_the_cluster_gives_the_rows_totals_and_rejects_beam_gives(tmp_path, spark, spark_cluster):
    from conveyor.batch import spark as engine
    from conveyor.batch.forecast import forecast
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import ForecastJob, Output
    from conveyor.io import read_table
    from conveyor.sales_data import generate_sales

    raw = generate_sales(3, 4, periods=400, seed=3).astype({"sales": object})
    raw["date"] = raw["date"].dt.strftime("%d/%m/%Y")  # day-first: the driver settles the format for both engines
    raw.loc[100, "sales"] = "lots"  # a bad value: a reject with its reason
    short = raw[raw["family"] == raw["family"].iloc[0]].head(2).assign(store_nbr=77)  # a series of 2 dates
    pd.concat([raw, short]).to_csv(tmp_path / "history.csv", index=False)

    results = {}
    for name in ("beam", "spark"):
        out = Output(str(tmp_path / name / "f.parquet"), rejects=str(tmp_path / name / "r.jsonl"), max_reject_rate=0.01)
        job = ForecastJob("sales", str(tmp_path / "history.csv"), 14, out, aggregate="store_nbr", shards=4,
                          spec=HistorySpec(series_cols=("store_nbr", "family")))  # fmt: skip
        report = forecast(job) if name == "beam" else engine.forecast(job, spark_cluster.master)
        rows = read_table(out.uri).sort_values(["series", "date"]).reset_index(drop=True)
        refused = read_table(out.rejects).sort_values(["row", "reason"]).reset_index(drop=True)
        results[name] = (report, rows, refused)
    (beam, beam_rows, beam_refused), (spark_report, spark_rows, spark_refused) = results["beam"], results["spark"]
    for field in ("rows_in", "rows_out", "rejected", "run_id"):
        assert getattr(spark_report, field) == getattr(beam, field), field
    assert spark_report.extra == beam.extra == {"series": 12, "series_failed": 1}
    assert list(spark_rows.columns) == list(beam_rows.columns)
    pd.testing.assert_frame_equal(spark_rows, beam_rows, check_exact=False, rtol=1e-9, check_dtype=False)
    pd.testing.assert_frame_equal(spark_refused, beam_refused)
    assert spark_refused["row"].tolist() == [-1, 100]  # the series of 2 dates, and "lots": no date is refused
    assert (spark_rows["method"] == "sum").sum() == 3 * 14


def test_the_cli_answers_alike_on_both_engines(tmp_path, store_dir, spark_cluster):
    """As a user runs it: the same summary line, the same one-line refusals and exit codes."""
    import re

    from tests.conftest import assert_one_line_error, conveyor

    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(1_000, 4)).round(6), columns=["x0", "x1", "x2", "x3"])
    frame.insert(0, "id", np.arange(1_000))
    frame.astype({"x1": object}).assign(x1=lambda f: f["x1"].where(f["id"] != 7, "n/a")).to_csv(
        tmp_path / "in.csv", index=False
    )
    spark_args = ["--engine", "spark", "--master", spark_cluster.master, "--spark-conf", "spark.cores.max=2",
                  "--spark-conf", "spark.executor.memory=512m", "--spark-conf", "spark.executor.cores=1"]  # fmt: skip
    answers = {}
    for engine, extra in (("beam", []), ("spark", spark_args)):
        base = ["batch", "score", "iris", "--store", str(store_dir), "--input", str(tmp_path / "in.csv")]
        refused = conveyor(*base, "--output", str(tmp_path / engine / "o.csv"), *extra, check=False)
        assert_one_line_error(refused, 2, "1 of 1,000 rows rejected")
        ok = conveyor(*base, "--output", str(tmp_path / engine / "o.csv"), "--max-reject-rate", "0.01", *extra)
        said = (refused.stderr, re.sub(r"in [0-9.]+s", "in …s", ok.stdout))
        answers[engine] = tuple(text.replace(f"/{engine}/", "/ENGINE/") for text in said)
        assert ok.stderr == "", ok.stderr  # nothing of the JVM's own start-up chatter
    assert answers["beam"] == answers["spark"]
    assert "scored 1,000 rows with iris:1 in …s: wrote 999 rows" in answers["spark"][1]
    bad = conveyor("batch", "score", "iris", "--store", str(store_dir), "--input", str(tmp_path / "in.csv"),
                   "--output", str(tmp_path / "x.csv"), "--engine", "spark", "--workers", "2", check=False)  # fmt: skip
    assert_one_line_error(bad, 2, "--runner, --workers and options after -- are Beam's")


# --- a master that is wrong, down, silent, or without room: one line, in seconds ------------------------------


def _timed_cli(*args: str):
    import time

    from tests.conftest import conveyor

    started = time.monotonic()
    proc = conveyor(*args, check=False)
    return proc, time.monotonic() - started


def test_a_wrong_or_unreachable_master_fails_in_seconds_with_one_line(tmp_path, store_dir):
    import socket

    from tests.conftest import assert_one_line_error, free_port

    pd.DataFrame({"id": [1], "x0": [0.1], "x1": [0.2], "x2": [0.3], "x3": [0.4]}).to_csv(
        tmp_path / "in.csv", index=False
    )
    base = ["batch", "score", "iris", "--store", str(store_dir), "--input", str(tmp_path / "in.csv"),
            "--output", str(tmp_path / "o.csv"), "--engine", "spark", "--master"]  # fmt: skip
    for master, code, text in (
        ("foo://bar", 2, "--master 'foo://bar': expected local[N], local[*], spark://HOST:PORT"),
        ("local[x]", 2, "--master 'local[x]': expected"),
        ("spark://127.0.0.1:notaport", 2, "'127.0.0.1:notaport' is not HOST:PORT"),
        (f"spark://127.0.0.1:{free_port()}", 1, "cannot reach the Spark master of --master spark://127.0.0.1:"),
        ("spark://no-such-host.invalid:7077", 1, "cannot reach the Spark master"),
    ):
        proc, seconds = _timed_cli(*base, master)
        assert_one_line_error(proc, code, text)
        assert seconds < 20, (master, seconds)
    # a port that takes connections but is no Spark master (Spark alone would retry for over a minute)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        master = f"spark://127.0.0.1:{silent.getsockname()[1]}"
        proc, seconds = _timed_cli(*base, master, "--spark-conf", "spark.conveyor.startTimeout=5")
    assert_one_line_error(proc, 1, f"the Spark master at {master} did not take the application in 5s")
    assert seconds < 40, seconds
    assert not (tmp_path / "o.csv").exists()


def test_a_cluster_without_room_for_an_executor_fails_with_what_was_asked(tmp_path, store_dir, spark_cluster):
    from tests.conftest import assert_one_line_error

    pd.DataFrame({"id": [1], "x0": [0.1], "x1": [0.2], "x2": [0.3], "x3": [0.4]}).to_csv(
        tmp_path / "in.csv", index=False
    )
    proc, seconds = _timed_cli(
        "batch",
        "score",
        "iris",
        "--store",
        str(store_dir),
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "o.csv"),
        "--engine",
        "spark",
        "--master",
        spark_cluster.master,
        "--spark-conf",
        "spark.executor.memory=4g",
        "--spark-conf",
        "spark.conveyor.executorTimeout=5",
    )  # fmt: skip  (each worker offers 2g)
    assert_one_line_error(proc, 1, "no executor joined in 5s on spark://127.0.0.1:")
    assert "(spark.executor.memory=4g)" in proc.stderr and seconds < 60, seconds


# --- the model once per Python worker; Redis; the prediction store round trip ---------------------------------

COUNTED = '''
import os, uuid
from pathlib import Path

from sklearn.linear_model import LogisticRegression


class CountedLogisticRegression(LogisticRegression):
    """Leaves a file named after the loading process each time it is unpickled."""

    def __setstate__(self, state):
        super().__setstate__(state)
        marks = getattr(self, "marks_", None)
        if marks:
            Path(marks, f"{os.getpid()}-{uuid.uuid4().hex}").touch()
'''


def test_the_model_is_loaded_once_per_python_worker_not_per_task(tmp_path, spark, spark_cluster, monkeypatch):
    from conveyor.batch import spark as engine
    from conveyor.batch.jobs import Output, ScoreJob
    from conveyor.store import ModelStore

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "counted_model.py").write_text(COUNTED)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    spark.sparkContext.addPyFile(str(tmp_path / "mods" / "counted_model.py"))  # the executors import it too
    from counted_model import CountedLogisticRegression

    rng = np.random.default_rng(6)
    train = pd.DataFrame(rng.normal(size=(200, 4)), columns=["x0", "x1", "x2", "x3"])
    est = CountedLogisticRegression().fit(train, (train["x0"] > 0).astype(int))
    est.marks_ = str(tmp_path / "marks")
    (tmp_path / "marks").mkdir()
    ModelStore(tmp_path / "store").add("counted", est, flavor="sklearn")
    for i in range(12):  # 12 files x 4 chunks: 48 predictions
        frame = pd.DataFrame(rng.normal(size=(400, 4)), columns=["x0", "x1", "x2", "x3"]).assign(
            id=np.arange(400) + i * 400
        )
        frame.to_csv(tmp_path / f"in-{i:02d}.csv", index=False)
    job = ScoreJob(str(tmp_path / "store"), "counted", str(tmp_path / "in-*.csv"), Output(f"{tmp_path}/out/"),
                   batch_rows=100)  # fmt: skip
    report = engine.score(job, spark_cluster.master)
    assert report.rows_out == 4_800 and len(pd.read_parquet(tmp_path / "out")) == 4_800
    loads = [p.name.split("-")[0] for p in (tmp_path / "marks").iterdir() if p.name.split("-")[0] != str(os.getpid())]
    assert 2 <= len(loads) <= 4, loads  # a Python worker or two per executor, never one per task or chunk
    assert len(set(loads)) == len(loads), loads  # no worker loaded it twice


@pytest.mark.redis
def test_scoring_into_redis_on_the_cluster_rewrites_the_same_hashes(
    tmp_path, store_dir, spark, spark_cluster, redis_url
):
    import redis

    from conveyor.batch import spark as engine
    from conveyor.batch.jobs import Output, ScoreJob
    from conveyor.store import ModelStore

    rng = np.random.default_rng(7)
    for i in range(4):
        frame = pd.DataFrame(rng.normal(size=(250, 4)), columns=["x0", "x1", "x2", "x3"]).assign(
            id=np.arange(250) + i * 250
        )
        frame.to_parquet(tmp_path / f"in-{i}.parquet")
    job = ScoreJob(str(store_dir), "iris", str(tmp_path / "*.parquet"), Output(redis_url, ("id",), "sparkscores"),
                   run_id="r1")  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.keys("sparkscores:*") or ["none"])
    engine.score(job, spark_cluster.master)
    engine.score(job, spark_cluster.master)  # a re-run (as a retried task) overwrites the same hashes
    assert len(client.keys("sparkscores:*")) == 1_000
    row = pd.read_parquet(tmp_path / "in-2.parquet").iloc[[3]]
    want = ModelStore(store_dir).load("iris").predict_frame(row.drop(columns="id"))
    stored = client.hgetall(f"sparkscores:{int(row['id'].iloc[0])}")
    assert stored[b"prediction"].decode() == str(want["prediction"].iloc[0]) and stored[b"run_id"] == b"r1"


def test_a_spark_forecast_fills_the_prediction_store_the_service_answers_from(tmp_path, store_dir, spark_cluster):
    import urllib.parse

    from conveyor.sales_data import generate_sales
    from tests.conftest import conveyor, start_server

    generate_sales(3, 4, periods=400, seed=8).to_csv(tmp_path / "history.csv", index=False)
    db = f"sqlite:///{tmp_path}/forecasts.db"
    proc = conveyor(
        "batch", "forecast", "sales", "--history", str(tmp_path / "history.csv"), "--range", "7", "--output", db,
        "--series-cols", "store_nbr,family", "--aggregate", "store_nbr", "--shards", "4", "--engine", "spark",
        "--master", spark_cluster.master, "--spark-conf", "spark.cores.max=2",
    )  # fmt: skip
    assert "forecast 12 series" in proc.stdout and "wrote 105 rows" in proc.stdout, proc.stdout
    server = start_server(store_dir, "sales", tmp_path, "--predictions", db, "--predictions-table", "predictions")
    try:
        with server.client() as client:
            family = generate_sales(3, 4, periods=2, seed=8)["family"].iloc[0]
            body = client.get("/predictions/" + urllib.parse.quote(f"2/{family}")).json()
            stored = body["predictions"]
            assert len(stored) == 7 and all(r["lower"] <= r["forecast"] <= r["upper"] for r in stored)
            assert [r["date"] for r in stored] == sorted(r["date"] for r in stored)
            total = client.get("/predictions/store_nbr=2").json()["predictions"]
            assert len(total) == 7 and total[0]["method"] == "sum"
    finally:
        server.stop()


def test_one_parquet_file_is_split_by_row_groups_across_the_executors(tmp_path, store_dir, spark, spark_cluster):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conveyor.batch import spark as engine
    from conveyor.batch.jobs import Output, ScoreJob
    from conveyor.batch.score import score
    from conveyor.io import read_table

    rng = np.random.default_rng(9)
    frame = pd.DataFrame(rng.normal(size=(10_000, 4)), columns=["x0", "x1", "x2", "x3"])
    frame.insert(0, "id", np.arange(10_000))
    frame.loc[7_003, "x2"] = np.inf  # refused: its row is counted in the whole file, not in its row group
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "one.parquet", row_group_size=1_000)
    assert engine._task_rows([str(tmp_path / "one.parquet")], 2_500) == [
        (0, str(tmp_path / "one.parquet"), a, b) for a, b in ((0, 3), (3, 6), (6, 9), (9, 10))
    ]
    before = _executors(spark)
    results = {}
    for name in ("beam", "spark"):
        out = Output(str(tmp_path / name / "o.parquet"), rejects=str(tmp_path / name / "r.jsonl"), max_reject_rate=0.01)
        job = ScoreJob(str(store_dir), "iris", str(tmp_path / "one.parquet"), out, batch_rows=2_500)
        report = score(job) if name == "beam" else engine.score(job, spark_cluster.master)
        results[name] = (report, read_table(out.uri).sort_values("id").reset_index(drop=True), read_table(out.rejects))
    after = _executors(spark)
    # both live executors read a part (an executor lost with a worker killed earlier stays listed, idle)
    assert sum(after[e] > before.get(e, 0) for e in after) >= 2, (before, after)
    (beam, beam_rows, beam_refused), (on_spark, spark_rows, spark_refused) = results["beam"], results["spark"]
    assert (on_spark.rows_in, on_spark.rows_out, on_spark.rejected) == (10_000, 9_999, 1)
    assert (on_spark.rows_out, on_spark.run_id) == (beam.rows_out, beam.run_id)
    pd.testing.assert_frame_equal(spark_rows, beam_rows, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(spark_refused, beam_refused)
    assert spark_refused["row"].tolist() == [7_003]

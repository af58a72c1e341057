"""Batch scoring and forecasting run as real Beam pipelines on the DirectRunner, end to end.

Files in every format, SQLite and a real PostgreSQL, rejects from a large file, idempotent re-runs,
the command line's exit codes, and the service answering from what `batch forecast` wrote.
"""

from __future__ import annotations

import subprocess
import urllib.parse

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

pytest.importorskip("apache_beam", reason="needs the beam extra: pip install 'conveyor-ml[beam]'")

from conveyor import validation
from conveyor.batch.forecast import ForecastJob, forecast
from conveyor.batch.forecasting import HistorySpec
from conveyor.batch.jobs import Output, Report, TooManyRejects
from conveyor.batch.score import ScoreJob, score
from conveyor.cli import main
from conveyor.errors import InvalidInput
from conveyor.io import read_table, write_table
from conveyor.sales_data import generate_sales
from conveyor.sinks.sql import SQLSink, driver_url
from conveyor.store import ModelStore
from tests.conftest import assert_one_line_error, conveyor, start_server

pytestmark = [pytest.mark.integration, pytest.mark.beam]


def batch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return conveyor("batch", *args, check=check)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(30_000, 4)), columns=["x0", "x1", "x2", "x3"])
    frame.insert(0, "id", np.arange(len(frame)))
    return frame


def expected(store_dir, frame: pd.DataFrame) -> pd.DataFrame:
    return ModelStore(store_dir).load("iris").predict_frame(frame)


@pytest.mark.parametrize(("src", "dst"), [("csv", "parquet"), ("parquet", "jsonl"), ("jsonl", "csv")])
def test_score_files_in_every_format(tmp_path, store_dir, rows, src, dst):
    write_table(rows, str(tmp_path / f"in.{src}"))
    report = score(
        ScoreJob(
            str(store_dir), "iris", str(tmp_path / f"in.{src}"), Output(str(tmp_path / f"out.{dst}")), batch_rows=7_000
        )
    )
    out = read_table(str(tmp_path / f"out.{dst}"))
    assert report.rows_in == report.rows_out == len(rows) == len(out)
    assert out["id"].tolist() == rows["id"].tolist()  # parts merge back in input order
    assert (out["model"] == "iris").all() and (out["version"] == 1).all()
    assert out["run_id"].nunique() == 1 and out["run_id"].iloc[0] == report.run_id
    want = expected(store_dir, rows)
    assert out["prediction"].tolist() == want["prediction"].tolist()
    np.testing.assert_allclose(out["proba_yes"], want["proba_yes"], atol=1e-9)  # JSONL keeps 10 digits


def test_score_reads_a_sql_query(tmp_path, store_dir, rows):
    url = f"sqlite:///{tmp_path}/input.db"
    engine = sa.create_engine(url)
    rows.iloc[:1_000].to_sql("features", engine, index=False)
    engine.dispose()
    query = "SELECT * FROM features WHERE id < 500"
    report = score(ScoreJob(str(store_dir), "iris:1", url, Output(str(tmp_path / "o.csv")), query=query))
    out = pd.read_csv(tmp_path / "o.csv")
    assert report.rows_out == len(out) == 500 and out["id"].tolist() == list(range(500))
    assert out["prediction"].tolist() == expected(store_dir, rows.iloc[:500])["prediction"].tolist()


def test_malformed_rows_in_a_large_file_go_to_rejects(tmp_path, store_dir):
    n = 200_000
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(n, 4)).round(6), columns=["x0", "x1", "x2", "x3"])
    frame.insert(0, "id", np.arange(n))
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    lines[100_001] = "100000,not-a-number,1,2,3"  # data row 100000: a bad value
    lines[150_001] = "150000,1,2,3,4,5,6"  # data row 150000: too many fields
    lines[180_001] = "180000,1,2"  # data row 180000: too few (pandas alone would pad it with NaN)
    path.write_text("\n".join(lines) + "\n")

    proc = batch(
        "score",
        "iris",
        "--store",
        str(store_dir),
        "--input",
        str(path),
        "--output",
        str(tmp_path / "o.parquet"),
        check=False,
    )
    assert_one_line_error(proc, 2, "3 of 200,000 rows rejected")
    assert "row 100000" in proc.stderr and "'x0' must be a finite number, got 'not-a-number'" in proc.stderr

    rejects = tmp_path / "rejects.jsonl"
    proc = batch(
        "score", "iris", "--store", str(store_dir), "--input", str(path), "--output", str(tmp_path / "o.parquet"),
        "--rejects", str(rejects), "--max-reject-rate", "0.001", "--batch-rows", "40000",
    )  # fmt: skip
    assert "rejected 3" in proc.stdout
    refused = read_table(str(rejects)).sort_values("row")
    assert refused["row"].tolist() == [100_000, 150_000, 180_000]
    assert "not-a-number" in refused["record"].iloc[0]
    assert refused["reason"].tolist()[1:] == [
        "line 150002: expected 5 fields, saw 7",
        "line 180002: expected 5 fields, saw 3",
    ]
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert len(out) == n - 3 and not out["id"].isin([100_000, 150_000, 180_000]).any()


def test_bad_input_gives_one_line_errors(tmp_path, store_dir, rows):
    def refused(source: str, *extra: str) -> subprocess.CompletedProcess:
        args = ("--store", str(store_dir), "--input", str(tmp_path / source), "--output", "o.csv", *extra)
        return batch("score", "iris", *args, check=False)

    rows[["id", "x0", "x1"]].to_csv(tmp_path / "narrow.csv", index=False)
    assert_one_line_error(refused("narrow.csv"), 2, "input lacks required column(s) ['x2', 'x3']")
    (tmp_path / "empty.csv").write_text("id,x0,x1,x2,x3\n")
    assert_one_line_error(refused("empty.csv"), 2, "empty")
    assert_one_line_error(refused("none.csv"), 3, "no such input")
    rows.to_csv(tmp_path / "in.csv", index=False)
    db = f"sqlite:///{tmp_path}/p.db"
    assert_one_line_error(refused("in.csv", "--output", db), 2, "needs --key")
    proc = refused("in.csv", "--output", db, "--key", "nope")
    assert_one_line_error(proc, 2, "--key column(s) ['nope'] are not in the output")


def test_validation_splits_without_failing_the_batch(sales_forecaster):
    sig = sales_forecaster.signature()
    frame = pd.DataFrame({"series": ["total", "nowhere", "total", "total"], "range": [3, 2, 0, "x"]})
    result = validation.split(sig, frame)
    assert result.rows.index.tolist() == [0]
    reasons = dict(result.rejects)
    assert "unknown series" in reasons[1] or "series" in reasons[1]
    assert "'range' must be an integer between 1 and 60" in reasons[2]
    assert set(reasons) == {1, 2, 3}


def table_rows(url: str, table: str) -> list[tuple]:
    engine = sa.create_engine(driver_url(url))
    with engine.connect() as conn:
        result = sorted(tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")))
    engine.dispose()
    return result


def score_to_sql(store_dir, path, url: str, run_id: str | None = None) -> Report:
    job = ScoreJob(str(store_dir), "iris", str(path), Output(url, ("id",), "scores"), batch_rows=4_000, run_id=run_id)
    return score(job)


def test_sqlite_upserts_make_reruns_idempotent(tmp_path, store_dir, rows):
    path = tmp_path / "in.parquet"
    rows.to_parquet(path)
    url = f"sqlite:///{tmp_path}/scores.db"
    report = score_to_sql(store_dir, path, url)
    first = table_rows(url, "scores")
    assert score_to_sql(store_dir, path, url).run_id == report.run_id  # same job, same input: same run id
    assert table_rows(url, "scores") == first and len(first) == len(rows)
    rows.iloc[::-1].to_parquet(path)  # new input: a new run id, the same rows updated in place
    assert score_to_sql(store_dir, path, url).run_id != report.run_id
    score_to_sql(store_dir, path, url, "run-2")
    again = table_rows(url, "scores")
    assert len(again) == len(rows) and {r[-1] for r in again} == {"run-2"}


@pytest.mark.postgres
def test_postgresql_sink_upserts(tmp_path, store_dir, rows, postgres_url):
    path = tmp_path / "in.jsonl"
    write_table(rows.iloc[:5_000], str(path))
    score_to_sql(store_dir, path, postgres_url)
    first = table_rows(postgres_url, "scores")
    score_to_sql(store_dir, path, postgres_url)
    assert table_rows(postgres_url, "scores") == first and len(first) == 5_000
    assert SQLSink(postgres_url, "scores").get(42)[0]["id"] == 42


@pytest.fixture(scope="module")
def history_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "history.csv"
    generate_sales(3, 4, periods=400, seed=3).to_csv(path, index=False)
    return path


def forecast_job(history, output: Output, **kw) -> ForecastJob:
    spec = HistorySpec(series_cols=("store_nbr", "family"))
    return ForecastJob("sales", str(history), 14, output, spec=spec, shards=4, **kw)


def test_forecast_per_series_with_bounds_and_totals(tmp_path, history_csv):
    report = forecast(forecast_job(history_csv, Output(str(tmp_path / "f.parquet")), aggregate="store_nbr"))
    out = pd.read_parquet(tmp_path / "f.parquet")
    series = out[out["method"] != "sum"]
    assert report.extra["series"] == 12 and series["series"].nunique() == 12
    assert (series.groupby("series").size() == 14).all()
    assert (series["lower"] <= series["forecast"]).all() and (series["forecast"] <= series["upper"]).all()
    labels = out[["model", "version", "run_id"]].drop_duplicates().to_dict("records")
    assert labels == [{"model": "sales", "version": 0, "run_id": report.run_id}]
    totals = out[out["method"] == "sum"].set_index(["store_nbr", "date"])["forecast"]
    assert len(totals) == 3 * 14
    summed = series.groupby(["store_nbr", "date"])["forecast"].sum()
    np.testing.assert_allclose(totals.sort_index(), summed.sort_index())


def test_forecast_with_the_stored_model(tmp_path, store_dir):
    from conveyor.sales_data import DEMO_PATH

    raw = pd.read_csv(DEMO_PATH)
    extra = raw[raw["store_nbr"] == 1].assign(store_nbr=99)  # a store the stored model never saw
    pd.concat([raw, extra]).to_csv(tmp_path / "h.csv", index=False)
    out = Output(str(tmp_path / "f.parquet"), rejects=str(tmp_path / "r.jsonl"), max_reject_rate=0.5)
    job = forecast_job(tmp_path / "h.csv", out, store=str(store_dir))
    report = forecast(job)
    got = pd.read_parquet(tmp_path / "f.parquet")
    assert report.extra["series"] == 12 and len(got) == 12 * 14
    assert set(got["version"]) == {1} and set(got["method"]) == {"stored"}
    want = ModelStore(store_dir).load("sales").predict_records([{"series": "1/GROCERY I", "range": 14}])
    own = got[got["series"] == "1/GROCERY I"]
    np.testing.assert_allclose(own["forecast"], want["forecast"][0])
    refused = read_table(str(tmp_path / "r.jsonl"))
    assert len(refused) == 4 and refused["reason"].str.contains("'series' must be one of").all()


def test_forecast_rejects_bad_history_rows(tmp_path, history_csv):
    raw = pd.read_csv(history_csv)
    raw = raw.astype({"sales": object})
    raw.loc[100, "sales"] = "lots"
    raw.loc[200, "date"] = "someday"
    raw.to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(TooManyRejects, match="2 of 4,800 rows rejected"):
        forecast(forecast_job(tmp_path / "h.csv", Output(str(tmp_path / "f.csv"))))
    out = forecast_job(
        tmp_path / "h.csv", Output(str(tmp_path / "f.csv"), rejects=str(tmp_path / "r.csv"), max_reject_rate=0.01)
    )
    forecast(out)
    refused = pd.read_csv(tmp_path / "r.csv").sort_values("row")
    assert refused["row"].tolist() == [100, 200]
    assert refused["reason"].tolist() == ["'sales' must be a number", "'date' must be a date in format ISO8601"]
    with pytest.raises(InvalidInput, match="--aggregate 'region'"):
        forecast(forecast_job(history_csv, Output(str(tmp_path / "g.csv")), aggregate="region"))


def test_refused_last_rows_stay_missing_and_the_forecast_starts_after_the_input(tmp_path):
    """Refused rows were dropped, then counted as zero sales; refused last rows made the forecast start on them."""
    raw = generate_sales(1, 2, periods=120, seed=7)
    raw.to_csv(tmp_path / "clean.csv", index=False)
    bad = raw.astype({"sales": object})
    last_two = bad.index[bad["family"] == bad["family"].iloc[0]][-2:]
    middle = bad.index[bad["family"] == bad["family"].iloc[0]][60:64]
    bad.loc[last_two.union(middle), "sales"] = "n/a"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    got = {}
    for name in ("clean", "bad"):
        job = forecast_job(tmp_path / f"{name}.csv", Output(str(tmp_path / f"{name}.parquet"),
                           rejects=str(tmp_path / f"{name}-r.csv"), max_reject_rate=0.1))  # fmt: skip
        forecast(job)
        got[name] = pd.read_parquet(tmp_path / f"{name}.parquet").set_index(["series", "date"])["forecast"]
    assert len(pd.read_csv(tmp_path / "bad-r.csv")) == 6
    assert got["bad"].index.equals(got["clean"].index)  # every series starts the day after the input's last date
    assert got["bad"].index.get_level_values("date").min() == "2013-05-01"
    ratio = got["bad"] / got["clean"]
    assert ratio.between(0.8, 1.25).all(), ratio  # six missing days do not pull the series towards zero


def test_day_first_history_over_several_chunks_forecasts_as_iso(tmp_path):
    """Each chunk guessed its own date format: 01/01/2013 read month-first, 13/01/2013 on became rejects."""
    raw = generate_sales(1, 2, periods=90, seed=5)
    raw.to_csv(tmp_path / "iso.csv", index=False)
    raw.assign(date=raw["date"].dt.strftime("%d/%m/%Y")).to_csv(tmp_path / "dmy.csv", index=False)
    got = {}
    for name in ("iso", "dmy"):
        job = forecast_job(tmp_path / f"{name}.csv", Output(str(tmp_path / f"{name}.parquet")), batch_rows=40)
        report = forecast(job)  # 180 rows: 5 chunks, the first with days 01..20 of January
        assert report.rows_in == 180 and report.rejected == 0 and report.extra["series"] == 2
        got[name] = pd.read_parquet(tmp_path / f"{name}.parquet").drop(columns="run_id")
    assert got["dmy"]["date"].min() == "2013-04-01"  # the day after the last of 90 days from 2013-01-01
    pd.testing.assert_frame_equal(got["dmy"], got["iso"])
    (tmp_path / "ten.csv").write_text("date,sales\n" + "".join(f"{d:02d}/01/2016,1\n" for d in range(1, 11)))
    args = ["batch", "forecast", "sales", "--history", str(tmp_path / "ten.csv"), "--range", "3", "--output",
            str(tmp_path / "f.csv"), "--date-format", "%Y-%m-%d"]  # fmt: skip
    refused = CliRunner().invoke(main, args)  # in process: the job is refused before Beam starts
    assert refused.exit_code == 2, refused.output
    assert "in format %Y-%m-%d (given by --date-format); they read as %d/%m/%Y or %m/%d/%Y" in refused.output


@pytest.mark.postgres
def test_forecast_to_postgresql_is_idempotent(history_csv, postgres_url):
    out = Output(postgres_url, ("series", "date"), "forecasts")
    forecast(forecast_job(history_csv, out))
    first = table_rows(postgres_url, "forecasts")
    forecast(forecast_job(history_csv, out))
    assert table_rows(postgres_url, "forecasts") == first and len(first) == 12 * 14
    assert forecast(forecast_job(history_csv, out, aggregate="store_nbr")).run_id not in {r[-1] for r in first}


def test_service_answers_from_batch_forecasts(tmp_path, store_dir, history_csv):
    db = f"sqlite:///{tmp_path}/forecasts.db"
    proc = batch(
        "forecast", "sales", "--history", str(history_csv), "--range", "7", "--output", db,
        "--series-cols", "store_nbr,family", "--aggregate", "store_nbr", "--shards", "3",
    )  # fmt: skip
    assert "forecast 12 series" in proc.stdout and "wrote 105 rows" in proc.stdout
    server = start_server(store_dir, "sales", tmp_path, "--predictions", db, "--predictions-table", "predictions")
    try:
        with server.client() as client:
            body = client.get("/predictions/" + urllib.parse.quote("2/PRODUCE")).json()
            assert body["key"] == "2/PRODUCE"
            stored = body["predictions"]
            assert len(stored) == 7 and [r["date"] for r in stored] == sorted(r["date"] for r in stored)
            assert all(r["lower"] <= r["forecast"] <= r["upper"] for r in stored)
            assert {r["model"] for r in stored} == {"sales"}
            total = client.get("/predictions/store_nbr=2").json()["predictions"]
            assert len(total) == 7 and total[0]["method"] == "sum"
            assert client.get("/predictions/nowhere").status_code == 404
    finally:
        server.stop()


@pytest.mark.redis
def test_score_to_redis_hashes_is_idempotent(tmp_path, store_dir, rows, redis_url):
    import redis

    small = rows.iloc[:500]
    write_table(small, str(tmp_path / "in.parquet"))
    args = [
        "score",
        "iris",
        "--store",
        str(store_dir),
        "--input",
        str(tmp_path / "in.parquet"),
        "--output",
        redis_url,
        "--key",
        "id",
        "--table",
        "scores",
        "--run-id",
        "r1",
    ]
    batch(*args)
    batch(*args)  # a re-run overwrites the same hashes
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("scores:*")
    assert len(keys) == 500
    want = expected(store_dir, small)
    stored = client.hgetall("scores:7")
    assert stored[b"prediction"].decode() == want["prediction"].iloc[7]
    assert float(stored[b"proba_yes"]) == pytest.approx(want["proba_yes"].iloc[7])
    assert stored[b"model"] == b"iris" and stored[b"run_id"] == b"r1"


# --- an existing table of another layout; a re-run that replaces a series --------------------------------


def other_tables(url: str) -> None:
    engine = sa.create_engine(driver_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE other (id INTEGER PRIMARY KEY, score REAL)"))
        conn.execute(sa.text("INSERT INTO other VALUES (1, 0.5)"))
        columns = "id BIGINT, x0 FLOAT, x1 FLOAT, x2 FLOAT, x3 FLOAT, prediction TEXT, proba_no FLOAT, proba_yes FLOAT"
        conn.execute(sa.text(f"CREATE TABLE rekeyed ({columns}, model TEXT, version BIGINT, run_id TEXT, "
                             "PRIMARY KEY (id, run_id))"))  # fmt: skip
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_score_refuses_a_table_of_another_layout_up_front(tmp_path, store_dir, rows, database, request):
    url = f"sqlite:///{tmp_path}/o.db" if database == "sqlite" else request.getfixturevalue("postgres_url")
    other_tables(url)
    rows.iloc[:100].to_csv(tmp_path / "in.csv", index=False)
    args = ["score", "iris", "--store", str(store_dir), "--input", str(tmp_path / "in.csv"), "--output", url]
    proc = batch(*args, "--key", "id", "--table", "other", check=False)  # was a 21-line traceback, KeyError 'x0'
    assert_one_line_error(proc, 2, "table 'other' in ")
    assert (
        "has columns ['id', 'score'] and lacks ['x0', 'x1', 'x2', 'x3', 'prediction', 'proba_no', 'proba_yes', "
        "'model', 'version', 'run_id'], which this job writes: pass --table NEW for a new table, or drop that one"
    ) in proc.stderr
    proc = batch(*args, "--key", "id", "--table", "rekeyed", check=False)
    assert_one_line_error(proc, 2, "table 'rekeyed' in ")
    assert "is keyed by ['id', 'run_id'], not by ['id'] as this job upserts" in proc.stderr
    assert table_rows(url, "other") == [(1, 0.5)] and table_rows(url, "rekeyed") == []  # nothing written
    batch(*args, "--key", "id,run_id", "--table", "rekeyed")  # the table's own key: written
    assert len(table_rows(url, "rekeyed")) == 100


def test_forecast_rerun_with_a_shorter_range_replaces_each_series(tmp_path, store_dir, history_csv):
    db = f"sqlite:///{tmp_path}/forecasts.db"
    args = ["forecast", "sales", "--history", str(history_csv), "--output", db, "--series-cols", "store_nbr,family",
            "--aggregate", "store_nbr", "--shards", "3"]  # fmt: skip
    batch(*args, "--range", "5")
    first = {r[-1] for r in table_rows(db, "predictions")}
    proc = batch(*args, "--range", "3")
    assert "wrote 45 rows" in proc.stdout  # 12 series and 3 totals, 3 days each
    stored = pd.DataFrame(table_rows(db, "predictions"))
    assert len(stored) == 45 and not set(stored.iloc[:, -1]) & first  # no row of the first run is left
    server = start_server(store_dir, "sales", tmp_path, "--predictions", db)
    try:
        with server.client() as client:
            for key in ("2/PRODUCE", "store_nbr=2"):
                served = client.get("/predictions/" + urllib.parse.quote(key, safe="")).json()["predictions"]
                assert len(served) == 3 and len({r["run_id"] for r in served}) == 1, served
    finally:
        server.stop()


@pytest.mark.postgres
def test_forecast_rerun_replaces_each_series_in_postgresql(history_csv, postgres_url):
    out = Output(postgres_url, ("series", "date"), "replaced")
    forecast(ForecastJob("sales", str(history_csv), 5, out, spec=HistorySpec(series_cols=("store_nbr", "family"))))
    report = forecast(
        ForecastJob("sales", str(history_csv), 3, out, spec=HistorySpec(series_cols=("store_nbr", "family")))
    )
    stored = table_rows(postgres_url, "replaced")
    assert len(stored) == 12 * 3 and {r[-1] for r in stored} == {report.run_id}
    assert len(SQLSink(postgres_url, "replaced").get("1/GROCERY I")) == 3


def test_a_series_is_forecast_from_three_dates_whatever_shard_it_lands_in():
    from conveyor.batch.forecasting import fit_shard

    long = generate_sales(1, 2, periods=60, seed=4)
    long = long.assign(
        series=long["store_nbr"].astype(str) + "/" + long["family"].astype(str), date=pd.to_datetime(long["date"])
    )
    end = long["date"].max()
    short = {n: pd.date_range(end=end, periods=n) for n in (1, 2, 3, 5)}
    extra = [pd.DataFrame({"series": f"{n}d", "date": d, "sales": 10.0}) for n, d in short.items()]
    for history in (pd.concat([long, *extra]), *extra):  # with long series in its shard, or alone
        out, failed = fit_shard(history[["series", "date", "sales"]], 3, ())
        got = set(out["series"]) if len(out) else set()
        for name, reason in failed:
            assert reason == f"{name[0]} date(s) of history: at least 3 are needed", reason
        assert {"3d", "5d"} & set(history["series"]) <= got
        assert not {"1d", "2d"} & got and {"1d", "2d"} & set(history["series"]) == {n for n, _ in failed}

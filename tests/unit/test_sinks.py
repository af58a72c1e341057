"""Sinks without servers: file parts and their merge, SQLite upserts, and the URI dispatch."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from conveyor.errors import ConveyorError, InvalidInput, NotFound
from conveyor.io import read_table
from conveyor.sinks import kind, open_sink
from conveyor.sinks.bigquery import table_spec
from conveyor.sinks.files import FileSink
from conveyor.sinks.sql import SQLSink, driver_url


def frame(start: int, n: int, **extra) -> pd.DataFrame:
    return pd.DataFrame({"id": range(start, start + n), "score": [i / 10 for i in range(start, start + n)], **extra})


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_file_parts_merge_in_name_order_and_reruns_replace(tmp_path, fmt):
    target = str(tmp_path / f"out.{fmt}")
    sink = FileSink(target)
    sink.prepare()
    sink.write_frame(frame(3, 2), part="b")
    sink.write_frame(frame(0, 3), part="a")
    sink.write_frame(frame(0, 3), part="a")  # a retried batch rewrites its own part
    assert sink.finalize() == 5
    assert read_table(target)["id"].tolist() == [0, 1, 2, 3, 4]
    again = FileSink(target)
    again.prepare()
    again.write_frame(frame(10, 1), part="a")
    again.finalize()
    assert read_table(target)["id"].tolist() == [10]
    assert not (tmp_path / f"out.{fmt}.parts").exists()


def test_parquet_merge_unifies_types_across_parts(tmp_path):
    target = str(tmp_path / "out.parquet")
    sink = FileSink(target)
    sink.prepare()
    sink.write_frame(pd.DataFrame({"id": [1], "note": [None], "x": [1]}), part="a")
    sink.write_frame(pd.DataFrame({"id": [2], "note": ["hi"], "x": [1.5]}), part="b")
    sink.write_frame(pd.DataFrame({"id": ["three"], "note": ["yo"], "x": [2.0]}), part="c")
    assert sink.finalize() == 3
    out = pd.read_parquet(target)
    assert out["id"].tolist() == ["1", "2", "three"] and out["x"].tolist() == [1.0, 1.5, 2.0]


def test_directory_output_keeps_parts(tmp_path):
    sink = FileSink(f"{tmp_path}/scores.csv/")
    sink.prepare()
    sink.write_frame(frame(0, 4), part="a")
    assert sink.finalize() == 4
    assert [p.name for p in (tmp_path / "scores.csv").iterdir()] == ["part-a.csv"]


def test_sql_write_frame_upserts_and_reader_finds_the_writers_key(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    writer = SQLSink(url, "forecasts", key=("series", "date"))
    batch = pd.DataFrame(
        {"series": ["a", "a", "b"], "date": ["2024-01-02", "2024-01-01", "2024-01-01"], "forecast": [2.0, 1.0, None]}
    )
    assert writer.write_frame(batch) == 3
    writer.write_frame(batch.assign(forecast=[20.0, 10.0, 5.0]))
    reader = SQLSink(url, "forecasts")  # as the service opens it: no key given
    rows = reader.get("a")
    assert reader.key == ("series", "date")
    assert [(r["date"], r["forecast"]) for r in rows] == [("2024-01-01", 10.0), ("2024-01-02", 20.0)]
    assert reader.get("b")[0]["forecast"] == 5.0
    assert reader.get("zzz") == []


def test_sql_reader_before_any_write(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        SQLSink(f"sqlite:///{tmp_path}/none.db", "predictions").get("x")


def test_uri_dispatch_and_errors(tmp_path):
    assert kind("sqlite:///x.db") == kind("postgresql://h/db") == "sql"
    assert kind("redis://localhost") == "redis" and kind("bigquery://p/d.t") == "bigquery"
    assert kind("gs://bucket/out.parquet") == kind(str(tmp_path / "o.csv")) == "file"
    with pytest.raises(ConveyorError, match="needs --key"):
        open_sink(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(open_sink(str(tmp_path / "o.csv")), FileSink)
    assert table_spec("bigquery://proj/sales.forecasts") == "proj:sales.forecasts"
    with pytest.raises(ConveyorError, match=r"bigquery://PROJECT/DATASET\.TABLE"):
        table_spec("bigquery://proj/forecasts")
    assert driver_url("sqlite:///x.db") == "sqlite:///x.db"
    assert driver_url("postgresql://u@h/db").startswith("postgresql+psycopg")


def forecast_rows(series: str, days: int, run: str) -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=days).strftime("%Y-%m-%d")
    return pd.DataFrame({"series": series, "date": dates, "forecast": range(days), "run_id": run})


def test_sql_replace_a_write_supersedes_every_older_row_of_its_series(tmp_path):
    url = f"sqlite:///{tmp_path}/f.db"
    sink = SQLSink(url, "forecasts", key=("series", "date"), replace=("series",))
    sink.write_frame(pd.concat([forecast_rows("a", 5, "r1"), forecast_rows("b", 5, "r1")]))
    sink.write_frame(forecast_rows("a", 3, "r2"))  # a re-run with a shorter horizon, for series a
    reader = SQLSink(url, "forecasts")
    assert [(r["date"], r["run_id"]) for r in reader.get("a")] == [
        ("2024-01-01", "r2"),
        ("2024-01-02", "r2"),
        ("2024-01-03", "r2"),
    ]
    assert {r["run_id"] for r in reader.get("b")} == {"r1"} and len(reader.get("b")) == 5  # other series untouched

    # one transaction: a write that fails half way (its 2,001st row has no date) leaves the older rows
    big = forecast_rows("a", 2_001, "r3").astype(object)
    big.loc[2_000, "date"] = None
    with pytest.raises(ConveyorError, match="cannot write to table 'forecasts'"):
        sink.write_frame(big)
    assert {r["run_id"] for r in reader.get("a")} == {"r2"} and len(reader.get("a")) == 3


def test_sql_layout_is_checked_before_writing(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE predictions (id INTEGER PRIMARY KEY, score REAL)"))
        conn.execute(sa.text("CREATE TABLE scores (id INTEGER, model TEXT, x0 REAL, PRIMARY KEY (id, model))"))
        conn.execute(sa.text("CREATE TABLE strict (id INTEGER PRIMARY KEY, x0 REAL, owner TEXT NOT NULL)"))
    engine.dispose()
    with pytest.raises(InvalidInput) as exc:
        SQLSink(url, "predictions", key=("id",)).check_layout(["id", "x0", "prediction"])
    assert str(exc.value) == (
        f"table 'predictions' in {url} has columns ['id', 'score'] and lacks ['x0', 'prediction'], "
        "which this job writes: pass --table NEW for a new table, or drop that one"
    )
    with pytest.raises(InvalidInput) as exc:
        SQLSink(url, "scores", key=("id",)).check_layout(["id", "model", "x0"])
    assert str(exc.value) == (
        f"table 'scores' in {url} is keyed by ['id', 'model'], not by ['id'] as this job upserts: "
        "pass --table NEW for a new table, or drop that one"
    )
    with pytest.raises(InvalidInput, match=r"requires \['owner'\], which this job does not write"):
        SQLSink(url, "strict", key=("id",)).check_layout(["id", "x0"])
    SQLSink(url, "scores", key=("model", "id")).check_layout(["id", "model", "x0"])  # the key as a set
    SQLSink(url, "absent", key=("id",)).check_layout(["id", "x0"])  # created by the first write

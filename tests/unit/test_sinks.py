"""Sinks without servers: file parts and their merge, SQLite upserts, and the URI dispatch."""

from __future__ import annotations

import pandas as pd
import pytest

from conveyor.errors import ConveyorError, NotFound
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

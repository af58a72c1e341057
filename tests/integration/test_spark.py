"""The Spark engine on a real standalone cluster (a master and two workers on loopback): work in progress."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

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

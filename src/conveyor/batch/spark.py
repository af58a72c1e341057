"""Batch on Apache Spark: a session on the master a team names (a standalone cluster, YARN, Kubernetes or
local[N]), set up so Conveyor's jobs run the same there as on Beam.

Work in progress (issue 12): the session; the score and forecast jobs come next.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from conveyor.errors import InvalidSetting, require

require("pyspark", "spark")

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
    # PySpark 4.3 warns on each use of pandas >= 3 (its pandas UDF and Arrow paths work: they are what we use).
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="pyspark")
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

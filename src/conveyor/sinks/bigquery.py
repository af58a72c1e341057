"""BigQuery through Beam's own IO: the pipeline ends in `WriteToBigQuery` (not testable offline, kept thin).

`bigquery://PROJECT/DATASET.TABLE` names the table. Batches become rows (dicts) for Beam's writer, which
loads them with file loads on Dataflow; a re-run with `--write-disposition truncate` replaces the table,
the idempotent choice for batch jobs. Needs `apache-beam[gcp]`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from conveyor.errors import ConveyorError


def table_spec(uri: str) -> str:
    """`bigquery://project/dataset.table` -> `project:dataset.table`, Beam's table spec."""
    rest = uri.split("://", 1)[1]
    project, _, table = rest.partition("/")
    if not project or table.count(".") != 1:
        raise ConveyorError(f"bad BigQuery URI {uri!r}: use bigquery://PROJECT/DATASET.TABLE")
    return f"{project}:{table}"


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def write_transform(uri: str, truncate: bool = False) -> Any:
    """The Beam transform that writes dict rows to the table, creating it with an inferred schema."""
    from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

    return WriteToBigQuery(
        table_spec(uri),
        schema="SCHEMA_AUTODETECT",
        write_disposition=BigQueryDisposition.WRITE_TRUNCATE if truncate else BigQueryDisposition.WRITE_APPEND,
        create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
        method=WriteToBigQuery.Method.FILE_LOADS,
    )

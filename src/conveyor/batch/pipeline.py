"""What the score and forecast pipelines share on Beam: reading chunks, writing frames and rejects, running it.

Elements are DataFrame chunks, never single rows: per-element overhead on Beam is large, per-row work is
vectorised. After a run the driver (`jobs.finish`) merges file parts, reads the counters and enforces the
reject rate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from conveyor.batch import sources
from conveyor.batch.jobs import Output, conveyor_error
from conveyor.errors import ConveyorError, require
from conveyor.sinks import kind, open_sink

beam = require("apache_beam", "beam")

from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

NAMESPACE = "conveyor"
REJECTS = "rejects"


# --- DoFns shared by both pipelines ------------------------------------------------------------------


class ReadChunks(beam.DoFn):
    """(source number, URI) -> Chunks of at most `rows` rows; unparseable lines go to the rejects output."""

    def __init__(self, rows: int, query: str | None) -> None:
        self.rows = rows
        self.query = query

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        number, uri = element
        for chunk in sources.read_chunks(uri, self.rows, self.query):
            Metrics.counter(NAMESPACE, "rows_in").inc(len(chunk.frame) + len(chunk.rejects))
            for rej in chunk.rejects:
                yield beam.pvalue.TaggedOutput(REJECTS, rej)
            if len(chunk.frame):
                yield number, chunk


class WriteFrames(beam.DoFn):
    """Writes (part name, frame) through the sink for `uri`, opened once per worker."""

    def __init__(self, uri: str, key: Sequence[str], table: str, counter: str, replace: Sequence[str] = ()) -> None:
        self.uri = uri
        self.key = tuple(key)
        self.table = table
        self.counter = counter
        self.replace = tuple(replace)

    def setup(self) -> None:
        self.sink = open_sink(self.uri, key=self.key, table=self.table, replace=self.replace)
        self.is_file = kind(self.uri) == "file"

    def process(self, element: tuple[str, pd.DataFrame]) -> None:
        part, frame = element
        # A file part is named after its input chunk, so a retried bundle rewrites the same part.
        written = self.sink.write_frame(frame, part=part) if self.is_file else self.sink.write_frame(frame)
        Metrics.counter(NAMESPACE, self.counter).inc(written)

    def teardown(self) -> None:
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.close()


def write_frames(pcoll: Any, out: Output, counter: str, label: str) -> None:
    if kind(out.uri) == "bigquery":
        from conveyor.sinks import bigquery

        (
            pcoll
            | f"{label}Rows" >> beam.FlatMap(lambda e: bigquery.rows(e[1]))
            | f"{label}BigQuery" >> bigquery.write_transform(out.uri)
        )
        return
    pcoll | label >> beam.ParDo(WriteFrames(out.uri, out.key, out.table, counter, out.replace))


def write_rejects(rejects: Any, path: str) -> None:
    (
        rejects
        | "BatchRejects" >> beam.BatchElements(min_batch_size=1, max_batch_size=10_000)
        | "RejectFrames" >> beam.Map(lambda recs: (uuid.uuid4().hex, pd.DataFrame.from_records(recs)))
        | "WriteRejects" >> beam.ParDo(WriteFrames(path, (), "rejects", "rejected"))
    )


# --- the driver ------------------------------------------------------------------------------------------


def run(build: Any, beam_args: Sequence[str]) -> dict[str, int]:
    options = PipelineOptions(list(beam_args))
    try:
        with beam.Pipeline(options=options) as p:
            build(p)
        result = p.result
    except ConveyorError:
        raise
    except Exception as exc:
        raise conveyor_error(exc) from exc
    return {
        c.key.metric.name: int(c.committed or c.attempted or 0)
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    }

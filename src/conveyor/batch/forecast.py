"""`conveyor batch forecast`: tidy the history, group it by series into shards, fit or load, forecast, total."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from conveyor import validation
from conveyor.batch import forecasting, sources
from conveyor.batch.jobs import ForecastJob, Report, finish, plan_forecast
from conveyor.batch.pipeline import (
    NAMESPACE,
    REJECTS,
    Metrics,
    ReadChunks,
    beam,
    run,
    write_frames,
    write_rejects,
)

# --- forecasting -------------------------------------------------------------------------------------


class TidyChunk(beam.DoFn):
    """Raw history chunk -> (shard, tidy rows) per shard of series; rows with a bad date or sales are rejects."""

    def __init__(self, spec: forecasting.HistorySpec, shards: int) -> None:
        self.spec = spec
        self.shards = shards

    def process(self, element: tuple[int, sources.Chunk]) -> Iterator[Any]:
        _, chunk = element
        rows, refused = forecasting.tidy(chunk.frame, self.spec)
        for rej in validation.reject_records(chunk.frame, refused, chunk.source):
            yield beam.pvalue.TaggedOutput(REJECTS, rej)
        shard = forecasting.shard_of(rows["series"], self.shards)
        for number, part in rows.groupby(shard, sort=False):
            yield int(number), part


class FitShard(beam.DoFn):
    """All history of a shard of series -> their forecasts; series that cannot be fitted become rejects."""

    def __init__(
        self,
        steps: int,
        series_cols: Sequence[str],
        aggregate: str | None,
        label: dict[str, Any],
        stored: tuple[str, str] | None = None,
    ) -> None:
        self.steps = steps
        self.series_cols = tuple(series_cols)
        self.aggregate = aggregate
        self.label = label
        self.stored = stored

    def setup(self) -> None:
        from conveyor.store import ModelStore

        self.done = 0
        self.model = ModelStore(self.stored[0]).load(self.stored[1]) if self.stored else None

    def process(self, element: tuple[int, Sequence[pd.DataFrame]]) -> Iterator[Any]:
        shard, parts = element
        history = pd.concat(list(parts), ignore_index=True)
        started = time.perf_counter()
        # Each series is a small fit: BLAS/OpenMP threads only fight the other workers (3x slower on 2 cores).
        # Limited here, not in setup: Beam may call process() from another thread, and OpenMP limits are per thread.
        with threadpool_limits(1):
            if self.model is not None:
                out, failed = forecasting.stored_forecasts(self.model, history, self.steps, self.series_cols)
            else:
                out, failed = forecasting.fit_shard(history, self.steps, self.series_cols)
        n = history["series"].nunique()
        self.done += n
        Metrics.counter(NAMESPACE, "series").inc(n - len(failed))
        print(
            f"forecast: shard {shard}: {n} series in {time.perf_counter() - started:.1f}s "
            f"({self.done} series by this worker)",
            file=sys.stderr,
            flush=True,
        )
        for name, reason in failed:
            Metrics.counter(NAMESPACE, "series_failed").inc()
            rec = {"source": "history", "row": -1, "reason": f"series {name!r}: {reason}", "record": name}
            yield beam.pvalue.TaggedOutput(REJECTS, rec)
        if len(out):
            if self.aggregate:
                for item in forecasting.partial_sums(out, self.aggregate):
                    yield beam.pvalue.TaggedOutput("sums", item)
            yield f"shard-{shard:05d}", out.assign(**self.label)


def _sum3(values: Any) -> tuple[float, float, float]:
    f = lo = hi = 0.0
    for a, b, c in values:
        f, lo, hi = f + a, lo + b, hi + c
    return f, lo, hi


def forecast(job: ForecastJob) -> Report:
    """Forecast `steps` periods for every series of the history (grouped in shards) and write them.

    With `job.store`, the stored forecaster `job.name` answers for the series it knows (its version is on
    every row); without, a forecaster is fitted per series and rows carry version 0 (fitted by this run,
    identified by its run id). Rows are keyed by (series, date): what `GET /predictions/{series}` reads.
    """
    plan = plan_forecast(job)
    paths, output, stored, label, cols = plan.paths, plan.output, plan.stored, plan.label, list(job.spec.series_cols)
    run_id, rejects_path = plan.run_id, plan.rejects_path

    def build(p: Any) -> None:
        read = (
            p
            | "Sources" >> beam.Create(list(enumerate(paths)))
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadChunks(job.batch_rows, job.query)).with_outputs(REJECTS, main="chunks")
        )
        tidy = read.chunks | "Tidy" >> beam.ParDo(TidyChunk(job.spec, job.shards)).with_outputs(REJECTS, main="rows")
        fitted = (
            tidy.rows
            | "BySeries" >> beam.GroupByKey()
            | "Fit"
            >> beam.ParDo(FitShard(job.steps, cols, job.aggregate, label, stored)).with_outputs(
                REJECTS, "sums", main="frames"
            )
        )
        frames = [fitted.frames]
        if job.aggregate:
            totals = (
                fitted.sums
                | "Totals" >> beam.CombinePerKey(_sum3)
                | "AllTotals" >> beam.combiners.ToList()
                | "TotalFrame"
                >> beam.Map(lambda t: ("totals", forecasting.aggregate_frame(t, job.aggregate, cols).assign(**label)))
            )
            frames.append(totals)
        write_frames(tuple(frames) | "AllFrames" >> beam.Flatten(), output, "rows_out", "Write")
        all_rejects = (read[REJECTS], tidy[REJECTS], fitted[REJECTS]) | "AllRejects" >> beam.Flatten()
        write_rejects(all_rejects, rejects_path)

    counters = run(build, job.beam_args)
    report = finish(output, counters, run_id, job.name, plan.started, rejects_path, plan.scratch, paths)
    report.extra = {"series": counters.get("series", 0), "series_failed": counters.get("series_failed", 0)}
    return report

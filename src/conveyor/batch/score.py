"""`conveyor batch score`: validate each chunk, predict with RunInference, label and write every row."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from conveyor.batch import sources
from conveyor.batch.handler import ConveyorModelHandler
from conveyor.batch.jobs import (
    Batch,
    Report,
    ScoreJob,
    finish,
    labelled,
    part_name,
    plan_score,
    validate_chunk,
)
from conveyor.batch.pipeline import (
    REJECTS,
    PipelineOptions,
    ReadChunks,
    beam,
    run,
    write_frames,
    write_rejects,
)
from conveyor.signature import Signature


def _rebalance(chunks: Any, beam_args: Sequence[str]) -> Any:
    """Spread one file's chunks over the workers; one in-process worker would only pay for the pickling."""
    options = PipelineOptions(list(beam_args)).get_all_options()
    runner = str(options.get("runner") or "DirectRunner")
    if runner.endswith("DirectRunner") and int(options.get("direct_num_workers") or 1) == 1:
        return chunks
    return chunks | "Rebalance" >> beam.Reshuffle()


# --- the job -----------------------------------------------------------------------------------------


class ValidateChunk(beam.DoFn):
    """Chunk -> Batch of accepted rows; each refused row goes to the rejects output with its reason."""

    def __init__(self, signature: dict[str, Any]) -> None:
        self.signature_dict = signature

    def setup(self) -> None:
        self.signature = Signature.from_dict(self.signature_dict)

    def process(self, element: tuple[int, sources.Chunk]) -> Iterator[Any]:
        batch, rejects = validate_chunk(self.signature, *element)
        for rej in rejects:
            yield beam.pvalue.TaggedOutput(REJECTS, rej)
        if batch is not None:
            yield batch


class ToOutput(beam.DoFn):
    """Scored Batch -> (part, frame): the input columns, the predictions, then model, version and run id."""

    def __init__(self, name: str, version: int, run_id: str) -> None:
        self.name, self.version, self.run_id = name, version, run_id

    def process(self, batch: Batch) -> Iterator[tuple[str, pd.DataFrame]]:
        yield part_name(batch.source, batch.start), labelled(batch, self.name, self.version, self.run_id)


def score(job: ScoreJob) -> Report:
    """Score every row of `job.input` with the model on Beam; raises TooManyRejects past the allowed reject rate."""
    from apache_beam.ml.inference.base import RunInference

    plan = plan_score(job)
    ref, signature, paths, run_id = plan.ref, plan.signature, plan.paths, plan.run_id

    def build(p: Any) -> None:
        read = (
            p
            | "Sources" >> beam.Create(list(enumerate(paths)))
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadChunks(job.batch_rows, job.query)).with_outputs(REJECTS, main="chunks")
        )
        checked = _rebalance(read.chunks, job.beam_args) | "Validate" >> beam.ParDo(
            ValidateChunk(signature.to_dict())
        ).with_outputs(REJECTS, main="batches")
        scored = checked.batches | "Score" >> RunInference(
            ConveyorModelHandler(job.store, str(ref), max_rows=job.batch_rows)
        )
        frames = scored | "Output" >> beam.ParDo(ToOutput(ref.name, ref.version, run_id))
        write_frames(frames, job.output, "rows_out", "Write")
        write_rejects((read[REJECTS], checked[REJECTS]) | "AllRejects" >> beam.Flatten(), plan.rejects_path)

    counters = run(build, job.beam_args)
    return finish(job.output, counters, run_id, str(ref), plan.started, plan.rejects_path, plan.scratch, paths)

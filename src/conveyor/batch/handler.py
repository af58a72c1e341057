"""A Beam `ModelHandler` for Conveyor models: RunInference loads the model once per worker from the store.

Elements are `Batch`es (DataFrames of validated rows), so Beam's batching is weighed in rows, not elements:
small batches are merged up to `max_rows` and predicted in one vectorised call, then split back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from conveyor.batch.jobs import Batch, batch_rows
from conveyor.errors import require
from conveyor.model import Model
from conveyor.store import ModelStore

require("apache_beam", "beam")

from apache_beam.ml.inference.base import ModelHandler  # noqa: E402


class ConveyorModelHandler(ModelHandler[Batch, Batch, Model]):
    def __init__(self, store: str, ref: str, max_rows: int = 100_000) -> None:
        super().__init__()
        self.store = store
        self.ref = ref
        self.max_rows = max_rows

    def load_model(self) -> Model:
        return ModelStore(self.store).load(self.ref)

    def run_inference(
        self, batch: Sequence[Batch], model: Model, inference_args: Mapping[str, Any] | None = None
    ) -> Iterable[Batch]:
        if not batch:
            return []
        if len(batch) == 1:
            return [replace(batch[0], predictions=model.predict(batch[0].inputs))]
        out = model.predict(pd.concat([b.inputs for b in batch], ignore_index=True))
        results, at = [], 0
        for b in batch:
            n = len(b.inputs)
            results.append(replace(b, predictions=out.iloc[at : at + n].reset_index(drop=True)))
            at += n
        return results

    def get_num_bytes(self, batch: Sequence[Batch]) -> int:
        return sum(int(b.inputs.memory_usage(deep=False).sum()) for b in batch)

    def get_metrics_namespace(self) -> str:
        return "conveyor"

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        # With element_size_fn, BatchElements counts sizes in rows: a batch holds at most max_rows rows.
        return {"min_batch_size": 1, "max_batch_size": self.max_rows, "element_size_fn": batch_rows}

    def share_model_across_processes(self) -> bool:
        return False

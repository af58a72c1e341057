"""A worker's model and a batcher of its own, for the batching tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from conveyor.model import Model
from conveyor.serve import codecs
from conveyor.serve.app import Service
from conveyor.serve.batching import AdaptiveBatcher
from conveyor.settings import ServeSettings
from conveyor.store import ModelStore


@contextlib.asynccontextmanager
async def batched(
    store: ModelStore, name: str, **options: float | object
) -> AsyncIterator[tuple[Model, AdaptiveBatcher]]:
    """The store's model `name` as a worker loads it, and a batcher of its own with `options`."""
    service = Service(ServeSettings(store=store.uri, model=name, poll_interval=0))
    await service.models.start()
    batcher = AdaptiveBatcher(**options)  # type: ignore[arg-type]
    try:
        yield service.model(), batcher
    finally:
        await service.models.stop()
        service.batcher.close()
        batcher.close()


def one_row(model: Model, row: bytes) -> tuple[dict, int]:
    return codecs.decode_body(b'{"instances": [%s]}' % row, "application/json", model.signature, 10)

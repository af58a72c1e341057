"""Serve one model reference and follow its alias: a new version is loaded beside the old one and swapped in.

Requests already holding the old model finish on it; a version that fails to load or verify is refused
(and not retried until the alias moves again) while the old one keeps serving. The service drives it from
its event loop (`start`, `check`); the stream worker calls the blocking `load` and `refresh` between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from conveyor import metrics
from conveyor.errors import ConveyorError
from conveyor.model import Model
from conveyor.store import ModelStore, Ref

log = logging.getLogger("conveyor.reload")


class ModelHolder:
    def __init__(self, store_uri: str, ref: str, poll_interval: float = 5.0) -> None:
        self.store = ModelStore(store_uri)
        self.ref = Ref.parse(ref)
        self.poll_interval = poll_interval
        self.model: Model | None = None
        self.refused: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def follows_alias(self) -> bool:
        return self.ref.version is None and self.poll_interval > 0

    def load(self) -> Model:
        self.model = self.store.load(self.ref)
        metrics.set_model(self.model.name, self.model.version, self.model.flavor)
        log.info("serving %s (flavor %s)", self.model.ref, self.model.flavor)
        return self.model

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        if self.follows_alias:
            self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # drop the model so its verified copy on disk is removed now: worker processes may end without
        # running interpreter-exit hooks
        self.model = None
        gc.unfreeze()
        gc.collect()

    async def check(self) -> bool:
        return await asyncio.to_thread(self.refresh)

    def refresh(self) -> bool:
        """Load and swap in the version the reference now points to; True if the served model changed."""
        current = self.model
        try:
            target = self.store.resolve(self.ref)
        except ConveyorError as exc:
            log.warning("cannot resolve %s: %s; still serving %s", self.ref, exc, current and current.ref)
            return False
        if (current is not None and target.version == current.version) or target.version == self.refused:
            return False
        try:
            new = self.store.load(target)
        except ConveyorError as exc:
            self.refused = target.version
            metrics.RELOADS.labels("refused").inc()
            log.error("refused %s: %s; still serving %s", target, exc, current and current.ref)
            return False
        self.model = new
        self.refused = None
        metrics.RELOADS.labels("swapped").inc()
        metrics.set_model(new.name, new.version, new.flavor, previous=current.version if current else None)
        log.info("swapped %s -> %s", current and current.ref, new.ref)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any single failure
                log.exception("model watch failed; retrying in %ss", self.poll_interval)

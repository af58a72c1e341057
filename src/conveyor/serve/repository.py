"""The models one server serves, by name: load, unload and follow each reference, as Triton's and MLServer's
model repositories do.

Each served model is a `ModelHolder` (its own hot reload). A model that fails to load is reported and refused,
never fatal: the others keep serving. gunicorn runs several worker processes, each with its own models; the
repository API (load/unload) answers on one of them, so the served set is published in a small state file of the
server's run directory, every worker applies it within `SYNC_SECONDS`, and the call answers once every live
worker has (a client that loads a model and then calls it never meets a worker that has not).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError, InvalidInput, NotFound, NotReady
from conveyor.model import Model
from conveyor.reload import ModelHolder
from conveyor.store import ModelStore, Ref

log = logging.getLogger("conveyor.serve")
SYNC_SECONDS = 0.05  # how often a worker looks at the shared state: a stat of one small file
APPLY_TIMEOUT = 120.0  # how long a load/unload waits for the other workers to apply it

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"  # the states Triton's and MLServer's index use


class LoadRefused(ConveyorError):
    """A model the store has but that cannot be served (unverifiable files, a broken pickle, a bad flavor)."""

    kind = "load_failed"


@dataclass
class Entry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state, "reason": self.reason}


class Repository:
    def __init__(self, store_uri: str, refs: list[str], poll_interval: float, run_dir: str | None = None) -> None:
        if not refs:
            raise InvalidInput("no model to serve: name one or more models, or --all")
        self.store = ModelStore(store_uri)
        self.store_uri = store_uri
        self.poll_interval = poll_interval
        self.refs: dict[str, str] = {Ref.parse(r).name: r for r in refs}  # what is asked for, in order
        self.default = next(iter(self.refs))  # the model of the seed's `GET /predict`
        self.holders: dict[str, ModelHolder] = {}
        self.loading: set[str] = set()
        self.failed: dict[str, str] = {}
        self._shared = Path(run_dir) if run_dir else None
        self._generation = 0
        self._state_seen = -1
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one change at a time in this worker (API calls and the follower)

    # --- lookups (every request) ----------------------------------------------------------------
    def get(self, name: str | None = None, version: str | None = None) -> Model:
        """The model served as `name` (None: the default), at `version` if given."""
        name = self.default if name is None else name
        holder = self.holders.get(name)
        model = holder.model if holder is not None else None
        if model is None:
            if name in self.loading:
                raise NotReady(f"model {name!r} is still loading")
            if name in self.failed:
                raise NotReady(f"model {name!r} could not be loaded: {self.failed[name]}")
            served = ", ".join(repr(n) for n in self.served()) or "none"
            raise NotFound(f"this service does not serve model {name!r} (it serves {served})")
        if version is not None and version != str(model.version):
            raise NotFound(f"this service serves {name} version {model.version}, not {version}")
        return model

    def served(self) -> list[str]:
        """Names serving now: those asked for in their order, then those loaded later."""
        names = [*(n for n in self.refs if n in self.holders), *(n for n in self.holders if n not in self.refs)]
        return [n for n in names if self.holders[n].model is not None]

    @property
    def ready(self) -> bool:
        """Every model asked for has loaded or been refused, and one at least serves."""
        return not self.loading and bool(self.served())

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load what is asked for or, in a worker started later, what the other workers serve now."""
        generation, models = self._read_state() if self._shared is not None else (0, dict(self.refs))
        await asyncio.gather(*(self._try_load(name, ref) for name, ref in models.items()))
        if self._shared is not None:
            self._state_seen = generation
            self._report()
            self._task = asyncio.create_task(self._follow())

    async def _try_load(self, name: str, ref: str) -> None:
        with contextlib.suppress(LoadRefused):  # logged and listed in the index as UNAVAILABLE
            await self._load(name, ref)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for holder in list(self.holders.values()):
            await holder.stop()
        self.holders.clear()

    async def _load(self, name: str, ref: str) -> Model:
        self.loading.add(name)
        holder = ModelHolder(self.store_uri, ref, self.poll_interval)
        try:
            await holder.start()
        except Exception as exc:  # a broken model must never take the others down
            reason = str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
            self.failed[name] = reason
            log.error("model %s (%s) refused: %s", name, ref, reason, exc_info=not isinstance(exc, ConveyorError))
            raise LoadRefused(f"model {name!r} ({ref}) could not be loaded: {reason}") from None
        finally:
            self.loading.discard(name)
        old = self.holders.get(name)
        self.holders[name] = holder
        self.failed.pop(name, None)
        if old is not None:
            await old.stop()
        assert holder.model is not None
        return holder.model

    async def _unload(self, name: str) -> None:
        holder = self.holders.pop(name, None)
        self.failed.pop(name, None)
        if holder is not None:
            await holder.stop()
            log.info("unloaded %s", name)

    # --- the repository API -----------------------------------------------------------------------
    def index(self) -> list[Entry]:
        """Every model of the store and every one asked for, with its state (Triton's and MLServer's index)."""
        names = list(dict.fromkeys([*self.refs, *self.holders, *self.store.names()]))
        rows = []
        for name in names:
            holder = self.holders.get(name)
            if holder is not None and holder.model is not None:
                rows.append(Entry(name, str(holder.model.version), READY))
            elif name in self.loading:
                rows.append(Entry(name, "", LOADING))
            elif name in self.failed:
                rows.append(Entry(name, "", UNAVAILABLE, self.failed[name]))
            else:
                rows.append(Entry(name, "", UNAVAILABLE, "unloaded"))
        return rows

    async def load(self, name: str) -> Model:
        """Load (or reload) `name` at the reference it was asked for, or its production/latest version."""
        names = await asyncio.to_thread(self.store.names)  # a listing of the store, off the event loop
        if name not in names:
            raise NotFound(f"the model store has no model {name!r}; it has {names}")
        ref = self.refs.get(name, name)
        async with self._locked_state() as state:
            model = await self._load(name, ref)
            if state is not None:
                state[name] = ref
        await self._wait_applied()
        return model

    async def unload(self, name: str) -> None:
        if name not in self.holders and name not in self.failed:
            raise NotFound(f"model {name!r} is not loaded")
        async with self._locked_state() as state:
            await self._unload(name)
            if state is not None:
                state.pop(name, None)
        await self._wait_applied()

    # --- sharing the served set between worker processes ----------------------------------------
    @property
    def _state_path(self) -> Path:
        assert self._shared is not None
        return self._shared / "repository.json"

    def _read_state(self) -> tuple[int, dict[str, str]]:
        try:
            doc = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return 0, dict(self.refs)
        return int(doc["generation"]), dict(doc["models"])

    @contextlib.asynccontextmanager
    async def _locked_state(self) -> AsyncIterator[dict[str, str] | None]:
        """Read-modify-write the served set under an exclusive lock; published only if the body succeeds."""
        async with self._lock:
            if self._shared is None:
                yield None
                return
            with open(self._shared / "repository.lock", "w") as lock:
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)  # other workers' calls: off the loop
                generation, models = self._read_state()
                yield models
                self._generation = generation + 1
                tmp = self._state_path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"generation": self._generation, "models": models}))
                tmp.replace(self._state_path)
                self._state_seen = self._generation
                self._report()

    async def _follow(self) -> None:
        """Apply what another worker published: load what it loaded, unload what it unloaded."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                if self._read_state()[0] == self._state_seen:
                    continue
                async with self._lock:
                    generation, models = self._read_state()
                    for name in [n for n in self.holders if n not in models]:
                        await self._unload(name)
                    for name, ref in models.items():
                        if name not in self.holders:
                            await self._try_load(name, ref)
                    self._state_seen = generation
                    self._report()
            except Exception:  # the follower must outlive any single failure
                log.exception("applying the shared model repository failed; retrying")

    def _report(self) -> None:
        """This worker's applied generation, read by the worker waiting in `_wait_applied`."""
        path = self._shared / f"worker-{os.getpid()}.json"  # type: ignore[operator]
        path.write_text(json.dumps({"generation": self._state_seen}))

    async def _wait_applied(self) -> None:
        if self._shared is None:
            return
        deadline = time.monotonic() + APPLY_TIMEOUT
        while time.monotonic() < deadline:
            behind = [pid for pid, gen in _workers(self._shared) if gen < self._generation]
            if not behind:
                return
            await asyncio.sleep(SYNC_SECONDS)
        log.warning("workers %s had not applied the model repository change after %ss", behind, APPLY_TIMEOUT)


def _workers(run_dir: Path) -> list[tuple[int, int]]:
    """(pid, applied generation) of every live worker; a dead worker's file is removed."""
    out = []
    for path in run_dir.glob("worker-*.json"):
        pid = int(path.stem.removeprefix("worker-"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass
        with contextlib.suppress(FileNotFoundError, ValueError):
            out.append((pid, int(json.loads(path.read_text())["generation"])))
    return out


# Triton's load and unload parameters that Conveyor honours; it has no ensembles, so unloading has no dependents.
LOAD_PARAMETERS: frozenset[str] = frozenset()
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})


def check_parameters(action: str, names: Iterable[str], accepted: frozenset[str]) -> None:
    """Refuse a load or unload parameter Conveyor cannot honour, rather than do something else than asked."""
    for name in names:
        if name in accepted:
            continue
        if name == "config" or name.startswith("file:"):
            raise InvalidInput(
                f"{action} takes no {name!r}: models load from the model store as they were saved; register a "
                "new version with `conveyor models add` (or `conveyor train`) and load that"
            )
        allowed = ", ".join(sorted(accepted)) or "none"
        raise InvalidInput(f"{action} takes no parameter {name!r} (accepted: {allowed})")


def describe(entries: list[Entry]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in entries]

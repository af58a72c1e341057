"""The service's HTTP contract inside a serverless function: one model, one request at a time, no server.

A function instance is started for a request and frozen between requests, so nothing here runs in the
background: the model is loaded once, when the instance starts (Lambda's INIT, functions-framework's import),
with no alias polling and no batcher; each request is decoded by the service's own codecs, predicted and
answered with the service's bodies and the same 4xx JSON errors. What the cold start imports is what the
model needs and the codecs, never Starlette, gunicorn, pydantic or prometheus-client.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor import limits
from conveyor.errors import ConveyorError, InvalidSetting, NotFound, PayloadTooLarge
from conveyor.model import Model
from conveyor.serve import codecs, tensors
from conveyor.serve.batching import predict_columns

log = logging.getLogger("conveyor.function")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
V2_MODEL = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")


class MethodNotAllowed(ConveyorError):
    http_status = 405
    kind = "method_not_allowed"


@dataclass(frozen=True)
class Limits:
    """The service's per-request limits, read from the same CONVEYOR_* variables."""

    max_body_bytes: int = limits.MAX_BODY_BYTES
    max_rows_per_request: int = limits.MAX_ROWS_PER_REQUEST
    max_forecast_steps: int = limits.MAX_FORECAST_STEPS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        values = {}
        for name in ("max_body_bytes", "max_rows_per_request", "max_forecast_steps"):
            variable = f"CONVEYOR_{name.upper()}"
            text = environ.get(variable, "").strip()
            if text:
                if not text.isdigit() or int(text) < 1:
                    raise InvalidSetting(f"{variable}={text!r}: expected a positive integer")
                values[name] = int(text)
        return cls(**values)


@dataclass(frozen=True)
class Reply:
    """What a function answers, whatever runtime carries it."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        return cls(status, body, {"content-type": "application/json", **(headers or {})})


class Function:
    """One loaded model answering requests given as plain values (method, path, query, headers, body)."""

    def __init__(self, model: Model, limits: Limits | None = None, serving: str | None = None) -> None:
        self.model = model
        self.limits = limits or Limits()
        self.serving = serving or model.ref
        self.forecaster = codecs.is_forecaster(model.signature)
        get, post = {"GET", "HEAD"}, {"POST"}
        self.routes: dict[str, tuple[set[str], Callable[..., Any]]] = {
            "/": (get, self.info),
            "/predict": (get | post, self.predict),
            "/healthz": (get, self.live),
            "/readyz": (get, self.ready),
            "/v2": (get, self.v2_server),
            "/v2/health/live": (get, self.live),
            "/v2/health/ready": (get, self.ready),
        }

    @classmethod
    def load(cls, store: str, ref: str) -> Function:
        """Load `ref` from `store` (checksums verified), as the function instance starts."""
        from conveyor.store import ModelStore

        return cls(ModelStore(store).load(ref), Limits.from_env(), serving=ref)

    def handle(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        """Answer one request; a ConveyorError is its 4xx (or 5xx) JSON body, anything else a logged 500."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        method = method.upper()
        try:
            return self._route(method, path or "/", codecs.query_values(query), headers, body)
        except ConveyorError as exc:
            if exc.http_status < 500:
                status, answer = codecs.error_body(path or "/", exc.kind, str(exc), exc.http_status)
                return Reply.json(answer, status)
            return self._server_error(exc.kind, str(exc), headers, method, path, exc)
        except Exception as exc:
            message = "internal error: the function's log has the details under request id {rid}"
            return self._server_error("internal", message, headers, method, path, exc)

    def _server_error(self, kind: str, message: str, headers, method: str, path: str, exc: BaseException) -> Reply:
        """The client gets an id to quote; the log gets the id and the details (never sent to the client)."""
        given = headers.get("x-request-id", "")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        log.error("request %s: %s %s answered 500 %s", rid, method, path, kind, exc_info=exc)
        text = message.format(rid=rid) if kind == "internal" else f"{message} (request id {rid})"
        status, answer = codecs.error_body(path, kind, text, 500)
        return Reply.json(answer, status, {"x-request-id": rid})

    def _route(self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes) -> Reply:
        if len(path) > 1:
            path = path.rstrip("/")
        if (v2 := V2_MODEL.fullmatch(path)) is not None:
            action = v2["action"] or ""
            allowed = {"POST"} if action == "/infer" else {"GET", "HEAD"}
            self._allow(method, allowed, path)
            if v2["name"] != self.model.name:
                raise NotFound(f"this function serves model {self.model.name!r}, not {v2['name']!r}")
            if v2["version"] is not None and v2["version"] != str(self.model.version):
                raise NotFound(
                    f"this function serves {self.model.name} version {self.model.version}, not {v2['version']}"
                )
            if action == "/infer":
                return self.v2_infer(self._body(body), headers)
            if action == "/ready":
                return Reply.json({"name": self.model.name, "ready": True})
            return Reply.json(tensors.v2_metadata(self.model))
        if path not in self.routes:
            raise NotFound(f"Not Found: {method} {path}")
        allowed, route = self.routes[path]
        self._allow(method, allowed, path)
        return route(method=method, query=query, headers=headers, body=body)

    @staticmethod
    def _allow(method: str, allowed: set[str], path: str) -> None:
        if method not in allowed:
            raise MethodNotAllowed(f"Method Not Allowed: {method} {path} (allowed: {', '.join(sorted(allowed))})")

    def _body(self, body: bytes) -> bytes:
        if len(body) > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"body of {len(body)} bytes; at most {self.limits.max_body_bytes} bytes are accepted")
        return body

    def _predict(self, columns: codecs.Columns, rows: int) -> dict[str, list[Any]]:
        if self.forecaster:
            codecs.check_forecast_steps(columns, rows, self.limits.max_forecast_steps)
        return predict_columns(self.model, columns, rows)

    # --- routes --------------------------------------------------------------------------------
    def predict(self, method: str, query: dict[str, str], headers: Mapping[str, str], body: bytes) -> Reply:
        signature = self.model.signature
        if method == "POST":
            content_type = headers.get("content-type", "")
            columns, rows = codecs.decode_body(
                self._body(body), content_type, signature, self.limits.max_rows_per_request
            )
            return Reply.json(codecs.rows_answer(self.model, self._predict(columns, rows)))
        columns, rows = codecs.decode_query(query, signature)
        result = self._predict(columns, rows)
        return Reply.json(codecs.query_answer(self.model, result, columns, rows, query.get("series"), self.forecaster))

    def v2_infer(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        limits = self.limits
        v2 = codecs.decode_v2(body, headers, self.model.signature, limits.max_rows_per_request, limits.max_body_bytes)
        codecs.check_v2_range(v2.columns, self.forecaster)
        content, reply_headers = codecs.encode_v2(self.model, self._predict(v2.columns, v2.rows), v2)
        return Reply(200, content, reply_headers)

    def info(self, **_: Any) -> Reply:
        return Reply.json(codecs.model_info(self.model, self.serving))

    def live(self, **_: Any) -> Reply:
        return Reply.json({"live": True})

    def ready(self, **_: Any) -> Reply:
        return Reply.json({"ready": True, "model": self.model.name, "version": self.model.version})

    def v2_server(self, **_: Any) -> Reply:
        from conveyor import __version__

        return Reply.json({"name": "conveyor", "version": __version__, "extensions": []})

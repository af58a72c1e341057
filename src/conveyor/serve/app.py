"""The HTTP routes of the prediction service (Starlette, one app per gunicorn worker)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.errors import ConveyorError, MalformedInput, NotFound, PayloadTooLarge
from conveyor.serve import codecs, metrics, page, tensors
from conveyor.serve.batching import AdaptiveBatcher
from conveyor.serve.openapi import openapi_spec
from conveyor.serve.repository import LOAD_PARAMETERS, UNLOAD_PARAMETERS, Repository, check_parameters, describe
from conveyor.settings import ServeSettings

log = logging.getLogger("conveyor.serve")
RUN_DIR_ENV = "CONVEYOR_RUN_DIR"
DOCS_PAGE = Path(__file__).with_name("docs.html")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Timeout(ConveyorError):
    http_status = 504
    kind = "timeout"


# A caller's (or a gateway's) own request id is kept when it is a plain token; anything else gets a new one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(headers: Any) -> str:
    given = headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def error_response(exc: ConveyorError, request: Request) -> JSON:
    metrics.ERRORS.labels(exc.kind).inc()
    if exc.http_status < 500:
        status, body = codecs.error_body(request.url.path, exc.kind, str(exc), exc.http_status)
        return JSON(body, status_code=status)
    # The server's side failed: the client gets an id to quote, the log gets the id and the cause's details.
    rid = request_id(request.headers)
    cause = exc.__cause__
    details = (type(cause), cause, cause.__traceback__) if cause else None
    level = logging.ERROR if cause else logging.WARNING  # a timeout or a model still loading is no fault
    where = f"{request.method} {request.url.path}"
    log.log(level, "request %s: %s answered %d %s: %s", rid, where, exc.http_status, exc.kind, exc, exc_info=details)
    status, body = codecs.error_body(request.url.path, exc.kind, f"{exc} (request id {rid})", exc.http_status)
    return JSON(body, status_code=status, headers={"x-request-id": rid})


class Service:
    """State of one worker: the models it serves, the batcher and the stored-predictions reader."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        run_dir = os.environ.get(RUN_DIR_ENV)  # shared by the workers of one server (serve/server.py)
        self.models = Repository(settings.store, settings.model_refs, settings.poll_interval, run_dir)
        self.batcher = AdaptiveBatcher(
            settings.max_batch_rows,
            settings.max_wait_ms,
            on_batch=metrics.observe_batch,
            timeout=settings.request_timeout,
        )
        self._kinds: dict[str, tuple[Any, bool]] = {}  # per name: (model, is it a forecaster), for its last version
        self.predictions = None
        self.grpc: Any = None  # this worker's gRPC servers (serve/grpc_service.GrpcServers), with --grpc-port
        if settings.predictions:
            from conveyor.sinks import open_reader

            self.predictions = open_reader(settings.predictions, settings.predictions_table)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.models.start()
        # The libraries and the model are ~150k long-lived objects; a full collection scanning them stalls a
        # worker ~80 ms, which was most of the p99. Freeze them out of the collector and collect less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self.settings.gc_thresholds)
        if self.settings.grpc_port is not None:
            # grpc is imported here, in the worker: its threads must not be started before gunicorn forks
            from conveyor.serve.grpc_service import start_grpc

            self.grpc = await start_grpc(self)
        try:
            yield
        finally:
            try:
                if self.grpc is not None:
                    from conveyor.serve.grpc_service import stop_grpc

                    await stop_grpc(self.grpc, self.settings.graceful_timeout)
                await self.models.stop()
                self.batcher.close()
            finally:
                metrics.flush()  # what the last requests counted, whatever failed above
            if self.predictions is not None:
                self.predictions.close()

    # --- helpers -------------------------------------------------------------------------------
    def model(self, name: str | None = None, version: str | None = None):
        """The model served as `name` (None: the first one named), at `version` if given."""
        return self.models.get(name, version)

    def _model_param(self, request: Request) -> str | None:
        """`/predict?model=NAME` picks one of the served models; without it, the first one named. For a default
        model with an input called `model`, the parameter is that input unless it names a served model."""
        name = request.query_params.get(codecs.MODEL_PARAM)
        if name is None or name in self.models.holders:
            return name
        default = self.models.holders.get(self.models.default)
        takes_it = default is not None and default.model is not None
        return None if takes_it and codecs.MODEL_PARAM in default.model.signature.input_names else name

    def forecaster(self, model) -> bool:
        """Whether `model` answers forecast paths (one per row, `range` steps long); worked out once per model."""
        kind = self._kinds.get(model.name)
        if kind is None or kind[0] is not model:
            kind = self._kinds[model.name] = (model, codecs.is_forecaster(model.signature))
        return kind[1]

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body of {int(declared)} bytes; at most {limit} bytes are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body larger than {limit} bytes: split the request")
            chunks.append(chunk)
        return b"".join(chunks)

    async def run(self, model, columns, rows: int):
        if self.forecaster(model):
            codecs.check_forecast_steps(columns, rows, self.settings.max_forecast_steps)
        started, outcome = time.perf_counter(), "error"
        try:
            answer = await self.batcher.predict(model, columns, rows)  # TimeoutError after request_timeout
            outcome = "ok"
            return answer
        except TimeoutError:
            outcome = Timeout.kind
            raise Timeout(f"no prediction within {self.settings.request_timeout:g} s; try again later") from None
        except ConveyorError as exc:
            outcome = exc.kind
            raise
        finally:
            metrics.observe_model(model.name, outcome, time.perf_counter() - started)

    # --- routes --------------------------------------------------------------------------------
    async def predict_get(self, request: Request) -> Response:
        model = self.model(self._model_param(request))
        columns, rows = codecs.decode_query(request.query_params, model.signature)
        served, result = await self.run(model, columns, rows)
        series = request.query_params.get("series")
        return JSON(codecs.query_answer(served, result, columns, rows, series, self.forecaster(served)))

    async def predict_post(self, request: Request) -> Response:
        model = self.model(self._model_param(request))
        body = await self.read_body(request)
        columns, rows = codecs.decode_body(
            body, request.headers.get("content-type", ""), model.signature, self.settings.max_rows_per_request
        )
        served, result = await self.run(model, columns, rows)
        return JSON(codecs.rows_answer(served, result))

    async def v2_infer(self, request: Request) -> Response:
        model = self.model(request.path_params["name"], request.path_params.get("version"))
        body = await self.read_body(request)
        limits = self.settings.max_rows_per_request, self.settings.max_body_bytes
        v2 = codecs.decode_v2(body, request.headers, model.signature, *limits)
        codecs.check_v2_range(v2.columns, self.forecaster(model))
        served, result = await self.run(model, v2.columns, v2.rows)
        content, headers = codecs.encode_v2(served, result, v2)
        return Response(content, headers=headers)

    async def v2_model(self, request: Request) -> Response:
        model = self.model(request.path_params["name"], request.path_params.get("version"))
        return JSON(tensors.v2_metadata(model))

    async def v2_model_ready(self, request: Request) -> Response:
        model = self.model(request.path_params["name"], request.path_params.get("version"))
        return JSON({"name": model.name, "ready": True})

    async def repository_index(self, request: Request) -> Response:
        """Triton's and MLServer's `POST /v2/repository/index`: every model with its state; `{"ready": true}`
        lists the ready ones only."""
        body = await self.read_body(request)
        only_ready = bool(_json_object(body).get("ready", False))
        entries = await run_in_threadpool(self.models.index)
        return JSON(describe([e for e in entries if e.state == "READY" or not only_ready]))

    async def repository_load(self, request: Request) -> Response:
        check_parameters("load", await self._repository_parameters(request), LOAD_PARAMETERS)
        await self.models.load(request.path_params["name"])
        return JSON({})

    async def repository_unload(self, request: Request) -> Response:
        check_parameters("unload", await self._repository_parameters(request), UNLOAD_PARAMETERS)
        await self.models.unload(request.path_params["name"])
        return JSON({})

    async def _repository_parameters(self, request: Request) -> list[str]:
        """The names of a load or unload body's `parameters` (Triton's; MLServer sends no body)."""
        parameters = _json_object(await self.read_body(request)).get("parameters")
        if parameters is None:
            return []
        if not isinstance(parameters, dict):
            raise MalformedInput('"parameters" must be a JSON object')
        return list(parameters)

    async def v2_server(self, request: Request) -> Response:
        from conveyor import __version__

        return JSON({"name": "conveyor", "version": __version__, "extensions": []})

    async def live(self, request: Request) -> Response:
        return JSON({"live": True})

    async def ready(self, request: Request) -> Response:
        """Ready once every model asked for has loaded or been refused, and one at least serves."""
        if not self.models.ready:
            reason = "the model is still loading" if self.models.loading else "no model could be loaded"
            return JSON({"ready": False, "reason": reason}, status_code=503)
        served = [self.models.get(n) for n in self.models.served()]
        body: dict[str, Any] = {"ready": True}
        default = next((m for m in served if m.name == self.models.default), None)
        if default is not None:  # the seed's single-model answer, kept
            body.update(model=default.name, version=default.version)
        if len(self.models.refs) > 1 or default is None:
            body["models"] = {m.name: m.version for m in served}
            if self.models.failed:
                body["refused"] = dict(self.models.failed)
        return JSON(body)

    async def info(self, request: Request) -> Response:
        """The model as JSON; to a browser's navigation (`Accept` prefers HTML), a forecaster's page instead."""
        model = self.model()
        vary = {"vary": "accept"}  # one URL, two bodies: a cache in front must keep them apart
        if page.prefers_html(request.headers.get("accept", "")) and page.has_page(model):
            return HTMLResponse(page.page_html(), headers=vary)
        return JSON(codecs.model_info(model, self.models.refs[model.name]), headers=vary)

    async def forecast(self, request: Request) -> Response:
        return JSON(page.forecast(self.model(), request.query_params, self.settings.max_forecast_steps))

    async def series(self, request: Request) -> Response:
        return JSON(page.search_series(self.model(), request.query_params))

    async def stored_prediction(self, request: Request) -> Response:
        if self.predictions is None:
            raise NotFound("this service has no stored predictions: start it with --predictions SQL-URL|redis://...")
        key = request.path_params["key"]
        rows = await run_in_threadpool(self.predictions.get, key)
        if not rows:
            raise NotFound(f"no stored prediction for key {key!r}")
        return JSON({"key": key, "predictions": rows})

    async def metrics_route(self, request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return JSON(openapi_spec(self._default_or_none(), self.settings))

    def _default_or_none(self):
        try:
            return self.model()
        except ConveyorError:
            return None

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE.read_text())


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedInput("expected a JSON object")
    return doc


def route_label(path: str) -> str:
    """A bounded set of metric labels: path templates, never raw paths."""
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}/" + path.rsplit("/", 1)[-1] if path.count("/") > 3 else "/v2/models/{name}"
    if path.startswith("/v2/repository/models/"):
        return "/v2/repository/models/{name}/" + path.rsplit("/", 1)[-1]
    if path.startswith("/predictions/"):
        return "/predictions/{key}"
    return path if path in KNOWN_PATHS else "other"


KNOWN_PATHS = {
    "/predict",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/",
    "/forecast",
    "/series",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/repository/index",
}


class MetricsMiddleware:
    """Counts and times every request, and answers an unexpected error (pure ASGI: one closure per request).

    An exception no handler knows is answered here, once, as `{"error": "internal"}` with a request id; its text
    (a library's message can hold paths, queries or secrets) goes to the log only, under that id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if status:  # the response had started: nothing can be answered any more
                raise
            status = 500
            await internal_error(scope)(scope, receive, send)
        finally:
            metrics.observe_request(
                route_label(scope["path"]), scope["method"], status or 500, time.perf_counter() - start
            )


class MetricsPort:
    """With `--metrics-port`, /metrics is answered on that port only, and that port answers nothing else.

    Prometheus scrapes pods directly, so the Service, LoadBalancer or Gateway in front of the main port never
    exposes what the metrics tell (routes, error kinds, versions, load). Both ports are bound by the same workers.
    """

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_metrics_port = server is not None and server[1] == self.port
            if on_metrics_port != (scope["path"] == "/metrics"):
                message = "this port serves GET /metrics only" if on_metrics_port else "metrics are on the metrics port"
                body = {"error": "not_found", "message": f"{message}: {scope['method']} {scope['path']}"}
                await JSON(body, status_code=404)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def internal_error(scope: Scope) -> Response:
    """Log the exception being handled under a request id, and answer that id without the exception's text."""
    request = Request(scope)
    rid = request_id(request.headers)
    log.exception("request %s: %s %s answered 500 internal", rid, request.method, request.url.path)
    metrics.ERRORS.labels("internal").inc()
    message = f"internal error: the server log has the details under request id {rid}"
    status, body = codecs.error_body(request.url.path, "internal", message, 500)
    return JSON(body, status_code=status, headers={"x-request-id": rid})


def create_app(settings: ServeSettings) -> Starlette:
    service = Service(settings)

    async def conveyor_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConveyorError)
        return error_response(exc, request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.ERRORS.labels(kind).inc()
        message = f"{exc.detail}: {request.method} {request.url.path}"
        status, body = codecs.error_body(request.url.path, kind, message, exc.status_code)
        return JSON(body, status_code=status)

    s = service
    routes = [
        Route("/", s.info),
        Route("/predict", s.predict_get, methods=["GET"]),
        Route("/predict", s.predict_post, methods=["POST"]),
        Route("/predictions/{key:path}", s.stored_prediction),
        Route("/healthz", s.live),
        Route("/readyz", s.ready),
        Route("/metrics", s.metrics_route),
        Route("/openapi.json", s.openapi),
        Route("/docs", s.docs),
        Route("/v2", s.v2_server),
        Route("/v2/health/live", s.live),
        Route("/v2/health/ready", s.ready),
        Route("/v2/models/{name}", s.v2_model),
        Route("/v2/models/{name}/ready", s.v2_model_ready),
        Route("/v2/models/{name}/infer", s.v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}", s.v2_model),
        Route("/v2/models/{name}/versions/{version}/ready", s.v2_model_ready),
        Route("/v2/models/{name}/versions/{version}/infer", s.v2_infer, methods=["POST"]),
        Route("/v2/repository/index", s.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", s.repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", s.repository_unload, methods=["POST"]),
        Route("/forecast", s.forecast, methods=["GET"]),
        Route("/series", s.series, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=service.lifespan,
        exception_handlers={ConveyorError: conveyor_error, HTTPException: http_error},
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware)
    if settings.metrics_port is not None:
        app.add_middleware(MetricsPort, port=settings.metrics_port)
    return app

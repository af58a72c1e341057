"""The HTTP routes of the prediction service (Starlette, one app per gunicorn worker)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
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

from conveyor.errors import ConveyorError, NotFound, NotReady, PayloadTooLarge
from conveyor.reload import ModelHolder
from conveyor.serve import codecs, metrics, page
from conveyor.serve.batching import AdaptiveBatcher
from conveyor.serve.openapi import openapi_spec
from conveyor.settings import ServeSettings

log = logging.getLogger("conveyor.serve")
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
        return JSON({"error": exc.kind, "message": str(exc)}, status_code=exc.http_status)
    # The server's side failed: the client gets an id to quote, the log gets the id and the cause's details.
    rid = request_id(request.headers)
    cause = exc.__cause__
    details = (type(cause), cause, cause.__traceback__) if cause else None
    level = logging.ERROR if cause else logging.WARNING  # a timeout or a model still loading is no fault
    where = f"{request.method} {request.url.path}"
    log.log(level, "request %s: %s answered %d %s: %s", rid, where, exc.http_status, exc.kind, exc, exc_info=details)
    return JSON(
        {"error": exc.kind, "message": f"{exc} (request id {rid})"},
        status_code=exc.http_status,
        headers={"x-request-id": rid},
    )


class Service:
    """State of one worker: the model holder, the batcher and the stored-predictions reader."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.holder = ModelHolder(settings.store, settings.model, settings.poll_interval)
        self.batcher = AdaptiveBatcher(settings.max_batch_rows, settings.max_wait_ms, on_batch=metrics.observe_batch)
        self._kind: tuple[Any, bool] = (None, False)  # (model, is it a forecaster), for the model last asked about
        self.predictions = None
        self.grpc: Any = None  # the gRPC server of this worker (serve/grpc_service.py), with --grpc-port
        if settings.predictions:
            from conveyor.sinks import open_reader

            self.predictions = open_reader(settings.predictions, settings.predictions_table)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.holder.start()
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
            if self.grpc is not None:
                await self.grpc.stop(self.settings.graceful_timeout)
            await self.holder.stop()
            self.batcher.close()
            if self.predictions is not None:
                self.predictions.close()

    # --- helpers -------------------------------------------------------------------------------
    def model(self, name: str | None = None):
        model = self.holder.model
        if model is None:
            raise NotReady("the model is still loading")
        if name is not None and name != model.name:
            raise NotFound(f"this service serves model {model.name!r}, not {name!r}")
        return model

    def forecaster(self, model) -> bool:
        """Whether `model` answers forecast paths (one per row, `range` steps long); worked out once per model."""
        if self._kind[0] is not model:
            self._kind = (model, codecs.is_forecaster(model.signature))
        return self._kind[1]

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
        try:
            return await asyncio.wait_for(
                self.batcher.predict(model, columns, rows), timeout=self.settings.request_timeout
            )
        except TimeoutError:
            raise Timeout(f"no prediction within {self.settings.request_timeout:g} s; try again later") from None

    # --- routes --------------------------------------------------------------------------------
    async def predict_get(self, request: Request) -> Response:
        model = self.model()
        columns, rows = codecs.decode_query(request.query_params, model.signature)
        served, result = await self.run(model, columns, rows)
        series = request.query_params.get("series")
        return JSON(codecs.query_answer(served, result, columns, rows, series, self.forecaster(served)))

    async def predict_post(self, request: Request) -> Response:
        model = self.model()
        body = await self.read_body(request)
        columns, rows = codecs.decode_body(
            body, request.headers.get("content-type", ""), model.signature, self.settings.max_rows_per_request
        )
        served, result = await self.run(model, columns, rows)
        return JSON(codecs.rows_answer(served, result))

    async def v2_infer(self, request: Request) -> Response:
        model = self.model(request.path_params["name"])
        self._check_version(request, model)
        body = await self.read_body(request)
        columns, rows, infer_id = codecs.decode_v2(body, model.signature, self.settings.max_rows_per_request)
        codecs.check_v2_range(columns, self.forecaster(model))
        served, result = await self.run(model, columns, rows)
        return JSON(codecs.v2_answer(served, result, infer_id))

    def _check_version(self, request: Request, model) -> None:
        version = request.path_params.get("version")
        if version is not None and version != str(model.version):
            raise NotFound(f"this service serves {model.name} version {model.version}, not {version}")

    async def v2_model(self, request: Request) -> Response:
        model = self.model(request.path_params["name"])
        self._check_version(request, model)
        return JSON(codecs.v2_metadata(model))

    async def v2_model_ready(self, request: Request) -> Response:
        self.model(request.path_params["name"])
        self._check_version(request, self.model())
        return JSON({"name": request.path_params["name"], "ready": True})

    async def v2_server(self, request: Request) -> Response:
        from conveyor import __version__

        return JSON({"name": "conveyor", "version": __version__, "extensions": []})

    async def live(self, request: Request) -> Response:
        return JSON({"live": True})

    async def ready(self, request: Request) -> Response:
        model = self.holder.model
        if model is None:
            return JSON({"ready": False, "reason": "the model is still loading"}, status_code=503)
        return JSON({"ready": True, "model": model.name, "version": model.version})

    async def info(self, request: Request) -> Response:
        """The model as JSON; to a browser's navigation (`Accept` prefers HTML), a forecaster's page instead."""
        model = self.model()
        vary = {"vary": "accept"}  # one URL, two bodies: a cache in front must keep them apart
        if page.prefers_html(request.headers.get("accept", "")) and page.has_page(model):
            return HTMLResponse(page.page_html(), headers=vary)
        return JSON(codecs.model_info(model, self.settings.model), headers=vary)

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
        return JSON(openapi_spec(self.holder.model, self.settings))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE.read_text())


def route_label(path: str) -> str:
    """A bounded set of metric labels: path templates, never raw paths."""
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}/" + path.rsplit("/", 1)[-1] if path.count("/") > 3 else "/v2/models/{name}"
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
    return JSON({"error": "internal", "message": message}, status_code=500, headers={"x-request-id": rid})


def create_app(settings: ServeSettings) -> Starlette:
    service = Service(settings)

    async def conveyor_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConveyorError)
        return error_response(exc, request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.ERRORS.labels(kind).inc()
        return JSON(
            {"error": kind, "message": f"{exc.detail}: {request.method} {request.url.path}"},
            status_code=exc.status_code,
        )

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

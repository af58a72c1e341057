"""The Open Inference Protocol over gRPC (KServe's `inference.GRPCInferenceService`), beside HTTP in every worker.

Each gunicorn worker starts one `grpc.aio` server in its own event loop (`Service.lifespan`), so a gRPC request
goes through the same model holder (hot reload), validation, adaptive batcher, timeout and metrics as a REST one:
this module only translates messages. Every worker binds the same port (SO_REUSEPORT, grpc's default on Linux) and
the kernel spreads connections over them, as it does for the HTTP port gunicorn shares.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc

from conveyor.errors import ConveyorError, InvalidInput, NotReady
from conveyor.serve import codecs, metrics, tensors
from conveyor.serve.app import request_id as app_request_id
from conveyor.serve.health_check import HealthServicer
from conveyor.serve.oip import inference_pb2 as pb
from conveyor.serve.oip import inference_pb2_grpc as pb_grpc
from conveyor.serve.repository import LOAD_PARAMETERS, READY, UNLOAD_PARAMETERS, check_parameters

log = logging.getLogger("conveyor.serve.grpc")

# A ConveyorError's kind as the gRPC status clients branch on; a kind not listed maps by its HTTP status.
STATUS = {
    "invalid_input": grpc.StatusCode.INVALID_ARGUMENT,
    "malformed_input": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "not_ready": grpc.StatusCode.UNAVAILABLE,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# The typed field of InferTensorContents that carries each datatype (FP16 and BF16 have none: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]  # a servicer method


@dataclass
class GrpcServers:
    """A worker's gRPC listeners and the health service they share."""

    servers: list[grpc.aio.Server]
    health: HealthServicer


async def start_grpc(service: Any) -> GrpcServers:
    """Start this worker's gRPC servers on `settings.host:settings.grpc_port`, in the running event loop.

    A grpc.aio server accepts one call at a time: the next is asked of gRPC's core only once the event loop has
    taken the last, so under load calls trickle in one per loop turn and never batch. `grpc_listeners` servers
    share the port (SO_REUSEPORT spreads connections over them) and accept side by side.
    """
    settings = service.settings
    servicer = InferenceServicer(service)
    health = HealthServicer(service)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address is bracketed
    address = f"{host}:{settings.grpc_port}"
    servers = []
    for _ in range(settings.grpc_listeners):
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),  # larger: RESOURCE_EXHAUSTED
                ("grpc.so_reuseport", 1),  # grpc's default on Linux, stated: every worker and listener binds it
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            await stop_grpc(GrpcServers(servers, health), 0)
            raise ConveyorError(f"cannot serve gRPC on {address}: {exc}") from None
        await server.start()
        servers.append(server)
    log.info("gRPC (Open Inference Protocol) on %s, %d listener(s)", address, len(servers))
    return GrpcServers(servers, health)


async def stop_grpc(grpc_servers: GrpcServers, grace: float) -> None:
    """Report NOT_SERVING, stop accepting calls on every listener, and give the calls in flight `grace` seconds."""
    grpc_servers.health.stop()
    await asyncio.gather(*(server.stop(grace) for server in grpc_servers.servers))


def rpc(name: str) -> Callable[[Handler], Handler]:
    """Count and time an RPC, and answer its errors with the protocol's status codes.

    Metrics share the REST families: route `grpc:NAME`, method `GRPC`, and the status as the HTTP status the same
    error has on REST (200, 400, 404, 422, 503, ...), so one error-rate query covers both transports.
    """
    route = f"grpc:{name}"

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status = 499  # the client cancelled (the task is cancelled: no except below runs)
            try:
                response = await handler(self, request, context)
                status = 200
                return response
            except ConveyorError as exc:
                status = exc.http_status
                await refuse(exc, context, name)
            except Exception:
                status = 500
                await internal_error(context, name)
            finally:
                metrics.observe_request(route, "GRPC", status, time.perf_counter() - start)

        return call

    return wrap


def status_code(exc: ConveyorError) -> grpc.StatusCode:
    code = STATUS.get(exc.kind)
    if code is None:
        code = grpc.StatusCode.INTERNAL if exc.http_status >= 500 else grpc.StatusCode.INVALID_ARGUMENT
    return code


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's `x-request-id` metadata when it is a plain token, else a new id (REST's rule)."""
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return app_request_id(metadata)


async def refuse(exc: ConveyorError, context: grpc.aio.ServicerContext, name: str) -> None:
    """Abort with the error's status and its readable message; a server-side failure also gets a logged id."""
    metrics.ERRORS.labels(exc.kind).inc()
    if exc.http_status < 500:  # the client's to fix: the message says how
        await context.abort(status_code(exc), str(exc))
        return
    rid = request_id(context)
    cause = exc.__cause__
    details = (type(cause), cause, cause.__traceback__) if cause else None
    level = logging.ERROR if cause else logging.WARNING  # a timeout or a model still loading is no fault
    log.log(level, "request %s: gRPC %s answered %s: %s", rid, name, exc.kind, exc, exc_info=details)
    await context.abort(status_code(exc), f"{exc} (request id {rid})", (("x-request-id", rid),))


async def internal_error(context: grpc.aio.ServicerContext, name: str) -> None:
    """Log the exception being handled under a request id; the client gets the id, never the exception's text."""
    rid = request_id(context)
    log.exception("request %s: gRPC %s answered INTERNAL", rid, name)
    metrics.ERRORS.labels("internal").inc()
    message = f"internal error: the server log has the details under request id {rid}"
    await context.abort(grpc.StatusCode.INTERNAL, message, (("x-request-id", rid),))


def find_model(service: Any, name: str, version: str | None) -> Any:
    """The model served as `name`, at `version` when one is given (tritonclient sends an empty one)."""
    if not name:
        raise InvalidInput("model_name is empty: name the model to ask (see ModelMetadata)")
    return service.model(name, version or None)


def optional(message: Any, field: str) -> str | None:
    """A proto3 `optional string`: None when the client left it out (tritonclient sends it empty)."""
    return getattr(message, field) if message.HasField(field) else None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs, each a thin adapter over the worker's `Service` (serve/app.py)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    @rpc("ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.models.ready)

    @rpc("ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            find_model(self.service, request.name, optional(request, "version"))
        except NotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        from conveyor import __version__

        return pb.ServerMetadataResponse(name="conveyor", version=__version__, extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = find_model(self.service, request.name, optional(request, "version"))
        meta = tensors.v2_metadata(model)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    @rpc("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        service = self.service
        model = find_model(service, request.model_name, optional(request, "model_version"))
        wanted = requested_outputs(request, model.signature)
        inputs = input_tensors(request)
        columns, rows = tensors.columns_from_tensors(inputs, model.signature, service.settings.max_rows_per_request)
        codecs.check_v2_range(columns, service.forecaster(model))
        served, result = await service.run(model, columns, rows)
        raw = len(request.raw_input_contents) > 0
        response = pb.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=request.id)
        if not write_declared_outputs(response, result, served.signature, wanted, raw):
            write_outputs(response, pick_outputs(tensors.output_tensors(result, served.signature), wanted), raw)
        return response

    @rpc("RepositoryIndex")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        one_store(request.repository_name)
        entries = await asyncio.to_thread(self.service.models.index)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in entries
                if e.state == READY or not request.ready
            ]
        )

    @rpc("RepositoryModelLoad")
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self.service.models.load(repository_change("load", request, LOAD_PARAMETERS))
        return pb.RepositoryModelLoadResponse()

    @rpc("RepositoryModelUnload")
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.service.models.unload(repository_change("unload", request, UNLOAD_PARAMETERS))
        return pb.RepositoryModelUnloadResponse()


def one_store(repository_name: str) -> None:
    """Conveyor serves one model store: a client naming another repository must not get this one's models."""
    if repository_name:
        raise InvalidInput(
            f"repository_name {repository_name!r}: this server has one model repository, its model store; "
            "leave repository_name empty"
        )


def repository_change(action: str, request: Any, accepted: frozenset[str]) -> str:
    """The model a load or unload request names, once its repository and parameters are ones Conveyor honours."""
    one_store(request.repository_name)
    check_parameters(action, request.parameters, accepted)
    if not request.model_name:
        raise InvalidInput(f"model_name is empty: name the model to {action} (see RepositoryIndex)")
    return str(request.model_name)


def input_tensors(request: pb.ModelInferRequest) -> list[tensors.InputTensor]:
    """The request's inputs with their values, from `raw_input_contents` or from each input's typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send one per input, "
            "in the order of inputs"
        )
    found = []
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {name!r} has typed contents in a request with raw_input_contents: use one or the other"
                )
            data = tensors.from_raw(datatype, shape, raw[i], name)
        else:
            data = typed_contents(tensor)
        found.append(tensors.InputTensor(name=name, datatype=datatype, shape=shape, data=data))
    return found


def typed_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any] | np.ndarray:
    """An input's values from the InferTensorContents field of its datatype; a value in another field is refused."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        if tensor.datatype in tensors.DATATYPES:
            raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} has no typed contents; send it raw")
        return []  # an unknown datatype: columns_from_tensors names the known ones
    other = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if other:
        raise InvalidInput(
            f"input {tensor.name!r} is {tensor.datatype}: its values go in contents.{field}, not {other[0]}"
        )
    values = getattr(tensor.contents, field)
    if field in ("fp64_contents", "fp32_contents"):  # exact as float64, and validated in one scan
        return np.fromiter(values, np.float64, len(values))
    return list(values)


def requested_outputs(request: pb.ModelInferRequest, signature: Any) -> list[str]:
    """The outputs asked for, in order (none: all), checked before any work as REST checks them; a Triton
    classification output is refused, not ignored."""
    if not request.outputs:
        return []
    for out in request.outputs:
        if "classification" in out.parameters:
            raise InvalidInput(f"output {out.name!r}: classification outputs are not supported; ask for the output")
    wanted = [out.name for out in request.outputs]
    tensors.check_outputs(wanted, signature)
    return wanted


def pick_outputs(outputs: list[tensors.OutputTensor], wanted: list[str]) -> list[tensors.OutputTensor]:
    if not wanted:
        return outputs
    by_name = {t.name: t for t in outputs}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model answers {list(by_name)}")
    return [by_name[n] for n in wanted]


# Declared output datatypes written straight from the batch's Python values, when the first is of this type.
PLAIN = {"FP64": float, "INT64": int}


def write_declared_outputs(
    response: pb.ModelInferResponse, result: dict[str, list[Any]], signature: Any, wanted: list[str], raw: bool
) -> bool:
    """Write the answer's outputs into `response` without OutputTensors, when each is a one-column FP64 or INT64
    output of the signature and its values are of that type: most answers, at a third of the cost. False (and
    `response` left empty): `output_tensors` decides, as for REST (type guesses, paths, unknown outputs)."""
    declared = tensors.declared_outputs(signature)
    names = wanted or list(result)
    plan = []
    for name in names:
        values, tensor = result.get(name), declared.get(name)
        if values is None or tensor is None or len(tensor.shape) != 1 or not values:
            return False
        kind = PLAIN.get(tensor.datatype)
        if kind is None or type(values[0]) is not kind:
            return False
        plan.append((name, tensor.datatype, values))
    try:
        for name, datatype, values in plan:
            out = response.outputs.add(name=name, datatype=datatype, shape=[len(values)])
            if not raw:
                getattr(out.contents, CONTENTS[datatype]).extend(values)  # protobuf checks every value's type
                continue
            data = tensors.typed_data(values, datatype)  # the general path's own rule
            if data is None:
                raise TypeError(f"{name} is not {datatype}")
            response.raw_output_contents.append(tensors.to_raw(tensors.OutputTensor(name, datatype, [], data)))
    except (TypeError, ValueError, OverflowError):  # a value off the signature: the general path says what it is
        del response.outputs[:]
        del response.raw_output_contents[:]
        return False
    return True


def write_outputs(response: pb.ModelInferResponse, outputs: list[tensors.OutputTensor], raw: bool) -> None:
    """Outputs as `raw_output_contents` when the request came raw (as tritonclient reads them), else typed."""
    raw = raw or any(t.datatype not in CONTENTS for t in outputs)  # FP16/BF16 travel raw only
    for t in outputs:
        out = response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if raw:
            response.raw_output_contents.append(tensors.to_raw(t))
        else:
            getattr(out.contents, CONTENTS[t.datatype]).extend(contents_values(t))


def contents_values(tensor: tensors.OutputTensor) -> list[Any]:
    data = tensor.data
    values = data.tolist() if isinstance(data, np.ndarray) else list(data)
    if tensor.datatype == "BYTES":
        return [v if isinstance(v, bytes) else str(v).encode() for v in values]
    return values

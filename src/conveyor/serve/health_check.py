"""The gRPC port's standard health service (`grpc.health.v1.Health`), as Kubernetes' gRPC probes, Envoy and cloud
load balancers ask it.

It answers from the worker's own state, read at each call, so it never lags behind a load or an unload: SERVING
while the worker is ready (`GET /readyz`'s rule: loading done, one model at least serving), NOT_SERVING otherwise
and once the server is stopping. The services it knows are the whole server ("") and the inference service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.serve.oip import inference_pb2

SERVICES = ("", inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)
WATCH_INTERVAL = 0.5  # seconds between two looks at the worker's state for a Watch stream


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, service: Any) -> None:
        self.service = service
        self._stopping = asyncio.Event()

    def status(self, name: str) -> int:
        if name not in SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if self._stopping.is_set() or not self.service.models.ready:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:  # the protocol's answer to an unknown name
            known = " or ".join(repr(s) for s in SERVICES)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}: ask {known}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until the client leaves or the server stops (last: NOT_SERVING)."""
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), WATCH_INTERVAL)

    def stop(self) -> None:
        """From now on NOT_SERVING: probes and balancers stop sending calls while those in flight finish."""
        self._stopping.set()

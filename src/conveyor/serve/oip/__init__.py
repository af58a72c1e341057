"""The Open Inference Protocol's gRPC API: `inference.proto` and the modules protoc generates from it.

The generated modules need the grpc extra (grpcio, protobuf). This package's own import needs nothing, so the
command line can check for the extra before gunicorn forks, without importing grpc in the master process.
"""

from __future__ import annotations

import importlib.util

from conveyor.errors import MissingExtra


def require_grpc() -> None:
    """Fail in one line, before any worker starts, when `--grpc-port` is asked for without the grpc extra."""
    for module in ("grpc", "google.protobuf"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a missing parent package (`google`)
            found = False
        if not found:
            raise MissingExtra(module, "grpc")

"""The Open Inference Protocol's gRPC API: `inference.proto` and the modules protoc generates from it.

The generated modules need the grpc extra (grpcio, protobuf). This package's own import needs nothing, so the
command line checks what `--grpc-port` needs before gunicorn forks, without importing grpc in the master process.
"""

from __future__ import annotations

import importlib.util
import socket

from conveyor.errors import InvalidSetting, MissingExtra


def require_grpc() -> None:
    """Fail in one line, before any worker starts, when `--grpc-port` is asked for without the grpc extra."""
    for module in ("grpc", "google.protobuf"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a missing parent package (`google`)
            found = False
        if not found:
            raise MissingExtra(module, "grpc")


def check_grpc(host: str, port: int) -> None:
    """The grpc extra is installed and nothing listens on `host:port` yet.

    Every worker binds the port with SO_REUSEPORT, which would also let a second server of the same user bind it
    without a word, and the kernel would then split the connections between the two. A plain bind here (without
    SO_REUSEPORT) fails if anything listens there, and the server is refused in one line before it starts.
    """
    require_grpc()
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            probe.bind(address)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise InvalidSetting(
            f"cannot serve gRPC on {where}: {exc.strerror or exc} (is another server listening there?); "
            "choose another --grpc-port"
        ) from None

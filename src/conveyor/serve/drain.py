"""Wait, before the server exits, until the kernel has delivered the responses its workers already wrote.

A worker's graceful shutdown ends when its last response is handed to the kernel, not when the client has it.
In a container (Kubernetes, podman) the network namespace is torn down as soon as the server exits, and what
is still queued in a socket's send buffer is lost: a slow client reading a large answer waits for a tail that
never comes. A socket the server closed with data (or its FIN) not yet acknowledged stays in FIN_WAIT1,
CLOSING or LAST_ACK in /proc/net/tcp; the master waits for none to be left on its ports.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

# /proc/net/tcp's `st` column: states where our side closed and the peer has not acknowledged everything yet
UNDELIVERED = {"04": "FIN_WAIT1", "0B": "CLOSING", "09": "LAST_ACK"}
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def undelivered(ports: Iterable[int], tables: Iterable[Path] = TABLES) -> int:
    """How many closed connections on `ports` still hold data or a FIN the client has not acknowledged."""
    wanted = {f"{port:04X}" for port in ports}
    count = 0
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:  # not Linux, or no IPv6
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 4 and fields[1].rpartition(":")[2] in wanted and fields[3] in UNDELIVERED:
                count += 1
    return count


def wait_delivered(ports: Iterable[int], timeout: float, poll: float = 0.05) -> int:
    """Block until no response on `ports` is undelivered, or `timeout` passes; returns how many are left."""
    ports = list(ports)
    deadline = time.monotonic() + timeout
    while (left := undelivered(ports)) and time.monotonic() < deadline:
        time.sleep(poll)
    return left

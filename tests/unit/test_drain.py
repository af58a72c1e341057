"""The shutdown drain reads the kernel's own socket table: a real loopback connection with an unread answer."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from conveyor.serve.drain import undelivered, wait_delivered

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/tcp")


def _closed_with_unread_answer() -> tuple[socket.socket, int]:
    """A server socket closed with megabytes its client has not read: FIN_WAIT1 until the client reads them."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    sent = 0
    while True:
        try:
            sent += server.send(b"x" * 65536)
        except BlockingIOError:
            break
    server.close()
    return client, port


def test_an_answer_the_client_has_not_read_is_undelivered_until_it_reads_it():
    client, port = _closed_with_unread_answer()
    try:
        assert undelivered([port]) == 1
        assert undelivered([port + 1 if port < 65535 else port - 1]) == 0
        assert wait_delivered([port], timeout=0.3) == 1  # nobody reads: the wait gives up with it still queued

        received = []

        def read_all() -> None:
            time.sleep(0.3)
            while chunk := client.recv(1 << 16):
                received.append(len(chunk))

        reader = threading.Thread(target=read_all)
        reader.start()
        started = time.monotonic()
        assert wait_delivered([port], timeout=10) == 0
        assert time.monotonic() - started >= 0.25  # it waited for the reader, not returned at once
        reader.join(timeout=10)
        assert sum(received) > 65536
    finally:
        client.close()


def test_no_connections_means_no_wait():
    started = time.monotonic()
    assert wait_delivered([1], timeout=5) == 0
    assert time.monotonic() - started < 1

"""What the tests' small HTTP servers (stub registry, token server, Kubernetes API stub) share:
a quiet handler that answers JSON, and a server on a free loopback port, in a thread."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that keeps the test output clean and answers JSON in one call."""

    def answer_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    address: str = "127.0.0.1",
    wrap: Callable[[socket.socket], socket.socket] | None = None,
) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on a port the kernel picks (``wrap`` makes the socket TLS), until the block ends."""
    server = ThreadingHTTPServer((address, 0), handler)
    server.daemon_threads = True
    if wrap is not None:
        server.socket = wrap(server.socket)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()

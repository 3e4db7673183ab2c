"""A scripted HTTP server, for what a real registry will not do on demand.

Bearer challenges from a fake realm, 5xx, redirects to object storage, lying about a digest,
stalling, trickling a body: each test scripts the answers it needs and reads back the requests
the server saw (headers included).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from certs import KeyPair
from http_stub import QuietHandler, serving


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class FakeRegistry:
    """Answers each (method, path) from a script; the last answer of a script repeats.

    An answer is ``(status, headers, body)`` or a function of the request that returns one;
    a body may also be an iterator of byte strings, written one by one (to trickle).
    """

    host: str = ""
    scripts: dict[tuple[str, str], list] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Answer | Callable[[Seen], Answer]) -> None:
        self.scripts[(method, path)] = list(answers)

    def answer(self, request: Seen) -> Answer:
        self.seen.append(request)
        script = self.scripts.get((request.method, request.path), [(404, {}, b"")])
        answer = script.pop(0) if len(script) > 1 else script[0]
        return answer(request) if callable(answer) else answer

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if (s.method, s.path) == (method, path))


@contextlib.contextmanager
def serve_stub(address: str = "127.0.0.1", tls: KeyPair | None = None) -> Iterator[FakeRegistry]:
    """A scripted registry on a fresh port of ``address`` (HTTPS with ``tls``); ``host`` is its
    ``address:port``."""
    scripted = FakeRegistry()

    class Handler(QuietHandler):
        def handle_one(self) -> None:
            url = urlsplit(self.path)
            seen = Seen(self.command, url.path, parse_qs(url.query), dict(self.headers))
            status, headers, body = scripted.answer(seen)
            self.send_response(status)
            if isinstance(body, bytes):
                headers = {"Content-Length": str(len(body)), **headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            for piece in [body] if isinstance(body, bytes) else body:
                self.wfile.write(piece)
                self.wfile.flush()

        do_GET = do_HEAD = handle_one

    wrap = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        wrap = lambda sock: context.wrap_socket(sock, server_side=True)  # noqa: E731
    with serving(Handler, address, wrap) as server:
        scripted.host = f"{address}:{server.server_address[1]}"
        yield scripted


def slow_image(fake: FakeRegistry, repository: str, layer: bytes, seconds: float, pieces: int = 64) -> str:
    """Script a one-layer image whose layer (a tar, unpacked at the volume root) takes ``seconds`` to
    arrive, in ``pieces`` even parts: what progress lines are for. Returns its reference."""

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = b"{}"
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}],
    }).encode()  # fmt: skip

    def trickle(request: Seen) -> Answer:
        def body() -> Iterator[bytes]:
            step = -(-len(layer) // pieces)
            for start in range(0, len(layer), step):
                time.sleep(seconds / pieces)
                yield layer[start : start + step]

        return (200, {"Content-Length": str(len(layer))}, body())

    found = (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest": digest(manifest)}, manifest)
    for method, path in [("HEAD", "v1"), ("GET", "v1"), ("GET", digest(manifest))]:
        fake.on(method, f"/v2/{repository}/manifests/{path}", found)
    fake.on("GET", f"/v2/{repository}/blobs/{digest(layer)}", trickle)
    return f"{fake.host}/{repository}:v1"

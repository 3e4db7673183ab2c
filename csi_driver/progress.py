"""Pulls in flight and how far they are, for whoever waits on one.

A pull of a large artifact takes minutes, and a kubelet, an admin or a person at a terminal
should see that it moves. The pull (``pull.py``) registers each download of an artifact's
layers here and counts its bytes as they arrive; then

* ``serve`` logs a line at INFO every ``--progress-interval`` seconds for each pull still
  running (:func:`log_progress`);
* ``describe`` pulls in its own process and reads :func:`in_flight` for its progress line;
* ``publish`` waits on a running driver, so the driver answers :data:`METHOD` on its socket
  (:func:`rpc_handler`): the pulls in flight as JSON. The method is not CSI, and the kubelet
  never calls it; it is not logged per call, since ``publish`` asks every second.

The registry is process-wide, as the metrics are: a pull is one per digest (``single_flight``),
whichever RPC started it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from csi_driver.units import size

METHOD = "/oci_volume_csi.v1.Progress/Pulls"
log = logging.getLogger("oci-volume-csi")


@dataclass
class Pull:
    """One artifact's layers being fetched: ``total`` bytes to fetch, ``done`` fetched so far."""

    reference: str
    digest: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    logged: float = field(default_factory=time.monotonic)  # when serve last logged it, or its start
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` as they are, each counted as it passes."""
        for chunk in chunks:
            with self._lock:
                self.done += len(chunk)
            yield chunk

    def skip(self, n: int) -> None:
        """A layer that is already stored: nothing to fetch."""
        with self._lock:
            self.total -= n

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            done, total = self.done, self.total
        return {
            "reference": self.reference, "digest": self.digest, "done_bytes": done, "total_bytes": total,
            "seconds": round(time.monotonic() - self.started, 3),
        }  # fmt: skip


def text(pull: dict[str, object]) -> str:
    """``12.5 MiB of 40.0 MiB (31%), 2.1 MiB/s``: what a person reads of :meth:`Pull.as_dict`."""
    done, total, seconds = int(pull["done_bytes"]), int(pull["total_bytes"]), float(pull["seconds"])
    percent = 100 * done // total if total > 0 else 100
    return f"{size(done)} of {size(total)} ({percent}%), {size(done / max(seconds, 0.001))}/s"


_pulls: dict[int, Pull] = {}
_ids = itertools.count()
_lock = threading.Lock()


@contextlib.contextmanager
def tracking(reference: str, digest: str, total: int) -> Iterator[Pull]:
    """Register a download of ``total`` bytes for as long as the block runs."""
    pull = Pull(reference, digest, total)
    key = next(_ids)
    with _lock:
        _pulls[key] = pull
    try:
        yield pull
    finally:
        with _lock:
            del _pulls[key]


def _running() -> list[Pull]:
    with _lock:
        return list(_pulls.values())


def in_flight() -> list[dict[str, object]]:
    """Every download in flight, oldest first."""
    return [pull.as_dict() for pull in _running()]


def log_progress(stop: threading.Event, interval: float) -> None:
    """Until ``stop``: a line at INFO for each pull running, ``interval`` seconds after it started and
    every ``interval`` seconds after that."""
    while not stop.wait(min(interval / 4, 1.0)):
        for pull in _running():
            now = time.monotonic()
            if now - pull.logged < interval:
                continue
            pull.logged = now
            shown = pull.as_dict()
            log.info(
                "pulling %s (%s): %s, %.0f s", pull.reference, pull.digest, text(shown), shown["seconds"],
                extra={"fields": {k: shown[k] for k in ("reference", "digest", "done_bytes", "total_bytes")}},
            )  # fmt: skip


def rpc_handler() -> grpc.GenericRpcHandler:
    """:data:`METHOD` for the driver's gRPC server: any request, the pulls in flight as JSON."""

    def pulls(request: bytes, context: grpc.ServicerContext) -> bytes:
        return json.dumps(in_flight()).encode()

    service, _, method = METHOD.strip("/").partition("/")
    return grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(pulls)})


def ask(channel: grpc.Channel, timeout: float = 2.0) -> list[dict[str, object]]:
    """The pulls in flight in the driver at the other end of ``channel``; none if it cannot say."""
    try:
        return json.loads(channel.unary_unary(METHOD)(b"", timeout=timeout))
    except (grpc.RpcError, ValueError):  # an older driver, or one busy restarting
        return []

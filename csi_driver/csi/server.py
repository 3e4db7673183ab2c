"""gRPC wiring: the servicers on a unix socket, and one interceptor for errors and logs.

The interceptor is the only place where driver exceptions become gRPC statuses,
so servicers stay plain: raise an ``errors.DriverError`` and the pod event gets its
code and message. Anything else is a bug: it is logged with its traceback and
answered INTERNAL. Each RPC logs one compact line at INFO (method, volume id, reference,
digest, code, time); the whole request only at DEBUG, with its ``secrets`` field cleared and
its service-account tokens masked, so no credential ever reaches a log.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
# text_format imports descriptor_pb2 when it first prints a map field (volume_context): 1.6 ms
# of the first publish's DEBUG line, paid here at start instead.
from google.protobuf import descriptor_pb2  # noqa: F401
from google.protobuf import text_format

from csi_driver import errors, logs, metrics, progress
from csi_driver._pb import csi_pb2_grpc
from csi_driver.content.cache import Budget, cache_bytes, keep_within_budget
from csi_driver.content.pull import PullConfig
from csi_driver.content.store import Store
from csi_driver.csi.identity import IdentityService
from csi_driver.csi.node import NodeService
from csi_driver.csi.spec import POD_INFO_PREFIX, TOKENS_KEY
from csi_driver.mounts.publications import Publications
from csi_driver.mounts.reconcile import reconcile
from csi_driver.registry import hosts
from csi_driver.registry.credentials import CredentialSources, Keyring
from csi_driver.views.choose import Copies, View, choose, open_view
from csi_driver.views.fuse import FuseView, watch_view

log = logging.getLogger("oci-volume-csi")


def redacted(request) -> str:  # type: ignore[no-untyped-def]
    """One line describing a request, without its secrets or service-account tokens."""
    fields = request.DESCRIPTOR.fields_by_name
    tokens = "volume_context" in fields and TOKENS_KEY in request.volume_context
    if ("secrets" in fields and request.secrets) or tokens:
        copy = type(request)()
        copy.CopyFrom(request)
        if "secrets" in fields:
            copy.ClearField("secrets")
        if tokens:
            copy.volume_context[TOKENS_KEY] = "(redacted)"
        request = copy
    return text_format.MessageToString(request, as_one_line=True)


def summary(method: str, fields: dict[str, object]) -> str:
    """An RPC's INFO line: what was asked about, the answer and the time; the request itself is DEBUG."""
    about = "".join(f" {name}={fields[name]}" for name in ("volume_id", "reference", "digest") if name in fields)
    error = f": {fields['error']}" if "error" in fields else ""
    return f"{method}{about} -> {fields['code']} ({fields['duration_ms']:.1f} ms){error}"


def request_fields(request) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The log fields a request carries: volume id, target, pod, reference (never secrets)."""
    fields = {}
    for name in ("volume_id", "target_path", "volume_path"):
        if name in request.DESCRIPTOR.fields_by_name and getattr(request, name):
            fields[name] = getattr(request, name)
    if "volume_context" in request.DESCRIPTOR.fields_by_name:
        context = request.volume_context
        if "reference" in context:
            fields["reference"] = context["reference"]
        pod = context.get(POD_INFO_PREFIX + "pod.name")
        if pod:
            fields["pod"] = f"{context.get(POD_INFO_PREFIX + 'pod.namespace', '')}/{pod}"
    return fields


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler_call_details.method == progress.METHOD:
            return handler  # progress is asked every second while a publish waits: not a line each time
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def call(request, context):  # type: ignore[no-untyped-def]
            start = time.monotonic()
            code, message = grpc.StatusCode.OK, ""
            fields = logs.open_fields(method=method, **request_fields(request))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s request: %s", method, redacted(request))
            try:
                return inner(request, context)
            except errors.DriverError as exc:
                code, message = grpc.StatusCode[exc.code], exc.message
            except NotImplementedError:  # grpc's default servicer methods raise it
                code, message = grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this driver"
            except Exception:  # noqa: BLE001 - the one place that must catch everything
                log.exception("%s failed unexpectedly", method)
                code, message = grpc.StatusCode.INTERNAL, f"{method}: internal driver error; see the driver's log"
            finally:
                elapsed = time.monotonic() - start
                metrics.RPC_SECONDS.labels(method, code.name).observe(elapsed)
                fields.update(code=code.name, duration_ms=round(elapsed * 1000, 2), **({"error": message} if message else {}))
                log.info("%s", summary(method, fields), extra={"fields": fields})
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class ServeOptions:
    endpoint: str
    node_id: str
    state_dir: str
    mode: str
    driver_name: str
    pull: PullConfig
    credentials: CredentialSources = field(default_factory=CredentialSources)
    budget: Budget = field(default_factory=Budget)
    metrics_address: str = ""
    progress_interval: float = 10.0  # seconds between the log lines of a pull still running
    workers: int = 16


def _state(store: Store, publications: Publications, view: View, in_use: set[str]) -> dict[str, float]:
    return {
        "cache_bytes": cache_bytes(store, Copies(store)),
        "cache_digests": len(store.committed_digests()),
        "in_use_digests": len(in_use),
        "publications": len(publications.all()),
        "fuse_view_up": float(view.healthy()),
    }


def socket_path(endpoint: str) -> str:
    if not endpoint.startswith("unix://"):
        raise SystemExit(f"--endpoint must be unix:///path/to.sock, not {endpoint!r}")
    return "/" + endpoint[len("unix://") :].lstrip("/")


def serve(opts: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; then stop serving, keep every mount, return 0."""
    os.makedirs(opts.state_dir, exist_ok=True)
    store = Store(opts.state_dir)
    mode, why, backing = choose(opts.mode, store.root)
    log.info("data plane: %s view, because %s", mode, why)
    metrics.VIEW_MODE.labels(mode).set(1)
    view = open_view(mode, store, backing)
    publications = Publications(opts.state_dir)
    store.remove_temp_files()
    store.remove_unused_blobs(older_than=time.time())  # nothing is in flight yet: partial pulls go
    reconcile(publications, view)  # an erofs view re-mounts a digest's image missing since a reboot
    hosts.ssl_context(hosts.TLS())  # the node's trust store takes ~20 ms: now, not in the first pod's pull
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=opts.workers), interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers((progress.rpc_handler(),))
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(opts.driver_name, store, view), server)
    try:
        keyring = Keyring(opts.credentials)  # with --pod-pull-secrets, the API configuration must be usable
    except errors.DriverError as exc:
        raise SystemExit(f"oci-volume-csi serve: {exc.message}") from None
    node = NodeService(opts.node_id, store, publications, view, opts.pull, keyring)
    csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    path = socket_path(opts.endpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server.add_insecure_port(f"unix://{path}")
    # The objects of start-up (modules, grpc, protobuf) live as long as the process: out of the
    # collector's sight, the first publish no longer pays a full collection over all of them.
    gc.collect()
    gc.freeze()
    server.start()
    log.info("serving %s on %s (node %s, mode %s, state %s)", opts.driver_name, path, opts.node_id, view.mode, opts.state_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if isinstance(view, FuseView):
        threading.Thread(target=watch_view, args=(view, publications, stop), name="view-watch", daemon=True).start()
    def in_use() -> set[str]:
        return {pub.digest for pub in publications.all()}

    if opts.metrics_address:
        try:
            metrics.serve_metrics(opts.metrics_address, lambda: _state(store, publications, view, in_use()))
        except OSError as exc:  # the port is taken, or the host is not this node's
            raise SystemExit(f"oci-volume-csi serve: --metrics-address {opts.metrics_address}: {exc.strerror}") from None

    threading.Thread(target=progress.log_progress, args=(stop, opts.progress_interval), name="progress", daemon=True).start()
    collector = (store, Copies(store), in_use, opts.budget, stop, node.content_added)
    threading.Thread(target=keep_within_budget, args=collector, name="cache-gc", daemon=True).start()
    stop.wait()
    log.info("stopping: mounts stay in place")
    server.stop(grace=5).wait()
    return 0

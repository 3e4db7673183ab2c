"""Prometheus metrics (``--metrics-address``), with prometheus-client.

Every label is bounded: RPC method and gRPC code names, result names, the policy's rule names
(the admin's) and signature formats, and registry
hosts, of which only the first ``MAX_HOSTS`` get their own label (a pod chooses
its reference, so hosts are not bounded by the admin: the rest count as
``other``). No label holds a secret, a pod UID, a volume id or a digest.
Store and publication gauges are computed at scrape time from SQLite, so they are
never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "oci_volume_csi"
MAX_HOSTS = 50
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

RPC_SECONDS = Histogram(f"{PREFIX}_rpc_duration_seconds", "CSI RPC latency by method and gRPC code",
                        ["method", "code"], buckets=_LATENCY)  # fmt: skip
PULLS = Counter(f"{PREFIX}_pulls_total", "Publishes' content lookups by result: node (no registry "
                "needed), registry (fetched or resolved), or the gRPC error code", ["result"])  # fmt: skip
FETCHED_BYTES = Counter(f"{PREFIX}_fetched_bytes_total", "Blob bytes downloaded from registries")
BLOBS = Counter(f"{PREFIX}_blobs_total", "Layer blobs needed by pulls, by where they came from", ["source"])
REGISTRY_SECONDS = Histogram(f"{PREFIX}_registry_request_duration_seconds",
                             "Registry request latency (to the response headers) by host and HTTP status",
                             ["host", "status"], buckets=_LATENCY)  # fmt: skip
VIEW_RESTARTS = Counter(f"{PREFIX}_fuse_view_restarts_total", "FUSE views replaced: started by serve, or by a standing-by fuse container")
VIEW_MODE = Gauge(f"{PREFIX}_view_mode", "1 for the data plane serve chose at start (erofs, fuse or bind)", ["mode"])
VERIFICATIONS = Counter(f"{PREFIX}_verifications_total",
                        "Signature verifications by the policy's rule ((none) when no rule matched), result "
                        "(verified, refused, audited, default-allow, default-deny) and signature format", ["rule", "result", "format"])  # fmt: skip
VERIFY_SECONDS = Histogram(f"{PREFIX}_verification_duration_seconds",
                           "Signature verification latency (lookups and checks; cached verdicts are not timed)",
                           buckets=_LATENCY)  # fmt: skip
POLICY_RELOAD_ERRORS = Counter(f"{PREFIX}_policy_reload_errors_total",
                               "Reloads of --policy that failed; the policy loaded before stays in force")  # fmt: skip
CACHE_OVER_BUDGET = Counter(f"{PREFIX}_cache_over_budget_total",
                            "Collections that ended over budget because the rest was in use")  # fmt: skip

_hosts: set[str] = set()
_hosts_lock = threading.Lock()


def host_label(host: str) -> str:
    with _hosts_lock:
        if host in _hosts or len(_hosts) < MAX_HOSTS:
            _hosts.add(host)
            return host
    return "other"


class StateCollector(Collector):
    """Gauges read at scrape time: cache size, digests, publications, view health."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        helps = {
            "cache_bytes": "Bytes the content store holds (blobs, inflated layers, bind trees)",
            "cache_digests": "Complete trees in the store",
            "in_use_digests": "Trees that at least one publication uses",
            "publications": "Volumes published on this node",
            "fuse_view_up": "1 when the FUSE view is mounted and answering (always 1 in erofs and bind mode)",
        }
        values = self._read()
        for name, text in helps.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=values[name])


def serve_metrics(address: str, read_state: Callable[[], dict[str, float]]) -> None:
    """Serve /metrics on ``[host]:port`` (``:9810`` means every address)."""
    host, _, port = address.rpartition(":")
    REGISTRY.register(StateCollector(read_state))
    start_http_server(int(port), addr=host or "0.0.0.0")

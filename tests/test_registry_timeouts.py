"""A pull's total budget (--pull-timeout): a registry that stalls or trickles never holds a
gRPC thread past it, and the UNAVAILABLE error names the host and the flag.

``--registry-timeout`` bounds each wait for bytes; it cannot stop a registry that sends a byte
now and then. The budget can, in the client and in the real ``serve`` process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi_driver import errors
from csi_driver.reference import parse_reference
from csi_driver.registry.client import RegistryClient, RegistryConfig

from certs import issue, make_ca
from driver import run_driver
from kubelet import publish_request, target_for
from stub_registry import Answer, Seen, serve_stub
from test_publish import stalled_registry  # noqa: F401 (a fixture)
from test_registry import OK_HEAD, sha256


BLOB = b"x" * 4096


@pytest.fixture(autouse=True)
def fresh_sessions(monkeypatch) -> None:
    monkeypatch.setattr("csi_driver.registry.client._SESSIONS", {})


def trickle(request: Seen) -> Answer:
    """The blob's length up front, then a byte every 50 ms: never silent for a read timeout."""

    def body() -> Iterator[bytes]:
        for byte in BLOB:
            time.sleep(0.05)
            yield bytes([byte])

    return (200, {"Content-Length": str(len(BLOB))}, body())


def assert_spent(caught: pytest.ExceptionInfo, host: str, started: float, budget: float) -> None:
    assert time.monotonic() - started < budget + 1.5
    assert host in caught.value.message
    assert "--pull-timeout" in caught.value.message


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_trickling_blob_is_cut_off_when_the_pull_budget_ends(tmp_path: Path, tls: bool):
    ca = make_ca(tmp_path, "ca") if tls else None
    with serve_stub(tls=issue(ca, tmp_path, "stub") if ca else None) as stub:
        stub.on("GET", f"/v2/test/art/blobs/{sha256(BLOB)}", trickle)
        config_dir = tmp_path / "certs.d"
        (config_dir / stub.host).mkdir(parents=True)
        scheme = "https" if tls else "http"
        (config_dir / stub.host / "hosts.toml").write_text(
            f'server = "{scheme}://{stub.host}"\n' + (f'ca = "{ca.cert}"\n' if ca else "")
        )
        client = RegistryClient(RegistryConfig(timeout=30, pull_timeout=1.0, config_dir=config_dir))
        started = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            with client.open_blob(parse_reference(f"{stub.host}/test/art:v1"), sha256(BLOB)) as chunks:
                b"".join(chunks)
        assert_spent(caught, stub.host, started, 1.0)


def test_a_registry_that_answers_nothing_is_cut_off_by_the_budget_before_its_timeout():
    with serve_stub() as stub:
        stub.on("HEAD", "/v2/test/art/manifests/v1", lambda request: time.sleep(5) or OK_HEAD)
        client = RegistryClient(RegistryConfig(insecure_hosts=frozenset({stub.host}), timeout=30, pull_timeout=1.0))
        started = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            client.resolve(parse_reference(f"{stub.host}/test/art:v1"))
        assert_spent(caught, stub.host, started, 1.0)


def test_the_budget_covers_the_whole_pull_not_each_request():
    with serve_stub() as stub:
        stub.on("HEAD", "/v2/test/art/manifests/v1", lambda request: time.sleep(0.6) or OK_HEAD)
        client = RegistryClient(RegistryConfig(insecure_hosts=frozenset({stub.host}), timeout=30, pull_timeout=1.0))
        ref = parse_reference(f"{stub.host}/test/art:v1")
        assert client.resolve(ref) == sha256(b'{"schemaVersion":2,"layers":[]}')
        started = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            client.resolve(ref)
        assert_spent(caught, stub.host, started, 0.4)


def test_serve_answers_unavailable_within_the_pull_timeout(
    stalled_registry: str,  # noqa: F811
    registry: str,
    tmp_path: Path,
    kubelet_root: Path,
) -> None:
    extra = ["--insecure-registry", stalled_registry, "--registry-timeout", "60", "--pull-timeout", "2"]
    with run_driver(tmp_path, registry, "bind", extra) as driver:
        request = publish_request(target_for(kubelet_root, "pod-stalled", "plugin"), {"reference": f"{stalled_registry}/x:v1"})
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            driver.publish(request)
        assert time.monotonic() - started < 4
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stalled_registry in caught.value.details()
    assert "--pull-timeout" in caught.value.details()

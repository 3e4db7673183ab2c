"""Finding signatures: the referrers API (a scripted registry, since Debian's docker-registry 2.8
has none), its 404 on the real registry, the tag fallbacks, and the bounds on what is read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from artifacts import PLUGIN_TREE, push_klaus
from stub_registry import FakeRegistry, serve_stub

from csi_driver import errors, registry
from csi_driver.reference import parse_reference
from csi_driver.registry import RegistryClient, RegistryConfig

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client_for(host: str) -> RegistryClient:
    return RegistryClient(RegistryConfig(insecure_hosts=frozenset({host})))


@pytest.fixture
def fake(monkeypatch) -> Iterator[FakeRegistry]:
    monkeypatch.setattr(registry, "_SESSIONS", {})
    with serve_stub() as scripted:
        yield scripted


SUBJECT = "sha256:" + "5" * 64


def test_fetch_referrers_is_none_where_the_registry_has_no_referrers_api(registry, tmp_path):
    pushed = push_klaus(registry, "lookup/plain:v1", PLUGIN_TREE, tmp_path)
    ref = parse_reference(f"{registry}/lookup/plain:v1")
    assert client_for(registry).fetch_referrers(ref, pushed.digest) is None


def test_fetch_referrers_returns_the_index_the_registry_builds(fake):
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    fake.on("GET", f"/v2/test/art/referrers/{SUBJECT}", (200, {"Content-Type": OCI_INDEX}, index))
    ref = parse_reference(f"{fake.host}/test/art:v1")
    assert client_for(fake.host).fetch_referrers(ref, SUBJECT) == index
    assert fake.seen[-1].headers["Accept"] == OCI_INDEX


def test_fetch_referrers_still_reports_a_refusal(fake):
    fake.on("GET", f"/v2/test/art/referrers/{SUBJECT}", (403, {}, b""))
    with pytest.raises(errors.PermissionDenied):
        client_for(fake.host).fetch_referrers(parse_reference(f"{fake.host}/test/art:v1"), SUBJECT)

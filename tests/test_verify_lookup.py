"""Finding signatures: the referrers API (a scripted registry, since Debian's docker-registry 2.8
has none), its 404 on the real registry, the tag fallbacks, and the bounds on what is read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from artifacts import PLUGIN_TREE, push_klaus
from cryptography.hazmat.primitives.asymmetric import ec
from private_registry import PASSWORD, USER
from registry_server import access_log
from signing import BUNDLE_TYPE, SIMPLE_SIGNING, attach_bundle, dsse_bundle, key_attestor, make_policy, sign_legacy
from stub_registry import FakeRegistry, serve_stub

from csi_driver import errors
from csi_driver.reference import parse_reference
from csi_driver.registry import client as registry_client
from csi_driver.registry.client import RegistryClient, RegistryConfig
from csi_driver.verify import bundle, cosign, lookup
from csi_driver.verify.policy import KeyAttestor
from csi_driver.verify.verdict import verify

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client_for(host: str, credentials: tuple[str, str] | None = None) -> RegistryClient:
    return RegistryClient(RegistryConfig(insecure_hosts=frozenset({host})), credentials)


@pytest.fixture
def fake(monkeypatch) -> Iterator[FakeRegistry]:
    monkeypatch.setattr(registry_client, "_SESSIONS", {})
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


# -- the referrers API, on a scripted registry ----------------------------------------------


def json_answer(doc: dict, media_type: str = OCI_MANIFEST) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": media_type}, json.dumps(doc).encode()


def serve_referrer(fake: FakeRegistry, subject: str, layer_data: bytes, layer_type: str = BUNDLE_TYPE, **layer) -> str:
    """Script one signature manifest referring to ``subject``; answer its digest."""
    blob = sha256(layer_data)
    fake.on("GET", f"/v2/test/art/blobs/{blob}", (200, {}, layer_data))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": layer_type if layer_type == BUNDLE_TYPE else lookup.COSIGN_SIGNATURE_ARTIFACT,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": layer_type, "digest": blob, "size": len(layer_data), **layer}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
    }
    body = json.dumps(doc).encode()
    fake.on("GET", f"/v2/test/art/manifests/{sha256(body)}", (200, {"Content-Type": OCI_MANIFEST}, body))
    return sha256(body)


def referrers_index(fake: FakeRegistry, subject: str, *entries: tuple[str, str]) -> None:
    manifests = [{"mediaType": OCI_MANIFEST, "digest": d, "size": 1, "artifactType": t} for d, t in entries]
    fake.on("GET", f"/v2/test/art/referrers/{subject}", json_answer({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX))


def found(fake: FakeRegistry, subject: str = SUBJECT) -> list:
    return list(lookup.signatures(client_for(fake.host), parse_reference(f"{fake.host}/test/art:v1"), subject))


def test_the_referrers_api_is_asked_first_and_filtered_by_artifact_type(fake):
    key = ec.generate_private_key(ec.SECP256R1())
    signature = serve_referrer(fake, SUBJECT, json.dumps(dsse_bundle(key, SUBJECT)).encode())
    sbom = "sha256:" + "6" * 64
    referrers_index(fake, SUBJECT, (signature, BUNDLE_TYPE), (sbom, "application/spdx+json"))
    signatures = found(fake)
    assert [(type(s), s.where) for s in signatures] == [(bundle.SigstoreBundle, "referrers API")]
    attestor = KeyAttestor(key=key.public_key(), key_id="sha256:k")
    assert signatures[0].check(attestor, (SUBJECT,)).accepted
    assert fake.count("GET", f"/v2/test/art/manifests/{sbom}") == 0
    assert fake.count("GET", f"/v2/test/art/manifests/sha256-{SUBJECT[7:]}") == 0  # no tag schema with the API


def test_a_cosign_signature_stored_as_a_referrer_is_found(fake):
    payload = b'{"critical":{}}'
    digest = serve_referrer(fake, SUBJECT, payload, SIMPLE_SIGNING, annotations={cosign.SIGNATURE_ANNOTATION: "c2ln"})
    referrers_index(fake, SUBJECT, (digest, lookup.COSIGN_SIGNATURE_ARTIFACT))
    (signature,) = found(fake)
    assert isinstance(signature, cosign.SimpleSigning) and (signature.payload, signature.signature) == (payload, b"sig")


def test_a_referrer_of_another_subject_is_ignored(fake):
    other = serve_referrer(fake, "sha256:" + "7" * 64, b"{}")
    referrers_index(fake, SUBJECT, (other, BUNDLE_TYPE))
    assert found(fake) == []
    assert fake.count("GET", f"/v2/test/art/blobs/{sha256(b'{}')}") == 0


def test_a_stale_referrer_is_skipped(fake):
    referrers_index(fake, SUBJECT, ("sha256:" + "8" * 64, BUNDLE_TYPE))
    assert found(fake) == []


def test_a_signature_blob_past_the_bound_is_reported_not_read(fake, monkeypatch):
    monkeypatch.setattr(lookup, "MAX_BLOB_BYTES", 100)
    data = b"x" * 101
    referrers_index(fake, SUBJECT, (serve_referrer(fake, SUBJECT, data), BUNDLE_TYPE))
    (signature,) = found(fake)
    assert "101 bytes, more than the 100 a signature may have" in signature.problem
    assert fake.count("GET", f"/v2/test/art/blobs/{sha256(data)}") == 0


def test_a_signature_blob_that_is_not_what_its_digest_says_is_data_loss(fake):
    digest = serve_referrer(fake, SUBJECT, b"{}")
    fake.on("GET", f"/v2/test/art/blobs/{sha256(b'{}')}", (200, {}, b"[]"))
    referrers_index(fake, SUBJECT, (digest, BUNDLE_TYPE))
    with pytest.raises(errors.DataLoss):
        found(fake)


# -- the real registry: tag fallbacks, laziness, the pod's credentials -------------------------


def test_without_referrers_api_both_tags_are_read_in_order(registry, tmp_path):
    pushed = push_klaus(registry, "lookup/both:v1", PLUGIN_TREE, tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    sign_legacy(registry, "lookup/both", pushed.digest, key)
    attach_bundle(registry, "lookup/both", pushed.digest, OCI_MANIFEST, dsse_bundle(key, pushed.digest))
    ref = parse_reference(f"{registry}/lookup/both:v1")
    signatures = list(lookup.signatures(client_for(registry), ref, pushed.digest))
    assert [s.where for s in signatures] == ["referrers tag", "cosign .sig tag"]


def test_the_lookup_stops_when_the_first_signature_decides(registry, tmp_path):
    repo = "verify/lazy"
    pushed = push_klaus(registry, f"{repo}:v1", PLUGIN_TREE, tmp_path / "push")
    key = ec.generate_private_key(ec.SECP256R1())
    attach_bundle(registry, repo, pushed.digest, OCI_MANIFEST, dsse_bundle(key, pushed.digest))
    policy = make_policy(tmp_path, registry, key_attestor(key))
    before = len(access_log(registry))
    assert verify(policy, client_for(registry), parse_reference(f"{registry}/{repo}:v1"), [pushed.digest]).allowed
    referrers_tag = f"GET /v2/{repo}/manifests/sha256-{pushed.digest[7:]}"
    requests = [line for line in access_log(registry)[before:] if line.startswith(referrers_tag)]
    assert requests == [f"{referrers_tag} HTTP/1.1"]  # the referrers tag was read, the .sig tag was not


def test_lookups_use_the_pods_credentials(private_registry, private_plugin):
    ref = parse_reference(private_plugin.reference)
    with pytest.raises(errors.PermissionDenied):
        list(lookup.signatures(client_for(private_registry), ref, private_plugin.digest))
    assert list(lookup.signatures(client_for(private_registry, (USER, PASSWORD)), ref, private_plugin.digest)) == []

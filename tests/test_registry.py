"""The registry client against a real docker-registry, and a scripted server for the rest.

The real registry covers what a pod meets every day (tags, digests, blobs, basic auth, plain
HTTP). What it cannot be made to do (5xx, redirects to object storage, lying about a digest,
stalling) is scripted with ``stub_registry``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import oras.client
import pytest
import requests

from csi_driver import errors
from csi_driver.reference import Reference, parse_reference
from csi_driver.registry import client as registry_client
from csi_driver.registry.client import RegistryClient, RegistryConfig

from registry_server import free_port, run_registry
from stub_registry import Answer, FakeRegistry, Seen, serve_stub


USER, PASSWORD = "alice", "pa55-word-never-shown"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pushed:
    """An artifact pushed with oras: one file, as `oras push ref notes.bin` would."""

    host: str
    ref: Reference
    manifest_digest: str
    blob: bytes


def push_file(tmp: Path, host: str, name: str, data: bytes, oras_client) -> Pushed:
    path = tmp / "notes.bin"
    path.write_bytes(data)
    response = oras_client.push(
        files=[str(path)], target=f"{host}/{name}", disable_path_validation=True, quiet=True
    )
    return Pushed(
        host=host,
        ref=parse_reference(f"{host}/{name}"),
        manifest_digest=response.headers["Docker-Content-Digest"],
        blob=data,
    )


def pull_file(client: RegistryClient, ref: Reference) -> bytes:
    """Resolve ``ref``, fetch its manifest and return its one layer's bytes, as a pull does."""
    manifest = client.fetch_manifest(ref, client.resolve(ref))
    with client.open_blob(ref, json.loads(manifest.data)["layers"][0]["digest"]) as chunks:
        return b"".join(chunks)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Iterator[Pushed]:
    """An open registry holding test/art:v1, a 2.5 MiB file (more than two blob chunks)."""
    tmp = tmp_path_factory.mktemp("registry")
    with run_registry(tmp) as host:
        client = oras.client.OrasClient(hostname=host, insecure=True)
        yield push_file(tmp, host, "test/art:v1", os.urandom(5 * 512 * 1024), client)


@pytest.fixture(scope="module")
def private(tmp_path_factory) -> Iterator[Pushed]:
    """A registry that demands basic auth (htpasswd), holding test/secret:v1."""
    tmp = tmp_path_factory.mktemp("private-registry")
    with run_registry(tmp, htpasswd={USER: PASSWORD}) as host:
        client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
        client.auth.set_basic_auth(USER, PASSWORD)
        yield push_file(tmp, host, "test/secret:v1", b"private bytes\n", client)


def client_for(host: str, credentials: tuple[str, str] | None = None, **config) -> RegistryClient:
    return RegistryClient(RegistryConfig(insecure_hosts=frozenset({host}), **config), credentials)


# --- a real docker-registry ---------------------------------------------------------------


def test_resolve_gives_the_digest_oras_pushed(pushed):
    assert client_for(pushed.host).resolve(pushed.ref) == pushed.manifest_digest


def test_resolve_of_a_digest_reference_needs_no_network():
    ref = parse_reference(f"127.0.0.1:{free_port()}/nothing/here@{sha256(b'x')}")
    assert client_for(ref.registry).resolve(ref) == sha256(b"x")


def test_fetch_manifest_returns_the_verified_raw_bytes(pushed):
    manifest = client_for(pushed.host).fetch_manifest(pushed.ref, pushed.manifest_digest)
    assert manifest.digest == pushed.manifest_digest == sha256(manifest.data)
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    layer = json.loads(manifest.data)["layers"][0]
    assert layer["digest"] == sha256(pushed.blob)


def test_open_blob_streams_the_exact_bytes_in_chunks_of_at_most_one_mib(pushed):
    with client_for(pushed.host).open_blob(pushed.ref, sha256(pushed.blob)) as chunks:
        received = list(chunks)
    assert b"".join(received) == pushed.blob
    assert len(received) >= 3
    assert max(len(chunk) for chunk in received) <= 1024 * 1024


def test_missing_tag_is_not_found_naming_the_reference(pushed):
    ref = parse_reference(f"{pushed.host}/test/art:no-such-tag")
    with pytest.raises(errors.NotFound) as caught:
        client_for(pushed.host).resolve(ref)
    assert f"{pushed.host}/test/art:no-such-tag" in caught.value.message
    assert "check the" in caught.value.message


def test_missing_repository_is_not_found(pushed):
    with pytest.raises(errors.NotFound):
        client_for(pushed.host).resolve(parse_reference(f"{pushed.host}/no/such-repo"))


def test_missing_manifest_digest_is_not_found_naming_the_digest(pushed):
    missing = sha256(b"no such manifest")
    with pytest.raises(errors.NotFound) as caught:
        client_for(pushed.host).fetch_manifest(pushed.ref, missing)
    assert missing in caught.value.message
    assert "MANIFEST_UNKNOWN" in caught.value.message


def test_missing_blob_is_not_found_naming_the_digest(pushed):
    missing = sha256(b"no such blob")
    with pytest.raises(errors.NotFound) as caught:
        with client_for(pushed.host).open_blob(pushed.ref, missing):
            pass
    assert missing in caught.value.message


def test_oversize_manifest_is_resource_exhausted_naming_the_flag(pushed):
    client = client_for(pushed.host, max_manifest_bytes=100)
    with pytest.raises(errors.ResourceExhausted) as caught:
        client.fetch_manifest(pushed.ref, pushed.manifest_digest)
    assert "--max-manifest-bytes" in caught.value.message
    assert "100 bytes" in caught.value.message


def test_unreachable_port_is_unavailable_quickly():
    port = free_port()
    ref = parse_reference(f"127.0.0.1:{port}/test/art:v1")
    started = time.monotonic()
    with pytest.raises(errors.Unavailable) as caught:
        client_for(ref.registry).resolve(ref)
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in caught.value.message


def test_plain_http_registry_not_listed_as_insecure_is_unavailable_with_a_hint(pushed):
    with pytest.raises(errors.Unavailable) as caught:
        RegistryClient(RegistryConfig()).resolve(pushed.ref)
    assert f"--insecure-registry {pushed.host}" in caught.value.message


def test_concurrent_pulls_share_the_pooled_session(pushed):
    client = client_for(pushed.host)
    blob_digest = sha256(pushed.blob)

    def pull(_: int) -> bytes:
        assert client.resolve(pushed.ref) == pushed.manifest_digest
        with client.open_blob(pushed.ref, blob_digest) as chunks:
            return hashlib.sha256(b"".join(chunks)).digest()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = set(pool.map(pull, range(16)))
    assert results == {hashlib.sha256(pushed.blob).digest()}


def test_a_digest_argument_that_is_not_sha256_never_reaches_a_url(pushed):
    with pytest.raises(errors.InvalidArgument):
        client_for(pushed.host).fetch_manifest(pushed.ref, "sha256:../../../v2/_catalog")


def test_docker_hub_names_go_to_its_api_host_over_https(monkeypatch):
    urls = []

    def refuse(self, method, url, **kwargs):
        urls.append(url)
        raise requests.ConnectionError("no network in this test")

    monkeypatch.setattr(requests.Session, "request", refuse)
    with pytest.raises(errors.Unavailable):
        RegistryClient(RegistryConfig(retries=0)).resolve(parse_reference("nginx"))
    assert urls == ["https://registry-1.docker.io/v2/library/nginx/manifests/latest"]


def test_basic_auth_with_the_right_credentials_works(private):
    client = client_for(private.host, (USER, PASSWORD))
    assert client.resolve(private.ref) == private.manifest_digest
    assert pull_file(client, private.ref) == private.blob


def test_wrong_credentials_are_permission_denied_without_the_password(private):
    wrong = "not-" + PASSWORD
    with pytest.raises(errors.PermissionDenied) as caught:
        client_for(private.host, (USER, wrong)).resolve(private.ref)
    message = caught.value.message
    assert "nodePublishSecretRef" in message
    assert wrong not in message and PASSWORD not in message
    assert base64.b64encode(f"{USER}:{wrong}".encode()).decode() not in message


def test_no_credentials_for_a_private_registry_is_permission_denied(private):
    with pytest.raises(errors.PermissionDenied) as caught:
        client_for(private.host).resolve(private.ref)
    assert "wants credentials" in caught.value.message


# --- a scripted server, for what a real registry will not do on demand ----------------------

@pytest.fixture
def fake(monkeypatch) -> Iterator[FakeRegistry]:
    """A scripted registry on a fresh port, with no pooled session left from another test."""
    monkeypatch.setattr(registry_client, "_SESSIONS", {})
    with serve_stub() as scripted:
        yield scripted


MANIFEST = b'{"schemaVersion":2,"layers":[]}'
MANIFEST_PATH = "/v2/test/art/manifests/v1"
INDEX = "application/vnd.oci.image.index.v1+json"
OK_HEAD: Answer = (200, {"Docker-Content-Digest": sha256(MANIFEST)}, b"")


def bearer_guarded(fake: FakeRegistry, token: str, answer: Answer) -> Callable[[Seen], Answer]:
    """A registry endpoint that wants ``Bearer token`` and otherwise challenges to /token."""
    challenge = (
        f'Bearer realm="http://{fake.host}/token",service="fake-registry",'
        'scope="repository:test/art:pull"'
    )

    def guarded(request: Seen) -> Answer:
        if request.headers.get("Authorization") == f"Bearer {token}":
            return answer
        return (401, {"WWW-Authenticate": challenge}, b"")

    return guarded


def token_service(credentials: tuple[str, str] | None, token: str) -> Callable[[Seen], Answer]:
    """A token endpoint that hands out ``token`` to these basic credentials (or to anyone)."""

    def serve(request: Seen) -> Answer:
        if credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
            if request.headers.get("Authorization") != expected:
                return (401, {}, b'{"details":"bad credentials"}')
        return (200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode())

    return serve


def fake_ref(fake: FakeRegistry, name: str = "test/art:v1") -> Reference:
    return parse_reference(f"{fake.host}/{name}")


def test_bearer_challenge_fetches_a_token_with_basic_credentials_and_caches_it(fake):
    fake.on("HEAD", MANIFEST_PATH, bearer_guarded(fake, "tok-1", OK_HEAD))
    fake.on("GET", "/token", token_service((USER, PASSWORD), "tok-1"))
    client = client_for(fake.host, (USER, PASSWORD))
    assert client.resolve(fake_ref(fake)) == sha256(MANIFEST)
    assert client_for(fake.host, (USER, PASSWORD)).resolve(fake_ref(fake)) == sha256(MANIFEST)
    [token_request] = [s for s in fake.seen if s.path == "/token"]
    assert token_request.query == {
        "scope": ["repository:test/art:pull"],
        "service": ["fake-registry"],
    }
    assert fake.count("HEAD", MANIFEST_PATH) == 3  # challenged once, then the token each time


def test_bearer_challenge_without_credentials_gets_an_anonymous_token(fake):
    fake.on("HEAD", MANIFEST_PATH, bearer_guarded(fake, "anon", OK_HEAD))
    fake.on("GET", "/token", token_service(None, "anon"))
    assert client_for(fake.host).resolve(fake_ref(fake)) == sha256(MANIFEST)
    [token_request] = [s for s in fake.seen if s.path == "/token"]
    assert "Authorization" not in token_request.headers


def test_token_service_refusing_the_credentials_is_permission_denied(fake):
    fake.on("HEAD", MANIFEST_PATH, bearer_guarded(fake, "tok-1", OK_HEAD))
    fake.on("GET", "/token", token_service((USER, PASSWORD), "tok-1"))
    with pytest.raises(errors.PermissionDenied) as caught:
        client_for(fake.host, (USER, "wrong-" + PASSWORD)).resolve(fake_ref(fake))
    assert PASSWORD not in caught.value.message
    assert "nodePublishSecretRef" in caught.value.message
    assert fake.count("GET", "/token") == 1


def test_expired_token_is_replaced_once(fake):
    tokens = iter(["tok-1", "tok-2"])
    fake.on("GET", "/token", lambda request: token_service(None, next(tokens))(request))
    fake.on("HEAD", MANIFEST_PATH, bearer_guarded(fake, "tok-1", OK_HEAD))
    client_for(fake.host).resolve(fake_ref(fake))
    fake.on("HEAD", MANIFEST_PATH, bearer_guarded(fake, "tok-2", OK_HEAD))  # tok-1 expired
    assert client_for(fake.host).resolve(fake_ref(fake)) == sha256(MANIFEST)
    assert fake.count("GET", "/token") == 2


def test_token_realm_on_a_plain_http_host_not_listed_is_refused(fake):
    port = fake.host.rsplit(":", 1)[1]
    challenge = f'Bearer realm="http://localhost:{port}/token",service="x"'
    fake.on("HEAD", MANIFEST_PATH, (401, {"WWW-Authenticate": challenge}, b""))
    with pytest.raises(errors.Unavailable) as caught:
        client_for(fake.host, (USER, PASSWORD)).resolve(fake_ref(fake))
    assert f"--insecure-registry localhost:{port}" in caught.value.message
    assert fake.count("GET", "/token") == 0


def test_5xx_is_retried_within_the_bound(fake):
    fake.on("HEAD", MANIFEST_PATH, (503, {}, b""), (502, {}, b""), OK_HEAD)
    assert client_for(fake.host, retries=2).resolve(fake_ref(fake)) == sha256(MANIFEST)
    assert fake.count("HEAD", MANIFEST_PATH) == 3


def test_5xx_after_the_retries_is_unavailable(fake):
    fake.on("HEAD", MANIFEST_PATH, (503, {}, b""))
    with pytest.raises(errors.Unavailable) as caught:
        client_for(fake.host, retries=2).resolve(fake_ref(fake))
    assert "HTTP 503" in caught.value.message
    assert fake.count("HEAD", MANIFEST_PATH) == 3


@pytest.mark.parametrize("status", [400, 404, 429])
def test_4xx_is_never_retried(fake, status):
    fake.on("HEAD", MANIFEST_PATH, (status, {}, b""))
    with pytest.raises(errors.DriverError):
        client_for(fake.host, retries=2).resolve(fake_ref(fake))
    assert fake.count("HEAD", MANIFEST_PATH) == 1


def test_resolve_hashes_the_manifest_when_the_registry_sends_no_digest_header(fake):
    fake.on("HEAD", MANIFEST_PATH, (200, {}, b""))
    fake.on("GET", MANIFEST_PATH, (200, {}, MANIFEST))
    assert client_for(fake.host).resolve(fake_ref(fake)) == sha256(MANIFEST)


def test_resolve_without_a_tag_asks_for_latest(fake):
    fake.on("HEAD", "/v2/test/art/manifests/latest", OK_HEAD)
    assert client_for(fake.host).resolve(fake_ref(fake, "test/art")) == sha256(MANIFEST)


def test_manifest_whose_bytes_do_not_match_the_digest_is_data_loss(fake):
    claimed = sha256(b"what was asked for")
    fake.on("GET", f"/v2/test/art/manifests/{claimed}", (200, {}, MANIFEST))
    with pytest.raises(errors.DataLoss) as caught:
        client_for(fake.host).fetch_manifest(fake_ref(fake), claimed)
    assert claimed in caught.value.message and sha256(MANIFEST) in caught.value.message


@pytest.mark.parametrize(
    ("content_type", "media_type"),
    [
        (f"{INDEX}; charset=utf-8", INDEX),
        ("", ""),
        ("garbage", ""),
    ],
)
def test_manifest_media_type_comes_from_content_type_or_is_empty(fake, content_type, media_type):
    answer = (200, {"Content-Type": content_type}, MANIFEST)
    fake.on("GET", f"/v2/test/art/manifests/{sha256(MANIFEST)}", answer)
    manifest = client_for(fake.host).fetch_manifest(fake_ref(fake), sha256(MANIFEST))
    assert manifest.media_type == media_type


def test_blob_redirect_is_followed_without_sending_credentials_to_the_storage_host(fake):
    port = fake.host.rsplit(":", 1)[1]
    storage = f"localhost:{port}"
    blob = b"blob bytes"
    location = f"http://{storage}/storage/blob?X-Signature=secret-signature"

    def registry_blob(request: Seen) -> Answer:
        if request.headers.get("Authorization", "").startswith("Basic "):
            return (307, {"Location": location}, b"")
        return (401, {"WWW-Authenticate": 'Basic realm="fake"'}, b"")

    fake.on("GET", f"/v2/test/art/blobs/{sha256(blob)}", registry_blob)
    fake.on("GET", "/storage/blob", (200, {}, blob))
    config = RegistryConfig(insecure_hosts=frozenset({fake.host, storage}))
    with RegistryClient(config, (USER, PASSWORD)).open_blob(fake_ref(fake), sha256(blob)) as chunks:
        assert b"".join(chunks) == blob
    [storage_request] = [s for s in fake.seen if s.path == "/storage/blob"]
    assert "Authorization" not in storage_request.headers


def test_blob_redirect_to_a_plain_http_host_not_listed_is_refused_without_the_url(fake):
    blob = b"blob bytes"
    location = "http://storage.invalid/blob?X-Signature=secret-signature"
    fake.on("GET", f"/v2/test/art/blobs/{sha256(blob)}", (307, {"Location": location}, b""))
    with pytest.raises(errors.Unavailable) as caught:
        with client_for(fake.host).open_blob(fake_ref(fake), sha256(blob)):
            pass
    assert "--insecure-registry storage.invalid" in caught.value.message
    assert "secret-signature" not in caught.value.message


def test_a_blob_download_that_breaks_off_is_unavailable(fake):
    blob = b"x" * 1000
    fake.on("GET", f"/v2/test/art/blobs/{sha256(blob)}", (200, {"Content-Length": "5000"}, blob))
    with pytest.raises(errors.Unavailable) as caught:
        with client_for(fake.host).open_blob(fake_ref(fake), sha256(blob)) as chunks:
            b"".join(chunks)
    assert sha256(blob) in caught.value.message


def test_a_registry_that_stalls_is_unavailable_after_the_timeout(fake):
    def stall(request: Seen) -> Answer:
        time.sleep(2)
        return OK_HEAD

    fake.on("HEAD", MANIFEST_PATH, stall)
    started = time.monotonic()
    with pytest.raises(errors.Unavailable) as caught:
        client_for(fake.host, timeout=0.3).resolve(fake_ref(fake))
    assert time.monotonic() - started < 1.5
    assert "--registry-timeout" in caught.value.message
    assert fake.count("HEAD", MANIFEST_PATH) == 1

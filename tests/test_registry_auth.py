"""The distribution token flow against a real docker-registry, and credentials across redirects.

``docker-registry`` runs with ``auth: token:`` and trusts a token server the test starts
(``token_server``): a pull scope is granted to the right credentials only, tokens expire, and
the registry verifies every token's signature. After each test, no secret (password, Basic
value, token, pre-signed query) may appear in an error message or in any log record, at DEBUG.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import oras.client
import pytest

from csi_driver import errors
from csi_driver.reference import parse_reference
from csi_driver.registry import client as registry_client
from csi_driver.registry.client import RegistryClient, RegistryConfig

from certs import make_ca
from registry_server import run_registry
from stub_registry import Answer, Seen, serve_stub
from test_registry import pull_file, push_file, sha256
from token_server import TokenServer, run_token_server


USER, PASSWORD = "robot", "t0ken-flow-pa55-never-shown"
OTHER, OTHER_PASSWORD = "intern", "intern-pa55-never-shown"
CONTENT = b"private bytes behind a token service\n"


@dataclass(frozen=True)
class TokenRegistry:
    host: str
    tokens: TokenServer
    config: RegistryConfig


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory) -> Iterator[TokenRegistry]:
    """private/art:v1 behind token auth: USER may pull it, OTHER may pull nothing."""
    tmp = tmp_path_factory.mktemp("token-registry")
    storage = tmp / "storage"
    with run_registry(tmp / "seed", storage=storage) as seed:
        push_file(tmp, seed, "private/art:v1", CONTENT, oras.client.OrasClient(hostname=seed, insecure=True))
    signing = make_ca(tmp / "signing", "token-signer")
    users = {USER: PASSWORD, OTHER: OTHER_PASSWORD}
    with (
        run_token_server(signing, users, {USER: {"private/art"}}) as tokens,
        run_registry(tmp / "serve", auth=tokens.registry_auth(), storage=storage) as host,
    ):
        token_host = tokens.realm.split("/")[2]
        yield TokenRegistry(host, tokens, RegistryConfig(insecure_hosts=frozenset({host, token_host})))


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture(autouse=True)
def fresh_sessions(monkeypatch) -> None:
    monkeypatch.setattr(registry_client, "_SESSIONS", {})


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    for user, password in ((USER, PASSWORD), (OTHER, OTHER_PASSWORD)):
        assert password not in text
        assert base64.b64encode(f"{user}:{password}".encode()).decode() not in text


def test_the_right_credentials_pull_through_the_token_flow(token_registry, logs):
    ref = parse_reference(f"{token_registry.host}/private/art:v1")
    issued = len(token_registry.tokens.issued)
    assert pull_file(RegistryClient(token_registry.config, (USER, PASSWORD)), ref) == CONTENT
    assert len(token_registry.tokens.issued) == issued + 1  # one pull token serves the whole pull
    assert "/token: HTTP 200" in logs.text  # the requests are logged, at DEBUG
    assert_no_secret(logs.text, *token_registry.tokens.issued)


def test_wrong_credentials_are_permission_denied_within_seconds_naming_the_registry(token_registry, logs):
    ref = parse_reference(f"{token_registry.host}/private/art:v1")
    started = time.monotonic()
    with pytest.raises(errors.PermissionDenied) as caught:
        RegistryClient(token_registry.config, (USER, "wrong-" + PASSWORD)).resolve(ref)
    assert time.monotonic() - started < 3
    assert token_registry.host in caught.value.message
    assert_no_secret(caught.value.message + logs.text, "wrong-" + PASSWORD, *token_registry.tokens.issued)


@pytest.mark.parametrize("credentials", [None, (OTHER, OTHER_PASSWORD)], ids=["anonymous", "no-grant"])
def test_a_token_without_the_pull_scope_is_permission_denied(token_registry, logs, credentials):
    ref = parse_reference(f"{token_registry.host}/private/art:v1")
    with pytest.raises(errors.PermissionDenied) as caught:
        RegistryClient(token_registry.config, credentials).resolve(ref)
    assert token_registry.host in caught.value.message
    assert_no_secret(caught.value.message + logs.text, *token_registry.tokens.issued)


def test_an_expired_token_is_refreshed(token_registry, logs, monkeypatch):
    # distribution accepts a token until 60 s after its exp: -57 leaves 2 to 3 seconds
    monkeypatch.setattr(token_registry.tokens, "lifetime", -57)
    ref = parse_reference(f"{token_registry.host}/private/art:v1")
    issued = len(token_registry.tokens.issued)
    assert pull_file(RegistryClient(token_registry.config, (USER, PASSWORD)), ref) == CONTENT
    assert len(token_registry.tokens.issued) == issued + 1
    time.sleep(3.2)
    assert pull_file(RegistryClient(token_registry.config, (USER, PASSWORD)), ref) == CONTENT
    assert len(token_registry.tokens.issued) == issued + 2  # refused once, replaced once
    assert_no_secret(logs.text, *token_registry.tokens.issued)


def test_credentials_never_follow_a_redirect_to_another_host(tmp_path, logs):
    """The registry (127.0.0.1) wants Basic auth and hands the blob to storage on 127.0.0.2."""
    blob = b"blob bytes from object storage\n"
    signature = "X-Amz-Signature=pre-signed-secret"
    with serve_stub("127.0.0.1") as origin, serve_stub("127.0.0.2") as storage:
        location = f"http://{storage.host}/bucket/blob?{signature}"

        def registry_blob(request: Seen) -> Answer:
            if request.headers.get("Authorization") == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
                return (307, {"Location": location}, b"")
            return (401, {"WWW-Authenticate": 'Basic realm="origin"'}, b"")

        origin.on("GET", f"/v2/test/art/blobs/{sha256(blob)}", registry_blob)
        storage.on("GET", "/bucket/blob", (200, {}, blob))
        config_dir = tmp_path / "certs.d"
        (config_dir / origin.host).mkdir(parents=True)
        (config_dir / origin.host / "hosts.toml").write_text(
            f'server = "http://{origin.host}"\n[header]\n  x-registry-key = "registry-only-secret"\n'
        )
        config = RegistryConfig(insecure_hosts=frozenset({storage.host}), config_dir=config_dir)
        client = RegistryClient(config, (USER, PASSWORD))
        with client.open_blob(parse_reference(f"{origin.host}/test/art:v1"), sha256(blob)) as chunks:
            assert b"".join(chunks) == blob
    [received] = storage.seen
    assert received.query == {"X-Amz-Signature": ["pre-signed-secret"]}
    assert "Authorization" not in received.headers
    assert "x-registry-key" not in {name.lower() for name in received.headers}
    assert origin.seen[-1].headers["x-registry-key"] == "registry-only-secret"
    assert_no_secret(logs.text, "pre-signed-secret", "registry-only-secret")

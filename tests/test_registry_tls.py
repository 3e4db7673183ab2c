"""TLS, mirrors and plain HTTP through containerd's hosts.toml, against real docker-registry processes.

The upstream registry serves HTTPS with a certificate from a CA the test makes with openssl, as a
company registry does; a second registry, in plain HTTP, mirrors part of its content (one
repository is missing there). Nothing is named by --insecure-registry here: plain HTTP is allowed
only because a hosts.toml entry says ``http://``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import oras.client
import pytest

from csi_driver import errors
from csi_driver.reference import Reference, parse_reference
from csi_driver.registry import client as registry_client
from csi_driver.registry.client import RegistryClient, RegistryConfig

from certs import KeyPair, issue, make_ca
from registry_server import access_log, free_port, run_registry
from stub_registry import serve_stub
from test_registry import MANIFEST, OK_HEAD, pull_file, push_file, sha256


SHARED = b"in the upstream and in the mirror\n"
UPSTREAM_ONLY = b"only the upstream has this\n"


@dataclass(frozen=True)
class PKI:
    ca: KeyPair
    server: KeyPair
    client: KeyPair
    stranger_ca: KeyPair
    stranger_server: KeyPair


@dataclass(frozen=True)
class Setup:
    upstream: str
    mirror: str
    shared: str
    upstream_only: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    tmp = tmp_path_factory.mktemp("pki")
    ca, stranger = make_ca(tmp, "test-ca"), make_ca(tmp, "stranger-ca")
    return PKI(
        ca=ca,
        server=issue(ca, tmp, "registry"),
        client=issue(ca, tmp, "node", client=True),
        stranger_ca=stranger,
        stranger_server=issue(stranger, tmp, "stranger"),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pki: PKI) -> Iterator[Setup]:
    """An HTTPS upstream with two repositories and a plain-HTTP mirror that lacks one of them."""
    tmp = tmp_path_factory.mktemp("mirrored")
    upstream_storage, mirror_storage = tmp / "upstream-storage", tmp / "mirror-storage"
    with run_registry(tmp / "seed", storage=upstream_storage) as seed:
        client = oras.client.OrasClient(hostname=seed, insecure=True)
        push_file(tmp, seed, "team/shared:v1", SHARED, client)
        shutil.copytree(upstream_storage, mirror_storage)
        push_file(tmp, seed, "team/upstream-only:v1", UPSTREAM_ONLY, client)
    with (
        run_registry(tmp / "upstream", tls=pki.server, storage=upstream_storage) as upstream,
        run_registry(tmp / "mirror", storage=mirror_storage) as mirror,
    ):
        yield Setup(upstream, mirror, f"{upstream}/team/shared:v1", f"{upstream}/team/upstream-only:v1")


@pytest.fixture(autouse=True)
def fresh_sessions(monkeypatch) -> None:
    monkeypatch.setattr(registry_client, "_SESSIONS", {})


def hosts_toml(root: Path, namespace: str, text: str) -> Path:
    """Write ``root/<namespace>/hosts.toml``; return ``root`` (the --registry-config-dir)."""
    directory = root / namespace
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return root


def client(config_dir: Path | None, **config) -> RegistryClient:
    return RegistryClient(RegistryConfig(config_dir=config_dir, **config))


def ref(text: str) -> Reference:
    return parse_reference(text)


def requests_to(address: str, since: int, repository: str) -> list[str]:
    return [line for line in access_log(address)[since:] if f"/v2/{repository}/" in line]


def test_a_private_ca_named_in_hosts_toml_is_trusted(setup, pki, tmp_path):
    config = hosts_toml(tmp_path, setup.upstream, 'ca = "ca.crt"\n')
    shutil.copy(pki.ca.cert, config / setup.upstream / "ca.crt")
    assert pull_file(client(config), ref(setup.shared)) == SHARED


def test_without_the_ca_tls_fails_unavailable_naming_the_host_and_the_fix(setup):
    with pytest.raises(errors.Unavailable) as caught:
        client(None).resolve(ref(setup.shared))
    assert setup.upstream in caught.value.message
    assert "`ca`" in caught.value.message and "--registry-config-dir" in caught.value.message


def test_a_docker_style_certs_dir_is_read_when_there_is_no_hosts_toml(setup, pki, tmp_path):
    (tmp_path / setup.upstream).mkdir()
    shutil.copy(pki.ca.cert, tmp_path / setup.upstream / "company.crt")
    assert pull_file(client(tmp_path), ref(setup.shared)) == SHARED


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_skip_verify_accepts_an_untrusted_certificate(setup, tmp_path):
    host, port = setup.upstream.split(":")
    config = hosts_toml(tmp_path, f"{host}_{port}_", "skip_verify = true\n")
    assert pull_file(client(config), ref(setup.shared)) == SHARED


def test_a_ca_does_not_make_another_cas_certificate_trusted(setup, pki, tmp_path):
    with serve_stub(tls=pki.stranger_server) as stranger:
        config = hosts_toml(tmp_path, stranger.host, f'ca = "{pki.ca.cert}"\n')
        with pytest.raises(errors.Unavailable) as caught:
            client(config).resolve(parse_reference(f"{stranger.host}/test/art:v1"))
        assert "certificate" in caught.value.message
        config = hosts_toml(tmp_path, stranger.host, f'ca = "{pki.stranger_ca.cert}"\n')
        stranger.on("HEAD", "/v2/test/art/manifests/v1", OK_HEAD)
        assert client(config).resolve(parse_reference(f"{stranger.host}/test/art:v1")) == sha256(MANIFEST)


def test_a_client_certificate_from_hosts_toml_is_presented(setup, pki, tmp_path):
    with run_registry(tmp_path / "mtls", tls=pki.server, client_ca=pki.ca.cert) as mtls:
        reference = ref(f"{mtls}/team/any:v1")
        config = hosts_toml(tmp_path / "without", mtls, f'ca = "{pki.ca.cert}"\n')
        with pytest.raises(errors.Unavailable) as caught:
            client(config).resolve(reference)
        assert "`client`" in caught.value.message
        config = hosts_toml(
            tmp_path / "with", mtls, f'ca = "{pki.ca.cert}"\nclient = [["{pki.client.cert}", "{pki.client.key}"]]\n'
        )
        with pytest.raises(errors.NotFound):  # through TLS: the registry itself answers
            client(config).resolve(reference)


def mirror_config(root: Path, setup: Setup, pki: PKI, mirror: str, capabilities: str = '["pull", "resolve"]') -> Path:
    return hosts_toml(
        root,
        setup.upstream,
        f'server = "https://{setup.upstream}"\nca = "{pki.ca.cert}"\n\n'
        f'[host."http://{mirror}"]\n  capabilities = {capabilities}\n',
    )


def test_the_mirror_serves_what_it_has_and_the_upstream_the_rest(setup, pki, tmp_path):
    config = mirror_config(tmp_path, setup, pki, setup.mirror)
    up, mirrored = len(access_log(setup.upstream)), len(access_log(setup.mirror))
    assert pull_file(client(config), ref(setup.shared)) == SHARED
    assert requests_to(setup.upstream, up, "team/shared") == []
    assert len(requests_to(setup.mirror, mirrored, "team/shared")) == 3  # HEAD tag, manifest, blob
    namespace = "?ns=" + quote(setup.upstream, safe="")
    assert all(namespace in line for line in requests_to(setup.mirror, mirrored, "team/shared"))

    assert pull_file(client(config), ref(setup.upstream_only)) == UPSTREAM_ONLY
    # the mirror answers 404 to each of the three requests, and the upstream serves them
    assert len(requests_to(setup.mirror, mirrored, "team/upstream-only")) == 3
    assert len(requests_to(setup.upstream, up, "team/upstream-only")) == 3


def test_a_pull_only_mirror_is_not_asked_which_digest_a_tag_names(setup, pki, tmp_path):
    config = mirror_config(tmp_path, setup, pki, setup.mirror, capabilities='["pull"]')
    up, mirrored = len(access_log(setup.upstream)), len(access_log(setup.mirror))
    assert pull_file(client(config), ref(setup.shared)) == SHARED
    [resolved] = requests_to(setup.upstream, up, "team/shared")
    assert resolved.startswith("HEAD /v2/team/shared/manifests/v1 ")
    fetched = requests_to(setup.mirror, mirrored, "team/shared")
    assert [line.split()[0] for line in fetched] == ["GET", "GET"]
    assert "/manifests/sha256:" in fetched[0] and "/blobs/sha256:" in fetched[1]


def test_a_mirror_that_is_down_falls_back_to_the_upstream(setup, pki, tmp_path):
    config = mirror_config(tmp_path, setup, pki, f"127.0.0.1:{free_port()}")
    assert pull_file(client(config), ref(setup.upstream_only)) == UPSTREAM_ONLY


def test_a_failing_mirror_is_asked_once_per_pull(setup, pki, tmp_path):
    with serve_stub() as broken:
        broken.on("HEAD", "/v2/team/shared/manifests/v1", (503, {}, b""))
        config = mirror_config(tmp_path, setup, pki, broken.host)
        assert pull_file(client(config, retries=1), ref(setup.shared)) == SHARED
    assert len(broken.seen) == 2  # the first request and its one retry; then the pull skips it


def test_default_applies_to_registries_without_a_directory_of_their_own(setup, tmp_path):
    config = hosts_toml(tmp_path, "_default", f'[host."http://{setup.mirror}"]\n  capabilities = ["pull", "resolve"]\n')
    assert pull_file(client(config), ref(setup.shared)) == SHARED


@pytest.mark.parametrize(
    ("override_path", "path"),
    [(True, "/custom/api/test/art/manifests/v1"), (False, "/custom/api/v2/test/art/manifests/v1")],
)
def test_override_path_headers_and_ns_reach_the_mirror(tmp_path, override_path, path):
    with serve_stub() as mirror:
        mirror.on("HEAD", path, OK_HEAD)
        root = f"http://{mirror.host}/custom/api"
        config = hosts_toml(
            tmp_path,
            "client.invalid",
            f'[host."{root}"]\n  override_path = {str(override_path).lower()}\n'
            f'  [host."{root}".header]\n    x-mirror-key = "k1"\n',
        )
        assert client(config).resolve(parse_reference("client.invalid/test/art:v1")) == sha256(MANIFEST)
    [seen] = mirror.seen
    assert seen.path == path
    assert seen.query == {"ns": ["client.invalid"]}
    assert seen.headers["x-mirror-key"] == "k1"


def test_plain_http_goes_only_to_hosts_configured_so(setup, tmp_path):
    mirror = ref(f"{setup.mirror}/team/shared:v1")
    with pytest.raises(errors.Unavailable) as caught:
        client(tmp_path).resolve(mirror)
    assert f"--insecure-registry {setup.mirror}" in caught.value.message
    config = hosts_toml(tmp_path, setup.mirror, f'server = "http://{setup.mirror}"\n')
    assert pull_file(client(config), mirror) == SHARED

"""Reading containerd's certs.d layout: the files as containerd's docs/hosts.md writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_driver import errors
from csi_driver.registry import hosts
from csi_driver.registry.hosts import TLS, Endpoint


def write(root: Path, namespace: str, text: str) -> Path:
    directory = root / namespace
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return directory


def test_without_configuration_the_registry_itself_is_the_only_endpoint(tmp_path):
    assert hosts.endpoints(None, "registry.example", frozenset()) == (
        Endpoint(scheme="https", host="registry.example", path="/v2"),
    )
    assert hosts.endpoints(tmp_path, "docker.io", frozenset()) == (
        Endpoint(scheme="https", host="registry-1.docker.io", path="/v2"),
    )
    [plain] = hosts.endpoints(tmp_path, "127.0.0.1:5000", frozenset({"127.0.0.1:5000"}))
    assert plain.root == "http://127.0.0.1:5000/v2"


def test_mirrors_come_in_file_order_then_the_server(tmp_path):
    directory = write(
        tmp_path,
        "docker.io",
        """
server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]
[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"
[host."https://public-mirror.example.com".header]
  x-custom = ["a", "b"]
""",
    )
    first, second, server = hosts.endpoints(tmp_path, "docker.io", frozenset())
    assert (first.host, first.capabilities) == ("public-mirror.example.com", {"pull"})
    assert first.headers == (("x-custom", "a, b"),)
    assert first.ns == "docker.io"
    assert (second.host, second.capabilities) == ("docker-mirror.internal", {"pull", "resolve"})
    assert second.tls == TLS(ca=(str(directory / "docker-mirror.crt"),))
    assert server.root == "https://registry-1.docker.io/v2"
    assert (server.capabilities, server.ns) == (hosts.CAPABILITIES, "docker.io")


@pytest.mark.parametrize(
    ("url", "override", "root"),
    [
        ("https://mirror.example", False, "https://mirror.example/v2"),
        ("https://mirror.example/", False, "https://mirror.example/v2"),
        ("https://mirror.example/us", False, "https://mirror.example/us/v2"),
        ("https://mirror.example/v2", False, "https://mirror.example/v2"),
        ("https://mirror.example/v2/upstream", True, "https://mirror.example/v2/upstream"),
        ("mirror.example:5000", False, "https://mirror.example:5000/v2"),
        ("http://mirror.example", True, "http://mirror.example"),
    ],
)
def test_a_url_path_is_the_api_root_with_v2_unless_override_path(tmp_path, url, override, root):
    write(tmp_path, "registry.example", f'[host."{url}"]\noverride_path = {str(override).lower()}\n')
    assert hosts.endpoints(tmp_path, "registry.example", frozenset())[0].root == root


def test_ca_and_client_in_every_documented_form(tmp_path):
    directory = write(
        tmp_path,
        "registry.example",
        """
ca = "/etc/certs/top.pem"
client = "client.pem"
[host."https://test-1.registry"]
  ca = ["/etc/certs/test-1-ca.pem", "special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"], ["/etc/certs/client.pem", ""]]
[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "client-2.pem"]
  skip_verify = true
""",
    )
    one, three, server = hosts.endpoints(tmp_path, "registry.example", frozenset())
    assert one.tls == TLS(
        ca=("/etc/certs/test-1-ca.pem", str(directory / "special.pem")),
        client=(("/etc/certs/client.cert", "/etc/certs/client.key"), ("/etc/certs/client.pem", "")),
    )
    assert three.tls == TLS(
        client=(("/etc/certs/client-1.pem", ""), (str(directory / "client-2.pem"), "")), skip_verify=True
    )
    # top-level keys describe the server, here the registry itself
    assert server.root == "https://registry.example/v2"
    assert server.tls == TLS(ca=("/etc/certs/top.pem",), client=((str(directory / "client.pem"), ""),))
    assert server.ns == ""


def test_dial_timeout_is_a_go_duration(tmp_path):
    write(tmp_path, "registry.example", '[host."https://a"]\ndial_timeout = "1m30s"\n[host."https://b"]\ndial_timeout = "500ms"\n')
    a, b, server = hosts.endpoints(tmp_path, "registry.example", frozenset())
    assert (a.dial_timeout, b.dial_timeout, server.dial_timeout) == (90.0, 0.5, None)


def test_directories_are_looked_up_as_containerd_does(tmp_path):
    write(tmp_path, "_default", 'server = "https://default.example"\n')
    assert hosts.endpoints(tmp_path, "other.example", frozenset())[0].host == "default.example"
    write(tmp_path, "registry.example:5000", 'server = "https://colon.example"\n')
    assert hosts.endpoints(tmp_path, "registry.example:5000", frozenset())[0].host == "colon.example"
    write(tmp_path, "registry.example_5000_", 'server = "https://underscore.example"\n')
    assert hosts.endpoints(tmp_path, "registry.example:5000", frozenset())[0].host == "underscore.example"


def test_a_directory_without_hosts_toml_is_dockers_certs_d_and_hides_default(tmp_path):
    write(tmp_path, "_default", 'server = "https://default.example"\n')
    directory = tmp_path / "registry.example"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "other.cert"):
        (directory / name).write_text("")
    [server] = hosts.endpoints(tmp_path, "registry.example", frozenset())
    assert server.host == "registry.example"
    assert server.tls == TLS(
        ca=(str(directory / "ca.crt"),),
        client=((str(directory / "client.cert"), str(directory / "client.key")), (str(directory / "other.cert"), "")),
    )


@pytest.mark.parametrize(
    "text",
    ['[host."https://m"]\ncapabilities = ["pull", "fly"]\n', "server = [1]\n", 'ca = 5\n', "not toml ===\n"],
)
def test_a_broken_hosts_toml_fails_naming_the_file(tmp_path, text):
    directory = write(tmp_path, "registry.example", text)
    with pytest.raises(errors.Unavailable) as caught:
        hosts.endpoints(tmp_path, "registry.example", frozenset())
    assert str(directory / "hosts.toml") in caught.value.message
    assert "--registry-config-dir" in caught.value.message


def test_an_unreadable_ca_file_names_the_file():
    with pytest.raises(errors.Unavailable) as caught:
        hosts.ssl_context(TLS(ca=("/nonexistent/ca.pem",)))
    assert "/nonexistent/ca.pem" in caught.value.message

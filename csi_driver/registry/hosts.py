"""Where a registry's requests go, and with which TLS: containerd's ``hosts.toml``.

Nodes that run containerd already say, in ``/etc/containerd/certs.d/<host>/hosts.toml``, which
mirrors to try for a registry, which CAs to trust and which client certificates to present.
Reading the same files the same way (containerd's ``docs/hosts.md`` and its ``remotes/docker/config``
package) lets admins configure a registry once, for their runtime and this driver alike, and keeps
pods with image volumes pulling through the same places as the node's own images
(``--registry-config-dir``, default ``/etc/containerd/certs.d``).

For registry ``host[:port]`` the first of these directories that exists is read:
``host_port_`` (only with a port), ``host:port`` (or ``host``), ``_default``. In it:

* ``hosts.toml``: the ``[host."<url>"]`` tables in file order, then the top-level ``server``
  (default: the registry itself over HTTPS; Docker Hub's API host for ``docker.io``). Each entry
  has ``capabilities`` (``pull``, ``resolve``, ``push``; all when absent or empty), ``ca`` (a path
  or a list), ``client`` (a path holding cert and key, a list of them, or a list of
  ``[cert, key]`` pairs), ``skip_verify``, ``override_path``, ``[header]`` and ``dial_timeout``;
  top-level keys describe the ``server``. Relative paths are relative to the directory. A URL's
  path is the API root, with ``/v2`` appended unless it ends so or ``override_path`` is set.
* no ``hosts.toml``: Docker's ``certs.d`` layout for the default server: ``*.crt`` files are CAs,
  each ``*.cert`` a client certificate with its key in the ``*.key`` of the same name (or inside).

Deviations, on purpose: a ``hosts.toml`` that cannot be used fails every pull from that registry
with a message naming the file (containerd logs it and falls back to the cert files, silently
dropping a mirror an air-gapped node may depend on); an ``http://`` entry is spoken to in plain
HTTP only (containerd tries HTTPS first when TLS keys are also set); ``proxy`` and the newest
containerd's domain-suffix directories (``.example.com``) are not read.
"""

from __future__ import annotations

import functools
import posixpath
import re
import ssl
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import oras.defaults

from csi_driver import errors
from csi_driver.reference import DOCKER_HUB

DOCKER_HUB_API = oras.defaults.registry.default_v2_registry["host"]
CAPABILITIES = frozenset({"pull", "resolve", "push"})
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class TLS:
    """What to trust and what to present; ``client`` pairs are (cert, key), key "" when inside."""

    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    skip_verify: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One place to send a registry's requests: a mirror (``[host]`` entry) or the upstream server."""

    scheme: str
    host: str
    path: str
    capabilities: frozenset[str] = CAPABILITIES
    tls: TLS = TLS()
    headers: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None
    ns: str = ""

    @property
    def root(self) -> str:
        """The API root URL; repository paths follow it (``<root>/<name>/manifests/<tag>``)."""
        return f"{self.scheme}://{self.host}{self.path}"


def api_host(registry: str) -> str:
    """The host that serves ``registry``'s API when nothing else is configured."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def endpoints(config_dir: Path | None, registry: str, insecure: frozenset[str]) -> tuple[Endpoint, ...]:
    """The endpoints to try for ``registry``, in order; the last is the upstream server.

    Without a configuration directory (or a directory for the registry) that is just the
    registry itself, over plain HTTP if ``--insecure-registry`` names it, else HTTPS.
    """
    directory = _host_directory(config_dir, registry) if config_dir else None
    if directory is None:
        return (_default_server(registry, insecure),)
    hosts_file = directory / "hosts.toml"
    if not hosts_file.is_file():
        return (_default_server(registry, insecure, _docker_cert_files(directory)),)
    try:
        return _parse_hosts_file(hosts_file, registry, insecure)
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise errors.Unavailable(
            f"{hosts_file} (registry configuration for {registry}) cannot be used: {exc}; fix the file "
            "under --registry-config-dir"
        ) from None


def _host_directory(config_dir: Path, registry: str) -> Path | None:
    """containerd's lookup order: ``host_port_``, ``host:port``, ``_default``; the first that exists."""
    names = []
    host, colon, port = registry.rpartition(":")
    if colon and port.isdigit():
        names.append(f"{host}_{port}_")
    names += [registry, "_default"]
    for name in names:
        if (config_dir / name).is_dir():
            return config_dir / name
    return None


def _default_server(registry: str, insecure: frozenset[str], tls: TLS = TLS()) -> Endpoint:
    scheme = "http" if registry in insecure else "https"
    return Endpoint(scheme=scheme, host=api_host(registry), path="/v2", tls=tls)


def _docker_cert_files(directory: Path) -> TLS:
    """Docker's certs.d: ``*.crt`` CAs, ``*.cert`` client certificates with their ``*.key``."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    ca = tuple(str(p) for p in files if p.suffix == ".crt")
    client = []
    for cert in (p for p in files if p.suffix == ".cert"):
        key = cert.with_suffix(".key")
        client.append((str(cert), str(key) if key.is_file() else ""))
    return TLS(ca=ca, client=tuple(client))


def _parse_hosts_file(path: Path, registry: str, insecure: frozenset[str]) -> tuple[Endpoint, ...]:
    doc = tomllib.loads(path.read_text())
    base = path.parent
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise TypeError("'host' must be a table of [host.\"<url>\"] entries")
    found = [_entry(url, table, base, registry) for url, table in hosts.items()]
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise TypeError("'server' must be a string")
    if server:
        found.append(_entry(server, doc, base, registry))
    else:  # the registry itself, with the top-level TLS, headers and dial_timeout
        top = _entry(f"https://{registry}", doc, base, registry)
        found.append(replace(_default_server(registry, insecure, top.tls), headers=top.headers, dial_timeout=top.dial_timeout))
    return tuple(found)


def _entry(url: str, table: object, base: Path, registry: str) -> Endpoint:
    """One ``[host."url"]`` table, or the top level for ``server``, as containerd reads it."""
    if not isinstance(table, dict):
        raise TypeError(f"[host.{url!r}] must be a table")
    if not url.startswith("http"):
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    override_path = _typed(table, "override_path", bool, False)
    path = posixpath.normpath(parts.path) if parts.path else ""
    if not override_path and not path.endswith("/v2"):
        path = path.rstrip("/") + "/v2"
    capabilities = frozenset(c.lower() for c in _strings(table, "capabilities")) or CAPABILITIES
    if unknown := capabilities - CAPABILITIES:
        raise ValueError(f"unknown capability {min(unknown)!r} for {url}")
    timeout = _typed(table, "dial_timeout", str, "")
    return Endpoint(
        scheme=parts.scheme,
        host=parts.netloc,
        path=path,
        capabilities=capabilities,
        tls=TLS(
            ca=tuple(str(base / p) for p in _strings(table, "ca")),
            client=_client_pairs(table.get("client"), base),
            skip_verify=_typed(table, "skip_verify", bool, False),
        ),
        headers=_headers(table.get("header", {})),
        dial_timeout=_duration(timeout) if timeout else None,
        ns=registry if parts.netloc != registry else "",
    )


def _typed(table: dict, key: str, kind: type, default):
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise TypeError(f"{key!r} must be a {kind.__name__}")
    return value


def _strings(table: dict, key: str) -> list[str]:
    """A key that holds a string or a list of strings (``ca``, ``capabilities``)."""
    value = table.get(key, [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{key!r} must be a string or a list of strings")
    return values


def _client_pairs(value: object, base: Path) -> tuple[tuple[str, str], ...]:
    """``client``: a path, a list of paths, or a list of ``[cert, key]`` pairs ("" key: inside)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise TypeError("'client' must be a path, a list of paths or a list of [cert, key] pairs")
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append((str(base / item), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item):
            pairs.append((str(base / item[0]), str(base / item[1]) if item[1] else ""))
        else:
            raise ValueError(f"'client' entry {item!r} is neither a path nor a [cert, key] pair")
    return tuple(pairs)


def _headers(table: object) -> tuple[tuple[str, str], ...]:
    """``[header]``: name → string or list of strings; a list is sent as one comma-joined value."""
    if not isinstance(table, dict):
        raise TypeError("'header' must be a table")
    headers = []
    for name, value in table.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"header {name!r} must be a string or a list of strings")
        headers.append((name, ", ".join(values)))
    return tuple(headers)


def _duration(text: str) -> float:
    """A Go duration (``1s``, ``500ms``, ``1m30s``) in seconds."""
    if text == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_DURATION_RE.pattern})+", text):
        raise ValueError(f"dial_timeout {text!r} is not a duration like '1s' or '500ms'")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_RE.findall(text))


@functools.lru_cache(maxsize=64)
def ssl_context(tls: TLS) -> ssl.SSLContext:
    """A TLS context: the node's trust store and the configured CAs; the client certificates.

    The node's store is what containerd trusts (a corporate CA installed on the node works as for
    the runtime); requests adds certifi's bundle to it on each connection, so a driver image
    without a system bundle still reaches public registries. Configured CAs are added rather than
    replacing these, because a registry with a private CA still redirects blob downloads to
    object storage with a public certificate.
    Python holds one client certificate per key type, so of several the first of each type is
    offered (Go offers the first the server accepts). Contexts are shared per configuration.
    """
    context = ssl.create_default_context()
    path = ""
    try:
        for path in tls.ca:
            context.load_verify_locations(cafile=path)
        for path, key in reversed(tls.client):
            context.load_cert_chain(path, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise errors.Unavailable(
            f"cannot load {path}, named in a hosts.toml under --registry-config-dir "
            f"({exc.strerror or exc}): fix the entry or the file"
        ) from None
    if tls.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

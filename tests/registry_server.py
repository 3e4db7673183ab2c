"""A real registry for tests: Debian's ``docker-registry`` (distribution 2.x) on 127.0.0.1.

Tests talk to the real thing rather than to a mock, so the driver meets the same headers,
error bodies and auth challenges it meets in production. A missing binary is an error, never
a skip: a suite that silently skips its network tests proves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import bcrypt

from certs import KeyPair
from processes import stop


REGISTRY_BIN = "/usr/bin/docker-registry"
_logs: dict[str, Path] = {}
_START_TIMEOUT = 15.0


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def run_registry(
    tmp_dir: str | os.PathLike[str],
    htpasswd: Mapping[str, str] | None = None,
    *,
    auth: Mapping | None = None,
    tls: KeyPair | None = None,
    client_ca: Path | None = None,
    storage: Path | None = None,
) -> Iterator[str]:
    """Run a registry storing under ``tmp_dir`` (or ``storage``); yield its ``127.0.0.1:PORT``.

    ``htpasswd`` maps user names to passwords; when given, the registry demands basic auth
    for everything, as a private registry does. ``auth`` is any other ``auth:`` section (token
    auth: ``TokenServer.registry_auth()``). ``tls`` serves HTTPS with that certificate, and
    ``client_ca`` then demands client certificates it signed. Two registries given the same
    ``storage`` (one after the other) serve the same content: push in plain HTTP without auth,
    then serve it the way the test needs.
    """
    if not os.access(REGISTRY_BIN, os.X_OK):
        raise RuntimeError(
            f"{REGISTRY_BIN} is missing: install Debian's docker-registry package "
            "(apt-get install docker-registry); the registry tests need a real registry"
        )
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    storage = storage or tmp / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if htpasswd is not None:
        users = tmp / "htpasswd"
        users.write_text(
            "".join(
                f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for user, password in htpasswd.items()
            )
        )
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(users)}}
    if auth is not None:
        config["auth"] = dict(auth)
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
        if client_ca is not None:
            config["http"]["tls"]["clientcas"] = [str(client_ca)]
    config_path = tmp / "registry.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = tmp / "registry.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_up(process, f"127.0.0.1:{port}", log_path)
        _logs[f"127.0.0.1:{port}"] = log_path
        yield f"127.0.0.1:{port}"
    finally:
        stop(process, timeout=10)


def _wait_until_up(process: subprocess.Popen, address: str, log_path: Path) -> None:
    """Wait until the registry accepts connections (it serves as soon as it listens), or fail
    with the registry's log. A TCP connect works the same for plain HTTP, TLS and client TLS."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited with {process.returncode}:\n{log_path.read_text()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"docker-registry did not listen on {address} within {_START_TIMEOUT:g} s:\n{log_path.read_text()}"
    )


def access_log(address: str) -> list[str]:
    """The request lines of the registry's access log (``"GET /v2/... HTTP/1.1"``), in order."""
    lines = _logs[address].read_text(errors="replace").splitlines()
    return [line.split('"', 2)[1] for line in lines if '"' in line and " /v2/" in line]


def blob_fetches(address: str, repository: str) -> dict[str, int]:
    """How often each blob of ``repository`` was fetched (GET), from the registry's access log."""
    prefix = f'GET /v2/{repository}/blobs/'
    counts: dict[str, int] = {}
    for line in access_log(address):
        start = line.find(prefix)
        if start >= 0:
            digest = line[start + len(prefix) :].split(" ", 1)[0]
            counts[digest] = counts.get(digest, 0) + 1
    return counts

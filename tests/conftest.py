"""Shared fixtures: a private mount namespace, a real registry, the real driver.

Nothing here skips: a machine without ``/dev/fuse``, ``docker-registry`` or root
fails the run with the reason, because a suite that silently skips its mounts
proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from namespace import enter_private_namespace


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite makes real mounts: run it as root (see README.md)")
    if not os.path.exists("/dev/fuse"):
        raise pytest.UsageError("/dev/fuse is missing: the FUSE tests cannot run (see README.md)")
    enter_private_namespace()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real CNCF distribution registry (Debian's docker-registry) on loopback."""
    from registry_server import run_registry

    with run_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture
def kubelet_root(tmp_path: Path) -> Path:
    root = tmp_path / "kubelet"
    root.mkdir()
    return root

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
from hostile import Canary
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


@pytest.fixture(scope="session")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry that demands basic auth (private_registry.USER / PASSWORD)."""
    from private_registry import PASSWORD, USER
    from registry_server import run_registry

    with run_registry(tmp_path_factory.mktemp("private"), htpasswd={USER: PASSWORD}) as address:
        yield address


@pytest.fixture(scope="session")
def private_plugin(private_registry: str, tmp_path_factory: pytest.TempPathFactory):
    """A Klaus plugin pushed to the private registry."""
    from artifacts import PLUGIN_TREE, push_klaus
    from private_registry import PASSWORD, USER

    workdir = tmp_path_factory.mktemp("push-private")
    return push_klaus(private_registry, "private/plugin:v1", PLUGIN_TREE, workdir, credentials=(USER, PASSWORD))


@pytest.fixture
def kubelet_root(tmp_path: Path) -> Path:
    root = tmp_path / "kubelet"
    root.mkdir()
    return root


@pytest.fixture
def shared_kubelet_root(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(kubelet, peer)``: a kubelet dir on a shared mount, as on a node, and a peer copy of it
    where the driver's mounts appear as they do in the host's namespace (tests/propagation.py)."""
    from propagation import shared_dir_with_peer

    kubelet, peer = tmp_path / "kubelet-shared", tmp_path / "host-copy"
    kubelet.mkdir()
    peer.mkdir()
    with shared_dir_with_peer(kubelet, peer):
        yield kubelet, peer


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    """A directory outside the driver's reach that hostile artifacts aim at (tests/hostile.py)."""
    made = Canary.make()
    yield made
    made.remove()

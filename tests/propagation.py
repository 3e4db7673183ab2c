"""A shared "kubelet dir" with a peer copy, and the check that a mount in it is read-only.

On a node the kubelet dir is ``rshared`` and the driver's container mounts it with
``Bidirectional`` propagation, so every mount the driver makes there is copied into the host's
mount namespace. A bind of a shared mount joins its peer group (a mount made under one appears
under the other, as the host's copy does), so the tests get the same propagation inside their own
namespace.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from csi_driver.mounts import kernel


@contextmanager
def shared_dir_with_peer(kubelet: Path, peer: Path) -> Iterator[None]:
    """A tmpfs at ``kubelet``, made shared, and a bind of it at ``peer`` (both dirs must exist)."""
    subprocess.run(["mount", "-t", "tmpfs", "kubelet", str(kubelet)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(kubelet)], check=True)
        subprocess.run(["mount", "--bind", str(kubelet), str(peer)], check=True)
        yield
    finally:
        for path in (peer, kubelet):  # a lazy unmount takes whatever a failed test left beneath
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def assert_read_only(target: Path, existing: str) -> None:
    """The mount at ``target`` carries ``ro,nosuid,nodev``; creating a file in it, or opening
    its file ``existing`` for writing, fails with EROFS."""
    info = kernel.find_mount(str(target))
    assert info is not None, f"nothing is mounted at {target}"
    assert {"ro", "nosuid", "nodev"} <= info.options, info.options
    for write in (lambda: (target / "new").write_text("x"), lambda: open(target / existing, "a").close()):
        with pytest.raises(OSError) as excinfo:
            write()
        assert excinfo.value.errno == errno.EROFS

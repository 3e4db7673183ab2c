"""The ``--mode erofs`` data plane: one kernel EROFS mount per manifest digest.

The digest's metadata image (``erofsimage``) is written once to ``images/sha256/<hex>.erofs``
and mounted read-only at ``erofs/sha256/<hex>``, the layer tars the store already holds as its
extra devices (``erofsmount``); a volume is a read-only bind mount of that. The kernel serves
every read straight from the stored tars: no process sits in the data path and no file byte is
copied, so a crash, restart or upgrade of the driver touches no mount (docs/processes.md).

Whether a digest is mounted is read from the mount table (an ``erofs`` mount at its mountpoint
whose source is its image), never assumed: after a node reboot or an admin's umount the next
``path_for`` (reconcile calls it before re-binding a record) mounts it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from csi_driver import errors
from csi_driver.content.store import Store
from csi_driver.mounts import kernel
from csi_driver.reference import digest_hex
from csi_driver.views import erofsimage, erofsmount

EROFS_FS_TYPE = "erofs"
DIRECT_IO = True
log = logging.getLogger("oci-volume-csi")


def image_path(state_dir: Path, digest: str) -> Path:
    """Where the metadata image of a manifest digest lives."""
    return state_dir / "images" / "sha256" / f"{digest_hex(digest)}.erofs"


def mount_dir(state_dir: Path, digest: str) -> Path:
    """Where the image of a manifest digest is mounted; volumes are binds of this directory."""
    return state_dir / "erofs" / "sha256" / digest_hex(digest)


def _ours(info: kernel.MountInfo | None, image: Path) -> bool:
    """Whether a mount is the digest's image: file system erofs, source the image's path (as
    ``erofsmount`` passed it: a path too long for a mount option was passed as a
    ``/proc/self/fd`` path ending in the image's name)."""
    if info is None or info.fs_type != EROFS_FS_TYPE:
        return False
    path = os.fspath(image)
    if len(os.fsencode(path)) <= erofsmount.MAX_OPTION_BYTES:
        return info.source == path
    return info.source.startswith("/proc/self/fd/") and info.source.endswith("/" + image.name)


class ErofsView:
    """Volumes are read-only binds of the digest's EROFS mount, written and mounted at its first publish."""

    mode = "erofs"

    def __init__(self, store: Store) -> None:
        self.store = store

    def mounted(self, digest: str) -> bool:
        root = self.store.root
        return _ours(kernel.find_mount(os.fspath(mount_dir(root, digest))), image_path(root, digest))

    def path_for(self, digest: str) -> str:
        target = mount_dir(self.store.root, digest)
        if not self.mounted(digest):
            with self.store.single_flight(digest):
                if not self.mounted(digest):
                    self._mount(digest, target)
        return os.fspath(target)

    def _mount(self, digest: str, target: Path) -> None:
        """Write the digest's image unless it exists (written whole or not at all), and mount it."""
        root = self.store.root
        if not self.store.committed(digest):
            raise errors.NotFound(f"{digest} is not in the content store; publish it again to pull it")
        entries = self.store.load_tree(digest)
        sources = erofsimage.sources(entries)
        image = image_path(root, digest)
        try:
            if not image.is_file():
                image.parent.mkdir(parents=True, exist_ok=True)
                devices = [erofsimage.Device(source, (root / source).stat().st_size) for source in sources]
                erofsimage.write(image, entries, devices, erofsimage.reader(root))
            target.mkdir(parents=True, exist_ok=True)
            erofsmount.mount(image, [root / source for source in sources], target, direct_io=DIRECT_IO)
        except FileNotFoundError as exc:
            raise errors.DataLoss(
                f"the store file {exc.filename} that {digest} needs is missing; the store is damaged: "
                f"remove {digest} with `oci-volume-csi cache gc` so that the next publish pulls it again"
            ) from exc
        except OSError as exc:
            raise errors.Internal(f"mounting the EROFS view of {digest} failed: {exc}") from exc
        except ValueError as exc:
            raise errors.InvalidArgument(f"{digest} cannot be shown as an EROFS image: {exc}; use --mode fuse") from exc
        log.info("mounted the EROFS view of %s at %s", digest, target)

    def healthy(self) -> bool:
        return True

    def held_bytes(self, digest: str) -> int:
        """The size of the digest's image, when it has one: what the cache budget counts on top
        of the store's tars (the mount itself holds no bytes of its own)."""
        try:
            return image_path(self.store.root, digest).stat().st_size
        except FileNotFoundError:
            return 0

    def release(self, digest: str) -> None:
        """Unmount the digest's image (every mount stacked at its mountpoint) and delete it,
        before the store deletes the tars it points into. Only called for a digest no
        publication uses: the binds of a volume would keep the mount alive, not the image."""
        root = self.store.root
        target = mount_dir(root, digest)
        while kernel.find_mount(os.fspath(target)) is not None:
            kernel.unmount(os.fspath(target))
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        image_path(root, digest).unlink(missing_ok=True)

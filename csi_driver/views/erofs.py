"""The ``--mode erofs`` data plane: one kernel EROFS mount per manifest digest.

The digest's metadata image (``erofsimage``) is written once to ``images/v<N>/sha256/<hex>.erofs``
and mounted read-only at ``erofs/v<N>/sha256/<hex>`` (N: the tree's layout version, so a tree
rebuilt by newer placement rules gets an image and a mount of its own, while the volumes bound
to the old one keep it), the layer tars the store already holds as its
extra devices (``erofsmount``); a volume is a read-only bind mount of that. The kernel serves
every read straight from the stored tars: no process sits in the data path and no file byte is
copied, so a crash, restart or upgrade of the driver touches no mount (docs/processes.md).

Whether a digest is mounted is read from the mount table (an ``erofs`` mount at its mountpoint
whose source is its image, or a loop device serving its image), never assumed: after a node
reboot or an admin's umount the next ``path_for`` (reconcile calls it before re-binding a record)
mounts it again. The kernel generates the whole table for every read (about 1 ms with 1,000
volumes mounted), so once a mount is found to be ours its device number is remembered, and a
later publish only compares ``stat(mountpoint).st_dev`` with it: an unmounted mountpoint shows
the parent file system's device and any new mount a new one, and either sends the check back to
the table.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from csi_driver import errors
from csi_driver.content.store import Store
from csi_driver.layout.tree import LAYOUT_VERSION
from csi_driver.mounts import kernel
from csi_driver.reference import digest_hex
from csi_driver.views import erofsimage, erofsmount

EROFS_FS_TYPE = "erofs"
DIRECT_IO = True
log = logging.getLogger("oci-volume-csi")


def image_path(state_dir: Path, digest: str, layout: int = LAYOUT_VERSION) -> Path:
    """Where the metadata image of a manifest digest's tree of layout version ``layout`` lives."""
    return state_dir / "images" / f"v{layout}" / "sha256" / f"{digest_hex(digest)}.erofs"


def mount_dir(state_dir: Path, digest: str, layout: int = LAYOUT_VERSION) -> Path:
    """Where that image is mounted; volumes are binds of this directory."""
    return state_dir / "erofs" / f"v{layout}" / "sha256" / digest_hex(digest)


def _ours(info: kernel.MountInfo | None, image: Path) -> bool:
    """Whether a mount is the digest's image: file system erofs, source the image's path (as
    ``erofsmount`` passed it: a path too long for a mount option was passed as a
    ``/proc/self/fd`` path ending in the image's name), or a loop device whose backing file is
    the image (a loop-backed mount, whichever backing serves now)."""
    if info is None or info.fs_type != EROFS_FS_TYPE:
        return False
    path = os.fspath(image)
    if (backing_file := erofsmount.loop_backing_file(info.source)) is not None:
        return backing_file == path
    if len(os.fsencode(path)) <= erofsmount.MAX_OPTION_BYTES:
        return info.source == path
    return info.source.startswith("/proc/self/fd/") and info.source.endswith("/" + image.name)


class ErofsView:
    """Volumes are read-only binds of the digest's EROFS mount, written and mounted at its first
    publish, ``backing`` ``file`` or ``loop`` (``erofsmount``; the one its probe found working)."""

    mode = "erofs"

    def __init__(self, store: Store, backing: str = "file") -> None:
        self.store = store
        self.backing = backing
        self._devices: dict[Path, int] = {}  # mountpoint -> st_dev of the mount found to be ours

    def mounted(self, digest: str, layout: int = LAYOUT_VERSION) -> bool:
        root = self.store.root
        target = mount_dir(root, digest, layout)
        try:
            device = os.stat(target).st_dev
        except OSError:
            return False
        if self._devices.get(target) == device:
            return True
        ours = _ours(kernel.find_mount(os.fspath(target)), image_path(root, digest, layout))
        with contextlib.suppress(OSError):
            if ours and os.stat(target).st_dev == device:  # nothing was mounted or unmounted meanwhile
                self._devices[target] = device
        return ours

    def path_for(self, digest: str) -> str:
        layout = self.store.layout(digest)
        if layout is None:
            raise errors.NotFound(f"{digest} is not in the content store; publish it again to pull it")
        target = mount_dir(self.store.root, digest, layout)
        if not self.mounted(digest, layout):
            with self.store.single_flight(digest):
                if not self.mounted(digest, layout):
                    self._mount(digest, layout, target)
        return os.fspath(target)

    def _mount(self, digest: str, layout: int, target: Path) -> None:
        """Write the image of the digest's tree unless it exists (written whole or not at all), and mount it."""
        root = self.store.root
        entries = self.store.load_tree(digest)
        sources = erofsimage.sources(entries)
        image = image_path(root, digest, layout)
        try:
            if not image.is_file():
                image.parent.mkdir(parents=True, exist_ok=True)
                devices = [erofsimage.Device(source, (root / source).stat().st_size) for source in sources]
                erofsimage.write(image, entries, devices, erofsimage.reader(root))
            target.mkdir(parents=True, exist_ok=True)
            erofsmount.mount(image, [root / source for source in sources], target, direct_io=DIRECT_IO, backing=self.backing)
        except FileNotFoundError as exc:
            raise errors.DataLoss(
                f"the store file {exc.filename} that {digest} needs is missing; the store is damaged: "
                f"remove {digest} with `oci-volume-csi cache gc` so that the next publish pulls it again"
            ) from exc
        except OSError as exc:
            raise errors.Internal(f"mounting the EROFS view of {digest} failed: {exc}") from exc
        except ValueError as exc:
            raise errors.InvalidArgument(f"{digest} cannot be shown as an EROFS image: {exc}; use --mode fuse") from exc
        log.info("mounted the EROFS view of %s at %s (%s-backed)", digest, target, self.backing)

    def healthy(self) -> bool:
        return True

    def held_bytes(self, digest: str) -> int:
        """The size of the digest's image, when it has one: what the cache budget counts on top
        of the store's tars (the mount itself holds no bytes of its own)."""
        return sum(image.stat().st_size for image in self._images(digest))

    def _images(self, digest: str) -> list[Path]:
        """The digest's images, of every layout version."""
        return [image for layout in range(1, LAYOUT_VERSION + 1) if (image := image_path(self.store.root, digest, layout)).is_file()]

    def release(self, digest: str) -> None:
        """Unmount the digest's image (every mount stacked at its mountpoint) and delete it,
        before the store deletes the tars it points into. Only called for a digest no
        publication uses: the binds of a volume would keep the mount alive, not the image."""
        root = self.store.root
        for layout in range(1, LAYOUT_VERSION + 1):
            target = mount_dir(root, digest, layout)
            self._devices.pop(target, None)
            while kernel.find_mount(os.fspath(target)) is not None:
                kernel.unmount(os.fspath(target))
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()
            image_path(root, digest, layout).unlink(missing_ok=True)

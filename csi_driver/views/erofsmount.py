"""Mounting an EROFS metadata image (``erofsimage.py``) with its layer tars as extra devices.

File-backed (Linux 6.12+, ``CONFIG_EROFS_FS_BACKED_BY_FILE``): the image is the source and each
tar a ``device=``, all regular files, no loop device. The new mount API is called directly
(``fsopen``/``fsconfig``/``fsmount``/``move_mount`` through ctypes), because ``mount(8)`` attaches
a loop device to a regular-file source, and the kernel then refuses regular-file ``device=``
options (EINVAL); and legacy ``mount(2)`` cuts its option string at one page, a few dozen
layers' paths. ``fsconfig`` takes each option on its own but refuses a value of 256 bytes or
more, so a long path is passed as ``/proc/self/fd/<dir>/<name>`` of its opened directory.

A mount given no ``device=`` for an image that has devices succeeds (the kernel then reads
every chunk from the image itself: wrong bytes, no error), so the device count is checked
against the image's superblock before the file system is created; with one or more, the kernel
refuses a count that differs. (Nothing visible after the mount tells the two apart: neither
statfs nor the mount table's options differ.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from csi_driver import errors
from csi_driver.layout.tree import ROOT, Entry, Kind
from csi_driver.mounts import kernel
from csi_driver.views import erofsimage

# The new mount API has the same syscall numbers on every architecture (allocated after the
# tables were unified, Linux 5.2); listed per architecture so that a new one is a conscious step.
_SYSCALLS = {
    "x86_64": {"move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
    "aarch64": {"move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
}
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
MAX_OPTION_BYTES = 255  # fsconfig's strndup_user limit is 256 bytes with the NUL

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(name: str, *args: object) -> int:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(errno.ENOSYS, f"the new mount API is not wired up for {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(numbers[name]), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


def _messages(fs_fd: int) -> str:
    """What the kernel logged into the filesystem context (``e erofs: ...`` lines), if anything."""
    lines = []
    with contextlib.suppress(OSError):
        while message := os.read(fs_fd, 1024):
            lines.append(message.decode(errors="replace").strip())
    return "; ".join(lines)


def image_devices(image_fd: int) -> int:
    """The number of extra devices an image's superblock names (0 without a device table)."""
    raw = os.pread(image_fd, erofsimage.SUPERBLOCK.size, erofsimage.SUPER_OFFSET)
    if len(raw) < erofsimage.SUPERBLOCK.size:
        raise ValueError("the image is shorter than its superblock")
    fields = erofsimage.SUPERBLOCK.unpack(raw)
    if fields[0] != erofsimage.SUPER_MAGIC:
        raise ValueError("the image has no EROFS superblock")
    return fields[16] if fields[14] & erofsimage.FEATURE_INCOMPAT_DEVICE_TABLE else 0


class _ShortPaths:
    """Paths short enough for ``fsconfig``: a path of 256 bytes or more becomes
    ``/proc/self/fd/<dirfd>/<name>``, one O_PATH fd per directory, held until closed."""

    def __init__(self) -> None:
        self._dirs: dict[str, int] = {}

    def __call__(self, path: str) -> str:
        if len(os.fsencode(path)) <= MAX_OPTION_BYTES:
            return path
        parent, name = os.path.split(path)
        fd = self._dirs.get(parent)
        if fd is None:
            fd = self._dirs[parent] = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        short = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(short)) > MAX_OPTION_BYTES:
            raise ValueError(f"the file name {name!r} is too long for a mount option")
        return short

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()


def mount(image: Path, devices: Sequence[Path], target: Path, direct_io: bool = False) -> None:
    """Mount ``image`` read-only (nosuid, nodev) on ``target``, ``devices`` in the image's order.

    ``direct_io`` reads the devices with O_DIRECT (the ``directio`` option, Linux 6.12+): the
    tars' bytes are then cached once, in the EROFS files' page cache, not also in the tars'.
    Raises OSError with the kernel's own message when the kernel refuses the mount.
    """
    shorten = _ShortPaths()
    image_fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    fs_fd = mount_fd = -1
    try:
        expected = image_devices(image_fd)
        if expected != len(devices):
            raise ValueError(f"the image {image} names {expected} devices, {len(devices)} were given")
        fs_fd = _syscall("fsopen", b"erofs", FSOPEN_CLOEXEC)

        def config(command: int, key: bytes | None = None, value: bytes | None = None) -> None:
            try:
                _syscall("fsconfig", fs_fd, command, key, value, 0)
            except OSError as exc:
                detail = _messages(fs_fd)
                raise OSError(exc.errno, f"mounting {image}: {exc.strerror}" + (f" ({detail})" if detail else "")) from None

        config(FSCONFIG_SET_STRING, b"source", os.fsencode(shorten(os.fspath(image))))  # the mount table shows it
        for device in devices:
            config(FSCONFIG_SET_STRING, b"device", os.fsencode(shorten(os.fspath(device))))
        if direct_io:
            config(FSCONFIG_SET_FLAG, b"directio")
        config(FSCONFIG_CMD_CREATE)
        attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        mount_fd = _syscall("fsmount", fs_fd, FSMOUNT_CLOEXEC, attrs)
        _syscall("move_mount", mount_fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        for fd in (mount_fd, fs_fd, image_fd):
            if fd >= 0:
                os.close(fd)
        shorten.close()


_PROBE_BYTES = b"the kernel serves this file from a device\n"


@contextlib.contextmanager
def _probe_dir(state_dir: Path) -> Iterator[Path]:
    temp_root = state_dir / "tmp"
    temp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="erofs-probe-", dir=temp_root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def probe(state_dir: Path) -> tuple[bool, str]:
    """Whether this kernel mounts our images: write a one-file image and its device in the state
    dir, mount it, read the file back, unmount, clean up. ``(ok, why)``, ``why`` for the log."""
    try:
        with _probe_dir(state_dir) as work:
            device = work / "device"
            device.write_bytes(bytes(erofsimage.BLOCK) + _PROBE_BYTES.ljust(erofsimage.BLOCK, b"\0"))
            entries = [ROOT, Entry("probe", Kind.FILE, 0o644, size=len(_PROBE_BYTES), source="device", offset=erofsimage.BLOCK)]
            image = work / "image"
            erofsimage.write(image, entries, [erofsimage.Device("device", device.stat().st_size)], erofsimage.reader(work))
            target = work / "mnt"
            target.mkdir()
            mount(image, [device], target)
            try:
                got = (target / "probe").read_bytes()
            finally:
                kernel.unmount(os.fspath(target))
    except (OSError, ValueError, errors.DriverError) as exc:  # DriverError: the unmount failed
        return False, f"EROFS file-backed mounts do not work here: {exc}"
    if got != _PROBE_BYTES:
        return False, "an EROFS file-backed mount served wrong bytes"
    return True, "EROFS file-backed mounts with extra devices work"

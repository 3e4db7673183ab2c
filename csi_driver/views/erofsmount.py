"""Mounting an EROFS metadata image (``erofsimage.py``) with its layer tars as extra devices.

Two backings, both read-only, both from the same image (``probe`` picks the first that works):
``file`` (the image and tars as regular files) and ``loop`` (each attached to a loop device).

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

Loop-backed (Linux 6.4-6.11, or a kernel without ``CONFIG_EROFS_FS_BACKED_BY_FILE``): the image
and every tar are attached to a loop device each (``LOOP_CONFIGURE``: read-only, 512-byte blocks,
autoclear, optionally direct I/O), and the mount's source and ``device=`` options are the loop
devices. Autoclear frees each device when its last user closes it: the mount, once this process
has closed its own descriptors, so unmounting the image is what frees them (and a failed mount
frees them at once). Which file a loop device serves is ``/sys/block/loopN/loop/backing_file``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import platform
import re
import shutil
import stat
import struct
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
BACKINGS = ("file", "loop")  # what ``probe`` tries, in this order
FORCE_BACKING = "OCI_VOLUME_CSI_EROFS_BACKING"  # internal: the tests' way to probe one backing only

# <linux/loop.h>
DEV = "/dev"
LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE, LOOP_CONFIGURE = 0x4C82, 0x4C0A
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO = 1, 4, 16
# struct loop_config: fd, block_size, struct loop_info64 (device, inode, rdevice, offset,
# sizelimit; number, encrypt_type, encrypt_key_size, flags; file_name, crypt_name, encrypt_key;
# init[2]), __reserved[8]
LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q64x")
LOOP_READAHEAD_KB = 1024  # of the image's loop device (_set_readahead)
LOOP_ATTACH_TRIES = 64  # another process may take the free device between GET_FREE and CONFIGURE

log = logging.getLogger("oci-volume-csi")
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


def _open_loop(number: int) -> tuple[int, str]:
    """Open loop device ``number`` read-only, making its node in ``DEV`` if it has none: a
    container's /dev is a copy made when it started, without the devices created since."""
    name = f"{DEV}/loop{number}"
    try:
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC), name
    except FileNotFoundError:
        major, minor = Path(f"/sys/block/loop{number}/dev").read_text().split(":")
        with contextlib.suppress(FileExistsError):
            os.mknod(name, stat.S_IFBLK | 0o660, os.makedev(int(major), int(minor)))
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC), name


def loop_device(path: Path, direct_io: bool) -> tuple[int, str]:
    """An open descriptor and the name (``/dev/loopN``) of a loop device newly attached to
    ``path``: read-only, 512-byte blocks (the image's), autoclear (freed when its last user
    closes it), with ``direct_io`` reading the file with O_DIRECT (the kernel quietly keeps
    buffered I/O where the file's alignment does not allow it; ``/sys/block/loopN/loop/dio``
    says which)."""
    flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | (LO_FLAGS_DIRECT_IO if direct_io else 0)
    backing = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        config = LOOP_CONFIG.pack(backing, 512, 0, 0, 0, 0, 0, 0, 0, 0, flags, os.fsencode(path)[:63], b"", b"", 0, 0)
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(LOOP_ATTACH_TRIES):
                device, name = _open_loop(fcntl.ioctl(control, LOOP_CTL_GET_FREE))
                try:
                    fcntl.ioctl(device, LOOP_CONFIGURE, config)
                    return device, name
                except OSError as exc:
                    os.close(device)
                    if exc.errno != errno.EBUSY:
                        raise OSError(exc.errno, f"attaching {path} to {name}: {exc.strerror}") from None
            raise OSError(errno.EBUSY, f"attaching {path}: every free loop device was taken first")
        finally:
            os.close(control)
    finally:
        os.close(backing)  # the loop device holds the file now


def _set_readahead(image_loop: str) -> None:
    """Read ahead ``LOOP_READAHEAD_KB`` in the files of a loop-backed mount: the image's loop
    device is the mount's block device, whose bdi every file's readahead window comes from.

    A loop device's ``read_ahead_kb`` outlives its detaching (a device used before keeps what was
    set), so it is always written. At the kernel's 128 KiB, a reader of 16 KiB at a time read a cold
    file at 0.59x of the ext4 under it, in 128 KiB requests; at 1 MiB 0.98x (bench/RESULTS.md).
    Where /sys is read-only the device's own stays, with a warning."""
    try:
        Path(f"/sys/block/{os.path.basename(image_loop)}/queue/read_ahead_kb").write_text(f"{LOOP_READAHEAD_KB}\n")
    except OSError as exc:
        log.warning("could not set the readahead of %s (%s); files of its EROFS mount read ahead as it does", image_loop, exc)


def loop_backing_file(source: str) -> str | None:
    """The file a loop device (``/dev/loopN``) serves, None for anything else or a free device."""
    parent, name = os.path.split(source)
    if parent != DEV or not re.fullmatch(r"loop[0-9]+", name):
        return None
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def mount(image: Path, devices: Sequence[Path], target: Path, direct_io: bool = False, backing: str = "file") -> None:
    """Mount ``image`` read-only (nosuid, nodev) on ``target``, ``devices`` in the image's order,
    ``backing`` ``file`` or ``loop`` (the module's docstring).

    ``direct_io`` reads the devices with O_DIRECT (file-backed: the ``directio`` option, Linux
    6.12+; loop-backed: each loop device's direct I/O): the tars' bytes are then cached once, in
    the EROFS files' page cache, not also in the tars'.
    Raises OSError with the kernel's own message when the kernel refuses the mount.
    """
    shorten = _ShortPaths()
    image_fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    loops: list[int] = []
    fs_fd = mount_fd = -1
    try:
        expected = image_devices(image_fd)
        if expected != len(devices):
            raise ValueError(f"the image {image} names {expected} devices, {len(devices)} were given")
        if backing == "loop":
            attached = []
            for path in (image, *devices):
                fd, name = loop_device(path, direct_io)
                loops.append(fd)
                attached.append(name)
            source, *names = attached
            _set_readahead(source)
        else:
            source, *names = [shorten(os.fspath(path)) for path in (image, *devices)]
        fs_fd = _syscall("fsopen", b"erofs", FSOPEN_CLOEXEC)

        def config(command: int, key: bytes | None = None, value: bytes | None = None) -> None:
            try:
                _syscall("fsconfig", fs_fd, command, key, value, 0)
            except OSError as exc:
                detail = _messages(fs_fd)
                raise OSError(exc.errno, f"mounting {image}: {exc.strerror}" + (f" ({detail})" if detail else "")) from None

        config(FSCONFIG_SET_FLAG, b"ro")  # else the block device (a read-only loop) is opened for writing: EACCES
        config(FSCONFIG_SET_STRING, b"source", os.fsencode(source))  # the mount table shows it
        for name in names:
            config(FSCONFIG_SET_STRING, b"device", os.fsencode(name))
        if direct_io and backing == "file":
            config(FSCONFIG_SET_FLAG, b"directio")
        config(FSCONFIG_CMD_CREATE)
        attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        mount_fd = _syscall("fsmount", fs_fd, FSMOUNT_CLOEXEC, attrs)
        _syscall("move_mount", mount_fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        for fd in (mount_fd, fs_fd, image_fd, *loops):  # the mount holds its loop devices now
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


def _probe_one(state_dir: Path, backing: str) -> str | None:
    """Mount a one-file image with one device, ``backing``-backed, in the state dir; read the file
    back, unmount, clean up. None if that worked, else why not."""
    try:
        with _probe_dir(state_dir) as work:
            device = work / "device"
            device.write_bytes(bytes(erofsimage.BLOCK) + _PROBE_BYTES.ljust(erofsimage.BLOCK, b"\0"))
            entries = [ROOT, Entry("probe", Kind.FILE, 0o644, size=len(_PROBE_BYTES), source="device", offset=erofsimage.BLOCK)]
            image = work / "image"
            erofsimage.write(image, entries, [erofsimage.Device("device", device.stat().st_size)], erofsimage.reader(work))
            target = work / "mnt"
            target.mkdir()
            mount(image, [device], target, backing=backing)
            try:
                got = (target / "probe").read_bytes()
            finally:
                kernel.unmount(os.fspath(target))
    except (OSError, ValueError, errors.DriverError) as exc:  # DriverError: the unmount failed
        return str(exc)
    return None if got == _PROBE_BYTES else "the mount served wrong bytes"


def probe(state_dir: Path) -> tuple[str | None, str]:
    """The backing this kernel mounts our images with, the first of ``BACKINGS`` that works (or
    only the one ``$OCI_VOLUME_CSI_EROFS_BACKING`` names), None if none does; and why, for the log."""
    forced = os.environ.get(FORCE_BACKING)
    refusals = []
    for backing in (forced,) if forced else BACKINGS:
        why_not = _probe_one(state_dir, backing) if backing in BACKINGS else f"no such backing (${FORCE_BACKING})"
        if why_not is None:
            works = f"EROFS {backing}-backed mounts with extra devices work"
            return backing, "; ".join([*refusals, works])
        refusals.append(f"EROFS {backing}-backed mounts do not work here: {why_not}")
    return None, "; ".join(refusals)

"""Mount table and mount syscalls: read-only binds onto kubelet targets, unmounts.

The kernel is the only truth about what is mounted: its mount table
(``/proc/self/mountinfo``) or, for "is this path a mount point?", ``statx``'s mount
root flag; nothing here guesses from directories, device numbers or records. The syscalls go
through libc directly (ctypes) rather than ``mount(8)``: a warm publish's bind is four
syscalls, not two subprocesses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from csi_driver import errors

log = logging.getLogger("oci-volume-csi")

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

# The new mount API (linux/mount.h). Syscalls added since Linux 5.1 have one number on every
# architecture but alpha (asm-generic/unistd.h, x86's syscall_64.tbl), x86_64 and aarch64 included.
SYS_OPEN_TREE = 428  # Linux 5.2
SYS_MOVE_MOUNT = 429  # Linux 5.2
SYS_MOUNT_SETATTR = 442  # Linux 5.12
OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


class _MountAttr(ctypes.Structure):
    """``struct mount_attr`` as first published (``MOUNT_ATTR_SIZE_VER0``: 32 bytes)."""

    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long  # variadic: every argument is passed as a long or a pointer
_statx = getattr(_libc, "statx", None)  # glibc 2.28+; without it the mount table decides
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p]

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_STATX_DONT_SYNC = 0x4000  # a FUSE root answers from the kernel's cache, even when its server is dead
STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256  # struct statx; stx_attributes at offset 8, stx_attributes_mask at 56


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    root: str
    fs_type: str
    source: str
    options: frozenset[str]
    device: str = ""  # "major:minor" of the mounted file system, as /sys/class/bdi names it


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def _parse(line: str) -> MountInfo:
    left, _, right = line.partition(" - ")
    fields, tail = left.split(), right.split()
    return MountInfo(
        mount_point=_unescape(fields[4]),
        root=_unescape(fields[3]),
        fs_type=tail[0],
        source=_unescape(tail[1]),
        options=frozenset(fields[5].split(",")),
        device=fields[2],
    )


def _read_table(path: str = "/proc/self/mountinfo") -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def mount_table(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    return [_parse(line) for line in _read_table(path).splitlines()]


def _escape(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def find_mount(path: str) -> MountInfo | None:
    """The topmost mount at exactly ``path``, if any.

    Only lines that contain the escaped path are parsed: on a node with thousands of
    mounts, parsing the whole table in Python would cost milliseconds per publish.
    """
    needle = f" {_escape(path)} "
    table = _read_table()
    if needle not in table:
        return None
    found = None
    for line in table.splitlines():
        if needle in line:
            info = _parse(line)
            if info.mount_point == path:
                found = info
    return found


def _mount_root_flag(path: str) -> bool | None:
    """The kernel's own answer to "is ``path`` the root of a mount?" (``statx``, Linux 5.8+).

    None when it cannot say: an older kernel (or glibc) that does not report the attribute, a
    seccomp profile that refuses the call, or a path the kernel cannot stat (a dead view beneath it).
    """
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_DONT_SYNC
    if _statx(AT_FDCWD, path.encode(errors="surrogateescape"), flags, 0, buf) != 0:
        return False if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR) else None
    attributes, supported = struct.unpack_from("<Q", buf, 8)[0], struct.unpack_from("<Q", buf, 56)[0]
    if not supported & STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(attributes & STATX_ATTR_MOUNT_ROOT)


def is_mount_point(path: str) -> bool:
    """Whether something is mounted at exactly ``path``: what publish and unpublish ask.

    One syscall instead of reading the mount table: the kernel formats every line of
    ``/proc/self/mountinfo`` on each read, which at 1,000 volumes costs milliseconds per
    call. Where ``statx`` cannot say, the table decides.
    """
    flag = _mount_root_flag(path)
    return find_mount(path) is not None if flag is None else flag


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}")


def _syscall(number: int, what: str, path: str, *args: object) -> int:
    """``syscall(number, *args)``; ints go as longs, so a negative fd reaches the kernel intact."""
    result = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}")
    return result


def _attach_read_only_clone(source: str, target: str) -> None:
    """Clone the mount at ``source``, make the clone ``ro,nosuid,nodev`` while it is still
    detached, then attach it at ``target``: every copy propagation makes is a copy of a read-only
    mount. Closing the fd drops the clone if it was never attached."""
    fd = _syscall(SYS_OPEN_TREE, "clone of", source, AT_FDCWD, source.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC)
    try:
        attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
        args = (fd, b"", AT_EMPTY_PATH, ctypes.pointer(attr), ctypes.sizeof(attr))
        _syscall(SYS_MOUNT_SETATTR, "read-only flags for the bind of", source, *args)
        _syscall(SYS_MOVE_MOUNT, "bind mount onto", target, fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(fd)


def _bind_then_remount(source: str, target: str) -> None:
    """``mount --bind -o ro``: a bind ignores flags on its first call, so a remount applies them.
    If the remount fails the fresh bind is undone, so a writable view is never left behind."""
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), "bind mount onto", target)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    try:
        _check(_libc.mount(None, target.encode(), None, flags, None), "read-only remount of", target)
    except OSError:
        _libc.umount2(target.encode(), MNT_DETACH)
        raise


@functools.cache
def _warn_no_mount_setattr() -> None:
    log.warning(
        "this kernel lacks mount_setattr (Linux 5.12): volumes are read-only in the driver's mount "
        "namespace only, and writable in the host's copies of them"
    )


def bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` (only its own mount, as ``MS_BIND`` without ``MS_REC``) onto ``target`` as
    ``ro,nosuid,nodev``, on top of whatever is mounted there already.

    The flags must be set before the bind is attached. On a node ``target`` lives under a shared
    mount, so attaching it copies it into the host's mount namespace at once, and a remount
    changes only the driver's own copy: a bind-mode tree would stay writable through the host's
    copy (and a pod whose volume mount is not ``readOnly``), for every pod of that digest.

    Unlike ``mount(2)``, a symlink at ``target`` is refused (EINVAL), not followed: the kubelet
    never makes one, and following it would mount the volume wherever it points.

    Kernels before 5.12 (no ``mount_setattr``: ENOSYS) get the bind and remount of old, which
    cannot make the copies already propagated read-only; the driver warns once. Any other
    failure of the new calls (a seccomp profile refusing them, say) is an error, not a reason to
    fall back.
    """
    try:
        _attach_read_only_clone(source, target)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        _warn_no_mount_setattr()
        _bind_then_remount(source, target)


def unmount(target: str) -> None:
    """Unmount ``target``; a dead FUSE view (ENOTCONN) or a busy mount is detached lazily.

    Lazy detach is what keeps a pod from hanging in Terminating when the view
    behind its volume died: the mount leaves the namespace at once.
    """
    if _libc.umount2(target.encode(), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.ENOENT or (err == errno.EINVAL and not is_mount_point(target)):
        return
    if err in (errno.ENOTCONN, errno.EBUSY, errno.EIO):
        _check(_libc.umount2(target.encode(), MNT_DETACH), "lazy unmount of", target)
        return
    raise errors.Internal(f"unmount of {target} failed: {os.strerror(err)}")


def path_state(path: str) -> str:
    """'missing', 'ok', or 'dead' (a mount whose FUSE server is gone: ENOTCONN).

    ``statfs`` rather than ``stat``: the kernel answers ``stat`` from its attribute cache
    even after the FUSE server died, but always asks the file system for ``statfs``.
    """
    try:
        os.statvfs(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EIO):
            return "dead"
        raise
    return "ok"


def target_state(target: str) -> str:
    """``ok``, ``dead`` (a mount whose FUSE view is gone; ``serve`` re-binds it) or ``not mounted``."""
    return path_state(target) if is_mount_point(target) else "not mounted"


def make_target(target: str) -> bool:
    """Create the kubelet's ``.../mount`` dir (its parent must exist); True if we made it."""
    parent = Path(target).parent
    if not parent.is_dir():
        raise errors.NotFound(f"the parent of target_path {target} does not exist; the kubelet creates it")
    try:
        os.mkdir(target, 0o750)
    except FileExistsError:
        return False
    return True

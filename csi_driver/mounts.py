"""Mount table and mount syscalls: read-only binds onto kubelet targets, unmounts.

The kernel is the only truth about what is mounted: its mount table
(``/proc/self/mountinfo``) or, for "is this path a mount point?", ``statx``'s mount
root flag; nothing here guesses from directories, device numbers or records. The syscalls go
through libc directly (ctypes) rather than ``mount(8)``: a warm publish is two
syscalls, not two subprocesses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import errors

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
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


def bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` onto ``target`` as ``ro,nosuid,nodev``.

    A bind mount ignores flags on its first call, so the flags are applied by a
    remount of the bind, as ``mount --bind -o ro`` does. If the remount fails the
    fresh bind is undone, so a writable view is never left behind.
    """
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), "bind mount onto", target)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    try:
        _check(_libc.mount(None, target.encode(), None, flags, None), "read-only remount of", target)
    except OSError:
        _libc.umount2(target.encode(), MNT_DETACH)
        raise


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

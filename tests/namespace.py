"""Run the test process in a private mount namespace, so a crashed test leaks no mount.

Called from conftest before any thread exists; it always makes a new namespace
(nesting is cheap, and /proc/1 may not be readable in a container to compare with) (unshare(CLONE_NEWNS) needs an
unshared fs context). Every mount the tests and the driver processes they start
make lives and dies with this namespace. Failing here fails the run: tests that
need mounts must never silently skip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def enter_private_namespace() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"cannot enter a private mount namespace (unshare: {os.strerror(err)}); run as root")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"cannot make / private in the test namespace: {os.strerror(err)}")

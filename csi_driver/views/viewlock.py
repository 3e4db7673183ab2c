"""Which process serves the FUSE view: the one holding ``<state-dir>/view.lock``.

Two starters compete for the view: the DaemonSet's ``fuse`` container and ``serve``'s watchdog,
which starts its own server when the view dies. A server refusing a live view would make the
restarted container crash-loop, and two racing to replace a dead one would stack two mounts. So
a server holds an exclusive ``flock`` for its whole life (the kernel drops it when the process
dies, however it dies): a second server waits for it, then replaces the dead view, and ``serve``
starts no server while one holds or waits for the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_NAME = "view.lock"


@contextlib.contextmanager
def hold(state_dir: Path) -> Iterator[None]:
    """Hold the view lock, standing by (blocked) while another server holds it."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another FUSE server serves the view of %s; standing by until it exits", state_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("the other FUSE server exited; taking over the view")
        yield
    finally:
        os.close(fd)


def held(state_dir: Path) -> bool:
    """Whether a server holds the lock now (one is serving, or about to)."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this took
    return False

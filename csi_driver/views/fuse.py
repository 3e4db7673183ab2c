"""The ``--mode fuse`` data plane, seen from ``serve``: the FUSE server process and its health.

The view is served by its own process (``oci-volume-csi fuse``, ``fusefs``), started detached so
that a restart of ``serve`` leaves every volume in place; ``serve`` only starts one when no live
view is mounted, and its watchdog replaces a dead one and re-binds every volume on top of it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from csi_driver import errors, metrics
from csi_driver.content.store import Store
from csi_driver.mounts import kernel
from csi_driver.mounts.publications import Publications
from csi_driver.mounts.reconcile import reconcile
from csi_driver.views import viewlock

FUSE_FS_TYPE = "fuse.oci-volume-csi"
READAHEAD_KB = 1024
"""The FUSE view's readahead: a large file reaches the view in requests of 1 MiB."""
log = logging.getLogger("oci-volume-csi")


class FuseView:
    mode = "fuse"

    def __init__(self, store: Store, start_timeout: float = 15.0) -> None:
        self.store = store
        self.mountpoint = str(store.root / "view")
        self.start_timeout = start_timeout

    def path_for(self, digest: str) -> str:
        path = f"{self.mountpoint}/{digest}"
        if kernel.path_state(path) != "ok":
            raise errors.Unavailable(
                f"the FUSE view does not serve {digest} (view at {self.mountpoint} is down); "
                "the driver restarts it, retry shortly"
            )
        return path

    def live(self) -> bool:
        info = kernel.find_mount(self.mountpoint)
        return info is not None and info.fs_type == FUSE_FS_TYPE and kernel.path_state(self.mountpoint) == "ok"

    def healthy(self) -> bool:
        return self.live()

    def identity(self) -> int | None:
        """The live view's device number (each FUSE mount gets its own), None when it is dead:
        a different number means another server replaced the view and volumes need re-binding."""
        try:
            return os.stat(self.mountpoint).st_dev if self.live() else None
        except OSError:  # it died in between
            return None

    def ensure_running(self) -> None:
        """Start ``oci-volume-csi fuse`` detached unless a live view is already mounted or
        another server (the DaemonSet's fuse container) holds the view lock and is replacing it;
        then raise the view's readahead (``_raise_readahead``)."""
        if not self.live():
            if viewlock.held(self.store.root):
                self._wait_live("the FUSE server holding the view lock did not mount it")
            else:
                self._start()
        self._raise_readahead()

    def _start(self) -> None:
        if kernel.path_state(self.mountpoint) == "missing":  # a dead view is detached by the new server
            os.makedirs(self.mountpoint)
        output = open(self.store.root / "fuse.log", "ab")
        subprocess.Popen(
            [sys.executable, "-m", "csi_driver", "fuse", "--state-dir", str(self.store.root)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            close_fds=True,
        )
        output.close()
        self._wait_live(f"the FUSE view did not come up; see {self.store.root / 'fuse.log'}")

    def _raise_readahead(self) -> None:
        """Let the kernel read ahead ``READAHEAD_KB`` of a view's file at a time, in requests of 1 MiB.

        A FUSE mount starts with the kernel's default readahead, 128 KiB, which libfuse 3.14 keeps
        at INIT: every read of a large file reached the view as 128 KiB requests, each a round
        trip through the view process whatever its size. Raised once the view is live (INIT would
        lower it again), it holds for the files opened from then on; libfuse already allows
        requests of 1 MiB (``max_pages`` 256). Where /sys is read-only the default stays.
        """
        info = kernel.find_mount(self.mountpoint)
        try:
            if info is None:
                raise FileNotFoundError(self.mountpoint)
            Path(f"/sys/class/bdi/{info.device}/read_ahead_kb").write_text(f"{READAHEAD_KB}\n")
        except OSError as exc:
            log.warning("could not raise the readahead of the FUSE view (%s); large files are read 128 KiB at a time", exc)

    def _wait_live(self, why: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.live():
                return
            time.sleep(0.05)
        raise errors.Unavailable(f"{why} at {self.mountpoint} within {self.start_timeout:.0f}s")


def watch_view(view: FuseView, publications: Publications, stop: threading.Event, interval: float = 1.0) -> None:
    """Until ``stop``: when the FUSE view is dead, start a new one and re-bind every target.

    A view replaced between two looks (the fuse container standing by took over at once, see
    ``viewlock``) is live but new: its device number tells, and the targets are re-bound too.
    """
    seen = view.identity()
    while not stop.wait(interval):
        current = view.identity()
        if current is not None and current == seen:
            continue
        if current is None:
            log.warning("the FUSE view at %s is dead; starting a new one", view.mountpoint)
        else:
            log.warning("the FUSE view at %s was replaced by another server; re-binding every volume", view.mountpoint)
        metrics.VIEW_RESTARTS.inc()
        try:
            view.ensure_running()
            reconcile(publications, view)
            seen = view.identity()
        except errors.DriverError as exc:
            log.error("%s", exc.message)
        except Exception:  # noqa: BLE001 - the watchdog must outlive any one failed repair
            log.exception("repairing the FUSE view failed; retrying")

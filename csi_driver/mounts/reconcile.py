"""Bring the mount table in line with the publication records, at start and when a view dies.

DESIGN.md "Processes and restarts": a restarted ``serve`` repairs what is broken,
drops records whose target is gone, and never unmounts a healthy volume. In fuse
mode a watchdog notices a dead view within seconds, starts a new one and binds it
onto every recorded target, on top of the dead mount; pods whose mounts use
``HostToContainer`` propagation then see the repair.
"""

from __future__ import annotations

import logging
import os
import threading

from csi_driver import errors, metrics
from csi_driver.mounts import kernel
from csi_driver.mounts.publications import Publication, Publications
from csi_driver.views.choose import BindView, FuseView

log = logging.getLogger("oci-volume-csi")


def _rebind(pub: Publication, view: BindView | FuseView) -> None:
    """Bind the view onto a broken target: on top of its dead mount, or onto the bare directory.

    Never unmount the dead mount first: a container's copy of the volume is a slave of the
    target mount itself, so only a mount made on top of that mount propagates to it; once it
    is unmounted, the container holds the dead view for good. Unpublish unmounts the whole
    stack. Called only for a target that is not ``ok``, so a healthy one gains no mount.
    """
    kernel.make_target(pub.target)
    kernel.bind_readonly(view.path_for(pub.digest), pub.target)


def reconcile(publications: Publications, view: BindView | FuseView) -> None:
    """Repair broken recorded volumes, drop records whose target is gone."""
    for pub in publications.all():
        if not os.path.isdir(os.path.dirname(pub.target)):
            log.info("dropping the record of %s: its pod directory %s is gone", pub.volume_id, pub.target)
            publications.drop(pub.volume_id)
            continue
        if kernel.target_state(pub.target) == "ok":
            continue
        try:
            _rebind(pub, view)
            log.info("re-bound %s (%s) onto %s", pub.volume_id, pub.digest, pub.target)
        except (errors.DriverError, OSError) as exc:
            log.warning("could not repair %s at %s: %s", pub.volume_id, pub.target, exc)


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

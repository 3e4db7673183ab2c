"""Bring the mount table in line with the publication records, at start and when a view dies.

docs/processes.md: a restarted ``serve`` repairs what is broken,
drops records whose target is gone, and never unmounts a healthy volume. In fuse
mode a watchdog notices a dead view within seconds, starts a new one and binds it
onto every recorded target, on top of the dead mount (``csi_driver.views.fuse.watch_view``);
pods whose mounts use ``HostToContainer`` propagation then see the repair.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from csi_driver import errors
from csi_driver.mounts import kernel
from csi_driver.mounts.publications import Publication, Publications

log = logging.getLogger("oci-volume-csi")


class View(Protocol):
    """What reconciling needs of a view: the directory that holds a digest's tree (mounting the
    view of the digest first where it must). Any of the views in ``csi_driver.views`` is one."""

    def path_for(self, digest: str) -> str: ...


def _rebind(pub: Publication, view: View) -> None:
    """Bind the view onto a broken target: on top of its dead mount, or onto the bare directory.

    Never unmount the dead mount first: a container's copy of the volume is a slave of the
    target mount itself, so only a mount made on top of that mount propagates to it; once it
    is unmounted, the container holds the dead view for good. Unpublish unmounts the whole
    stack. Called only for a target that is not ``ok``, so a healthy one gains no mount.
    """
    kernel.make_target(pub.target)
    kernel.bind_readonly(view.path_for(pub.digest), pub.target)


def reconcile(publications: Publications, view: View) -> None:
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

"""Which view a driver serves from, opened ready for publishes.

Every view answers one question, "which directory holds the tree of this digest?"
(``path_for``), and whether it is healthy; ``erofs`` mounts one kernel EROFS image per digest,
``fuse`` serves every tree from one FUSE server process, ``bind`` extracts each tree once.
``auto`` takes the first of them this node can serve (``choose``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from csi_driver.content.store import Store
from csi_driver.views import erofsmount
from csi_driver.views.bind import BindView
from csi_driver.views.erofs import ErofsView
from csi_driver.views.fuse import FuseView

View = ErofsView | BindView | FuseView
MODES = ("auto", "erofs", "fuse", "bind")
FUSE_DEVICE = "/dev/fuse"
log = logging.getLogger("oci-volume-csi")


class Copies:
    """What the views keep of digests outside the store, whichever view serves now (a node's
    ``--mode`` may have changed): bind mode's extracted trees and erofs mode's images. The cache
    budget counts them, and releases a digest's before it removes the digest's content."""

    def __init__(self, store: Store) -> None:
        self._views = (BindView(store), ErofsView(store))

    def held_bytes(self, digest: str) -> int:
        return sum(view.held_bytes(digest) for view in self._views)

    def release(self, digest: str) -> None:
        for view in self._views:
            view.release(digest)


def choose(mode: str, state_dir: Path) -> tuple[str, str]:
    """The view to serve for ``--mode``, and why, for the log. ``auto``: erofs where the kernel
    mounts a tiny image written in the state dir (``erofsmount.probe``), else fuse where
    /dev/fuse exists, else bind. An explicit ``erofs`` the kernel cannot serve is an error
    (SystemExit) rather than a silent other view."""
    if mode == "erofs" or mode == "auto":
        works, why = erofsmount.probe(state_dir)
        if works:
            return "erofs", f"{why} ({'--mode erofs' if mode == 'erofs' else 'auto: the first choice'})"
        if mode == "erofs":
            raise SystemExit(f"oci-volume-csi serve: --mode erofs: {why}; use --mode auto, fuse or bind")
        if os.path.exists(FUSE_DEVICE):
            return "fuse", f"auto: {why}; {FUSE_DEVICE} exists"
        return "bind", f"auto: {why}; there is no {FUSE_DEVICE}"
    return mode, f"--mode {mode}"


def open_view(mode: str, store: Store) -> View:
    """The view of ``mode`` (erofs, fuse or bind, as ``choose`` picked it), ready for publishes."""
    if mode == "erofs":
        return ErofsView(store)
    if mode == "fuse":
        view = FuseView(store)
        view.ensure_running()
        return view
    return BindView(store)

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
from typing import NamedTuple

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


class Choice(NamedTuple):
    mode: str  # erofs, fuse or bind
    why: str  # for the log
    backing: str = ""  # erofs: file or loop (erofsmount.BACKINGS)


def choose(mode: str, state_dir: Path) -> Choice:
    """The view to serve for ``--mode``, and why, for the log. ``auto``: erofs where the kernel
    mounts a tiny image written in the state dir (``erofsmount.probe``: file-backed, else over loop
    devices), else fuse where /dev/fuse exists, else bind. An explicit ``erofs`` the kernel cannot
    serve is an error (SystemExit) rather than a silent other view."""
    if mode == "erofs" or mode == "auto":
        backing, why = erofsmount.probe(state_dir)
        if backing is not None:
            return Choice("erofs", f"{why} ({'--mode erofs' if mode == 'erofs' else 'auto: the first choice'})", backing)
        if mode == "erofs":
            raise SystemExit(f"oci-volume-csi serve: --mode erofs: {why}; use --mode auto, fuse or bind")
        if os.path.exists(FUSE_DEVICE):
            return Choice("fuse", f"auto: {why}; {FUSE_DEVICE} exists")
        return Choice("bind", f"auto: {why}; there is no {FUSE_DEVICE}")
    return Choice(mode, f"--mode {mode}")


def open_view(mode: str, store: Store, backing: str = "file") -> View:
    """The view of ``mode`` (erofs, fuse or bind, as ``choose`` picked it), ready for publishes;
    ``backing``: the erofs view's."""
    if mode == "erofs":
        return ErofsView(store, backing)
    if mode == "fuse":
        view = FuseView(store)
        view.ensure_running()
        return view
    return BindView(store)

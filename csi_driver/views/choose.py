"""Which view a driver serves from, opened ready for publishes.

Every view answers one question, "which directory holds the tree of this digest?"
(``path_for``), and whether it is healthy; ``bind`` extracts each tree once, ``fuse`` serves
every tree from one FUSE server process.
"""

from __future__ import annotations

from csi_driver.content.store import Store
from csi_driver.views.bind import BindView
from csi_driver.views.fuse import FuseView

View = BindView | FuseView


class Copies:
    """What the views keep of digests outside the store, whichever view serves now (a node's
    ``--mode`` may have changed): bind mode's extracted trees. The cache budget counts them,
    and releases a digest's before it removes the digest's content."""

    def __init__(self, store: Store) -> None:
        self._views = (BindView(store),)

    def held_bytes(self, digest: str) -> int:
        return sum(view.held_bytes(digest) for view in self._views)

    def release(self, digest: str) -> None:
        for view in self._views:
            view.release(digest)


def open_view(mode: str, store: Store) -> View:
    view = FuseView(store) if mode == "fuse" else BindView(store)
    if isinstance(view, FuseView):
        view.ensure_running()
    return view

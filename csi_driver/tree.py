"""The tree model shared by the layout step and both filesystem views.

``layout.py`` turns a manifest's layers into a list of :class:`Entry`; the store
records that list once per manifest digest; the FUSE view serves it and the bind
view materialises it. Because both views read the very same entries, they cannot
disagree about bytes, modes, owners or symlink targets.

A regular file's bytes are never copied into the model: ``source`` names a file
inside the store (relative to the state dir) and ``offset`` where its bytes begin
(a member of an uncompressed layer tar, or a whole blob for an ORAS file).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class Entry:
    """One node of a tree.

    ``path`` is relative and normalised (``a/b/c``, no ``.``/``..``/leading ``/``);
    the root is ``""``. ``mode`` holds permission bits only, setuid/setgid already
    dropped. ``mtime`` is in whole seconds, as tar stores it.
    """

    path: str
    kind: Kind
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    link: str = ""
    source: str = ""
    offset: int = 0


ROOT = Entry(path="", kind=Kind.DIR, mode=0o755)

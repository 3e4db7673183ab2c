"""The tree model shared by the layout step and both filesystem views.

``layout.py`` turns a manifest's layers into a list of :class:`Entry`; the store
records that list once per manifest digest; the FUSE view serves it and the bind
view materialises it. Because both views read the very same entries, they cannot
disagree about bytes, modes, owners or symlink targets; nor, since each asks ``hardlinks``,
about which names are one inode.

A regular file's bytes are never copied into the model: ``source`` names a file
inside the store (relative to the state dir) and ``offset`` where its bytes begin
(a member of an uncompressed layer tar, or a whole blob for an ORAS file).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from csi_driver.reference import digest_hex


class Kind:
    """An entry's kind: one of three plain strings, compared by identity (``is``).

    Not an Enum: reading ``Kind.DIR`` off an Enum costs ~50 ns, a plain class attribute ~15,
    and the layout, the store and both views read several per entry on the cold-publish path;
    and entries of plain strings are stored (marshal) without converting them (bench/RESULTS.md).
    """

    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"


KINDS = {kind: kind for kind in (Kind.DIR, Kind.FILE, Kind.SYMLINK)}
"""A kind read back from the store to its constant, so that identity comparisons hold for it."""


class Entry(NamedTuple):
    """One node of a tree.

    ``path`` is relative and normalised (``a/b/c``, no ``.``/``..``/leading ``/``);
    the root is ``""``. ``mode`` holds permission bits only, setuid/setgid already
    dropped. The modification time is ``mtime`` whole seconds (rounded toward minus infinity,
    so it may be negative) plus ``mtime_nsec`` nanoseconds (0 to 999,999,999), as the kernel's
    ``timespec`` and EROFS hold it: a PAX header's fraction of a second survives.

    ``mtime_nsec`` is a field of its own, last, rather than ``mtime`` turning into nanoseconds:
    most members are plain headers of whole seconds, so the layout passes a constant 0 instead of
    multiplying (a 61-bit int object per entry), a stored listing is smaller (a nanosecond count
    does not fit marshal's 32-bit int: 805 KB instead of 865 KB for 12,000 entries), and listings
    stored before it (10 fields) load as they are (bench/RESULTS.md).

    A NamedTuple rather than a frozen dataclass: a tree of 12,000 entries is built
    once by the layout, and again by every view that loads it, and a frozen
    dataclass takes four to five times as long to construct (bench/RESULTS.md).
    """

    path: str
    kind: str  # a Kind
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    link: str = ""
    source: str = ""
    offset: int = 0
    mtime_nsec: int = 0


ROOT = Entry(path="", kind=Kind.DIR, mode=0o755)


def hardlinks(entries: Iterable[Entry]) -> dict[str, dict[int, int]]:
    """Which entries are names of one inode: ``source`` → ``offset`` → its number of names, for
    every inode that more than one entry names. Every view shows such entries as one inode whose
    link count is that number; any other entry is an inode of its own.

    The layout step represents a hardlink as a copy of its target's entry under another path, so
    the regular files whose bytes start at the same ``offset`` of the same ``source`` are one
    member of a layer tar. A whole blob (``offset`` 0: an ORAS file; a tar member's bytes never
    start at 0) is never a hardlink: two titles of one blob stay two files, as ``oras pull``
    writes them.

    One loop in Python, keyed by source, then offset, rather than by a tuple of both: no object
    is made per entry (a tree has few sources), and C loops over ``zip``'s tuples were no faster
    (bench/RESULTS.md).
    """
    counts: dict[str, dict[int, int]] = {}
    linked: dict[str, dict[int, int]] = {}
    for entry in entries:
        offset = entry.offset
        if offset and entry.kind is Kind.FILE:
            seen = counts.get(entry.source)
            if seen is None:
                seen = counts[entry.source] = {}
            names = seen.get(offset, 0) + 1
            seen[offset] = names
            if names > 1:
                linked.setdefault(entry.source, {})[offset] = names
    return linked


def is_hardlink(links: dict[str, dict[int, int]], entry: Entry) -> bool:
    """Whether ``entry`` is one of the names ``links`` (``hardlinks``) counts."""
    return entry.source in links and entry.offset in links[entry.source]


LAYOUT_VERSION = 2
"""What a tree built by this code holds, recorded with every tree the store commits.

Bump it whenever the placement rules or :class:`Entry` change what the tree of some manifest
holds: a tree recorded under an older version is rebuilt for the next publish (``pull``), while
the volumes already showing it keep it (``views``). Versions:

1. trees committed before versions were recorded: whole-second mtimes, and ToolHive plugins (a
   titled layer of an image) placed as the single file of their title;
2. rule 0 (an image config unpacks every layer, titles ignored), and nanosecond mtimes.
"""


def blob_relpath(digest: str) -> str:
    """Where a verified blob lives, relative to the state dir."""
    return f"blobs/sha256/{digest_hex(digest)}"


def decoded_relpath(digest: str) -> str:
    """Where the inflated tar of a compressed layer lives, relative to the state dir."""
    return f"layers/sha256/{digest_hex(digest)}.tar"

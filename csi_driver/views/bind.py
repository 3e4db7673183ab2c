"""The ``--mode bind`` data plane: a tree materialised on disk once per manifest digest.

A volume is then a read-only bind mount of plain files: no process sits in the
data path, so a crash, restart or upgrade of the driver touches no mount
(docs/processes.md). The tree is built in a temp dir and renamed
into place, so a crash never leaves a half tree that looks complete; it is flushed to the
disk before the rename and its directory after, so a power loss does not either.

A digest's tree is extracted once per layout version (``LAYOUT_VERSION``): a tree built by older
rules is committed again under its digest, and the new tree goes to a directory of its own, so the
volumes bound to the old extraction keep it, untouched, while new publishes bind the new one.
An old extraction goes when the digest leaves the cache (``release``), as the current one does.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from csi_driver import errors
from csi_driver.content.store import Store, fsync_path, syncfs_path
from csi_driver.layout.rules import depth_first
from csi_driver.layout.tree import (
    LAYOUT_VERSION,
    ROOT,
    Entry,
    Kind,
    hardlinks,
    is_hardlink,
)
from csi_driver.reference import digest_hex

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # to reach a directory, not read it
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# copy_file_range refuses some filesystem pairs; plain reads and writes always work.
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_CHUNK = 1 << 20


def _umask() -> int | None:
    """This process's umask, read without setting it (``os.umask`` would, for a moment, in
    every thread); None where the kernel does not say (before Linux 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def tree_dir(state_dir: Path, digest: str, layout: int = LAYOUT_VERSION) -> Path:
    """Where the materialised tree of a manifest digest, built under layout version ``layout``,
    lives: ``trees/sha256/<hex>`` for version 1 (where releases before versions extracted it),
    ``trees/v<layout>/sha256/<hex>`` for later ones."""
    versioned = state_dir / "trees" if layout == 1 else state_dir / "trees" / f"v{layout}"
    return versioned / "sha256" / digest_hex(digest)


def materialize(state_dir: Path, digest: str, entries: Sequence[Entry], layout: int = LAYOUT_VERSION) -> Path:
    """Write ``entries`` (the tree of ``digest`` under layout version ``layout``) out as a
    directory tree once; return its path.

    Idempotent: an existing tree is returned as it is, and when two calls race the
    loser drops its copy.
    """
    final = tree_dir(state_dir, digest, layout)
    if final.is_dir():
        return final
    try:
        _build_and_rename(state_dir, final, entries)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise errors.ResourceExhausted(
                f"the disk of the state dir {state_dir} is full while extracting {digest}; "
                "free space on the node or use --mode fuse"
            ) from exc
        raise
    return final


def remove(state_dir: Path, final: Path) -> None:
    """Delete an extracted tree (``tree_dir``), if it is there, never leaving part of it under its name.

    It leaves its name in one rename into ``tmp/`` (which the next start empties should this be
    cut short), flushed before anything in it is deleted, so that neither a kill nor a power
    loss halfway through leaves a part of the tree where a publish would take it for whole.
    """
    if not final.is_dir():
        return
    gone = tempfile.mkdtemp(prefix=f"removed-{final.name}-", dir=state_dir / "tmp")
    os.rename(final, gone)  # onto the empty dir mkdtemp made
    fsync_path(final.parent)
    shutil.rmtree(gone, ignore_errors=True)


def _build_and_rename(state_dir: Path, final: Path, entries: Sequence[Entry]) -> None:
    """Build in a temp dir, flush it, rename it into place; on any failure remove the temp dir.

    One ``syncfs`` of the state dir's file system flushes every file and directory of the tree
    before the rename, and the directory it lands in is flushed after. An ``fsync`` per file
    and directory would wait for a journal commit each, thousands for an image
    (bench/RESULTS.md compares the two); the price of ``syncfs`` is that it also flushes
    whatever else is waiting to be written on that file system.
    """
    temp_root = state_dir / "tmp"
    temp_root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f"tree-{final.name}-", dir=temp_root))
    try:
        _Builder(state_dir, temp).build(entries)
        final.parent.mkdir(parents=True, exist_ok=True)
        syncfs_path(temp)
        os.rename(temp, final)
        fsync_path(final.parent)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        lost_race = isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY)
        if lost_race and final.is_dir():
            return  # another call renamed the same tree into place first
        raise


class _Builder:
    """Creates a tree below ``root``, relative to directory fds opened with O_NOFOLLOW.

    Layout already refused every path that could escape; working from fds is
    defence in depth, so that no path is ever resolved through a symlink.
    """

    def __init__(self, state_dir: Path, root: Path) -> None:
        self.state_dir = state_dir
        self.root = root
        self.sources: dict[str, int] = {}
        # The hardlinks (``hardlinks``), and the path each was first created at: its other names link to it.
        self.links: dict[str, dict[int, int]] = {}
        self.created: dict[tuple[str, int], str] = {}
        self.umask = _umask()
        self.owner = (os.geteuid(), os.getegid())
        # The open directories from the root down to the current entry's parent.
        self.stack: list[tuple[Entry, int]] = []

    def build(self, entries: Sequence[Entry]) -> None:
        """Create every entry in depth-first order.

        Depth-first lets a directory get its final mode, owner and mtime as soon
        as its last descendant exists: deepest first, so neither a read-only
        directory nor the mtime change of creating a child gets in the way.
        """
        self.links = hardlinks(entries)
        self.stack.append((ROOT, os.open(self.root, _DIR_FLAGS)))
        try:
            for entry in sorted(entries, key=depth_first):
                self._create(entry)
            while self.stack:
                self._finish(*self.stack.pop())
        finally:
            for _, fd in self.stack:
                os.close(fd)
            for fd in self.sources.values():
                os.close(fd)

    def _create(self, entry: Entry) -> None:
        if not entry.path:
            self.stack[0] = (entry, self.stack[0][1])
            return
        parent, _, name = entry.path.rpartition("/")
        while self.stack[-1][0].path != parent:
            if len(self.stack) == 1:
                raise errors.Internal(f"tree entry {entry.path!r} has no parent directory")
            self._finish(*self.stack.pop())
        dir_fd = self.stack[-1][1]
        if entry.kind is Kind.DIR:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            self.stack.append((entry, os.open(name, _DIR_FLAGS, dir_fd=dir_fd)))
        elif entry.kind is Kind.SYMLINK:
            os.symlink(entry.link, name, dir_fd=dir_fd)
            os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
            mtime = entry.mtime * 1_000_000_000 + entry.mtime_nsec
            os.utime(name, ns=(mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)
        elif is_hardlink(self.links, entry):
            self._link(entry, name, dir_fd)
        else:
            self._create_file(entry, name, dir_fd)

    def _create_file(self, entry: Entry, name: str, dir_fd: int) -> None:
        """A regular file, its bytes copied from the store."""
        # Created with its final mode where the umask leaves it whole (the fd may write
        # even so), and owned by us already in the common case: two syscalls of six fewer
        # per file, ~10 % of a big tree's extraction (bench/RESULTS.md).
        final = self.umask is not None and entry.mode == entry.mode & 0o777 & ~self.umask
        fd = os.open(name, _FILE_FLAGS, entry.mode if final else 0o600, dir_fd=dir_fd)
        try:
            self._copy(entry, fd)
            self._finish_fd(entry, fd, mode_set=final)
        finally:
            os.close(fd)

    def _link(self, entry: Entry, name: str, dir_fd: int) -> None:
        """A name of a hardlinked file: the file itself at its first name, a link to it at the
        others (one copy on disk, and the link count and inode the other views show).

        The first name's directory is opened again from the root, a component at a time with
        O_NOFOLLOW, and the link made relative to it without following its last component either:
        as everywhere here, no path is resolved through a symlink. That directory may be finished
        already (its mtime set, perhaps unreadable: O_PATH needs no read permission): a link
        changes only the directory it is made in (this one, still open, whose mtime is set after)
        and the file's ctime. The ``syncfs`` before the rename flushes links as it flushes files.
        """
        key = (entry.source, entry.offset)
        first = self.created.get(key)
        if first is None:
            self._create_file(entry, name, dir_fd)
            self.created[key] = entry.path
            return
        head, _, first_name = first.rpartition("/")
        source_dir = os.open(self.root, _PATH_FLAGS)
        try:
            for part in head.split("/") if head else ():
                parent, source_dir = source_dir, os.open(part, _PATH_FLAGS, dir_fd=source_dir)
                os.close(parent)
            os.link(first_name, name, src_dir_fd=source_dir, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(source_dir)

    def _finish(self, entry: Entry, fd: int) -> None:
        """Give a directory whose contents all exist its final metadata, and close it."""
        try:
            self._finish_fd(entry, fd)
        finally:
            os.close(fd)

    def _finish_fd(self, entry: Entry, fd: int, mode_set: bool = False) -> None:
        """Owner, mode and mtime; the owner only if it is not ours already, the mode only if
        it was not set when the file was created."""
        if (entry.uid, entry.gid) != self.owner:
            os.fchown(fd, entry.uid, entry.gid)
            mode_set = False  # chown may clear mode bits: chmod after it
        if not mode_set:
            os.fchmod(fd, entry.mode)
        mtime = entry.mtime * 1_000_000_000 + entry.mtime_nsec
        os.utime(fd, ns=(mtime, mtime))

    def _copy(self, entry: Entry, fd: int) -> None:
        """Copy the entry's bytes from the store, in the kernel where it can."""
        source = self.sources.get(entry.source)
        if source is None:
            source = os.open(self.state_dir / entry.source, os.O_RDONLY | os.O_CLOEXEC)
            self.sources[entry.source] = source
        offset, end = entry.offset, entry.offset + entry.size
        while offset < end:
            try:
                copied = os.copy_file_range(source, fd, end - offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                copied = os.write(fd, os.pread(source, min(end - offset, _CHUNK), offset))
            if copied == 0:
                raise errors.DataLoss(
                    f"store file {entry.source} ends before byte {end} that {entry.path!r} needs; "
                    "the store is damaged: remove that file so that the next pull fetches it again"
                )
            offset += copied


class BindView:
    """Volumes are read-only binds of the digest's extracted tree, extracted at its first publish."""

    mode = "bind"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._bytes: dict[tuple[str, int], int] = {}  # (digest, layout) -> bytes of its extracted tree

    def path_for(self, digest: str) -> str:
        """The extraction of the digest's current tree (of the layout version the store records)."""
        tree = tree_dir(self.store.root, digest, self.store.layout(digest) or LAYOUT_VERSION)
        if tree.is_dir():
            return str(tree)
        with self.store.single_flight(digest):  # a pull commits the digest's tree under this lock too
            layout = self.store.layout(digest) or LAYOUT_VERSION
            return str(materialize(self.store.root, digest, self.store.load_tree(digest), layout))

    def healthy(self) -> bool:
        return True

    def _extractions(self, digest: str) -> list[Path]:
        """The digest's extracted trees, of every layout version."""
        return [tree for layout in range(1, LAYOUT_VERSION + 1) if (tree := tree_dir(self.store.root, digest, layout)).is_dir()]

    def held_bytes(self, digest: str) -> int:
        """The bytes of the digest's extracted trees: copies the cache budget counts on top of the
        store's blobs (an old extraction counted at the size of the current tree)."""
        extractions = len(self._extractions(digest))
        return self._tree_bytes(digest) * extractions if extractions else 0

    def _tree_bytes(self, digest: str) -> int:
        """The bytes of regular files an extraction of the digest's current tree holds: each
        hardlinked file once, as it is on disk. The budget asks for every digest each time it
        looks, so it is counted once per tree (its listing read once); a tree never changes."""
        layout = self.store.layout(digest) or LAYOUT_VERSION
        known = self._bytes.get((digest, layout))
        if known is None:
            entries = self.store.load_tree(digest)
            links = hardlinks(entries)
            counted: set[tuple[str, int]] = set()  # the hardlinked files counted already
            known = 0
            for entry in entries:
                if entry.kind is Kind.FILE:
                    if is_hardlink(links, entry):
                        if (entry.source, entry.offset) in counted:
                            continue
                        counted.add((entry.source, entry.offset))
                    known += entry.size
            self._bytes[(digest, layout)] = known
        return known

    def release(self, digest: str) -> None:
        """Delete the digest's extracted trees (``remove``), before the store forgets the digest."""
        for tree in self._extractions(digest):
            remove(self.store.root, tree)
        for key in [key for key in self._bytes if key[0] == digest]:
            del self._bytes[key]

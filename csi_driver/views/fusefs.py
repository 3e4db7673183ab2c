"""The FUSE data plane: every committed tree of the store, read-only, at ``<state-dir>/view``.

``oci-volume-csi fuse --state-dir DIR`` runs :func:`run`: one pyfuse3 filesystem per
node, on trio, serving each committed tree as ``/<digest>/`` straight from the
store (a file's bytes are a byte range of a layer tar or blob; nothing is copied).
Publishing a volume is then a read-only bind of ``view/<digest>`` onto the target.

Why a process of its own: the kernel routes every read of every FUSE volume to
the process holding the FUSE connection. If that were the gRPC server, restarting
or upgrading it would turn every running pod's volume into "transport endpoint is
not connected". This process only reads the store (its SQLite rows and files),
needs no RPC, and keeps serving while ``serve`` restarts.

Why long kernel cache timeouts and ``keep_cache``: a tree is immutable once
committed (its name is its digest), so entries, attributes and page-cache data can
never go stale; the kernel may keep them for as long as it likes, and a warm pod
touches this process only on ``open``.

Why a tree's own entry at the root is not cached either: a tree built by older layout rules is
committed again under its digest (``LAYOUT_VERSION``, ``pull``). The volumes bound to the old tree
hold its root inode, whose nodes this process keeps, so they go on showing the old tree; a new
publish's lookup of ``/<digest>`` must reach this process to get the new one, which gets a root
inode of its own (``TreeFS._tree_root``). The inodes inside a tree are cached as before. What this
cannot keep is a tree nobody has looked up since this process started: a view that replaces a dead
one shows each digest's current tree, to the volumes it is re-bound onto too (they lost their open
files with the dead view already).

Why no negative entries at the root: ``serve`` binds ``view/<digest>`` right after
committing the tree. A lookup that missed a moment earlier must not be cached by
the kernel, or the fresh tree would stay invisible for the negative timeout; so an
unknown name at the root raises ``ENOENT`` (never cached) and every lookup there
asks the store. The root's own attributes are not cached at all (see ``ROOT_TIMEOUT``).

Concurrency: handlers run on the trio loop; store reads (SQLite, WAL mode, written
by ``serve`` meanwhile) run in one long-lived thread (``StoreThread``), file reads
that miss the page cache in trio's worker threads. While serving, this process
never makes a syscall on its own mountpoint: it would wait on itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import gc
import itertools
import logging
import os
import signal
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from csi_driver.content.store import Store
from csi_driver.layout.tree import ROOT, Entry, Kind, hardlinks
from csi_driver.mounts import kernel
from csi_driver.reference import valid_digest
from csi_driver.views import viewlock

log = logging.getLogger(__name__)

FS_NAME = "oci-volume-csi"
FS_TYPE = f"fuse.{FS_NAME}"
MOUNT_OPTIONS = frozenset({f"fsname={FS_NAME}", f"subtype={FS_NAME}", "ro", "allow_other", "default_permissions"})

TREE_TIMEOUT = 3600.0
"""Seconds the kernel may cache a tree's entries and attributes: they never change."""
ROOT_TIMEOUT = 0.0
"""The root's attributes are never cached: its listing grows with each commit, and ``serve``
checks the view is alive by a stat of the root, which a cached answer would fake after
this process died."""

BLOCK_SIZE = 4096
_TYPE_BITS = {Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.SYMLINK: stat.S_IFLNK}


@dataclass(slots=True)
class Node:
    """One inode of a loaded tree; ``children``/``names`` only for directories.

    ``names`` keeps the children in listing order, so a readdir offset is an index
    into it (stable, because the tree never changes). A file with hardlinks is one node,
    a child of each of its names' directories (``parent`` is its first's); ``links`` counts them.
    """

    ino: int
    entry: Entry
    parent: int
    children: dict[bytes, int] | None = None
    names: list[bytes] | None = None
    subdirs: int = 0
    links: int = 1


def build_tree(entries: list[Entry], root_ino: int, parent: int, first_ino: int) -> dict[int, Node]:
    """Nodes for a tree's entries (sorted parents-first): the root at ``root_ino``, below
    ``parent``, the others at ``first_ino``… (the root's inode is given out before its tree
    is indexed, see ``TreeFS._tree_root``).

    A parent directory the entries do not list is added as 0755, so a tree is
    always fully reachable; an entry below a non-directory cannot be reached and
    is left out. The names of one inode (``hardlinks``) are one node, whose inode number
    the kernel then finds under each of them; its ``links`` counts the names it is served
    under. One pass with the common case inline: every newly published tree is
    indexed by this, and a lookup inside it waits for that (12,000 entries in ~8 ms).
    """
    root = Node(root_ino, entries[0] if entries and entries[0].path == "" else ROOT, parent, {}, [])
    nodes: dict[int, Node] = {root_ino: root}
    first_ino -= 1  # the root is in ``nodes`` already
    dirs: dict[str, Node] = {"": root}
    files: set[str] = set()  # non-directories: nothing can lie below them
    links = hardlinks(entries)
    linked: dict[str, dict[int, Node]] = {source: {} for source in links}  # the nodes of hardlinks, made

    def add(parent_node: Node, entry: Entry, name: str) -> Node:
        is_dir = entry.kind is Kind.DIR
        group = linked.get(entry.source) if linked else None
        node = group.get(entry.offset) if group is not None else None
        if node is not None:  # another name of a hardlinked file
            node.links += 1
        else:
            node = Node(first_ino + len(nodes), entry, parent_node.ino, {} if is_dir else None, [] if is_dir else None)
            nodes[node.ino] = node
            if group is not None and entry.offset in links[entry.source]:
                group[entry.offset] = node
        raw = name.encode("utf-8", "surrogateescape")  # os.fsencode, without its checks per call
        parent_node.children[raw] = node.ino  # type: ignore[index]
        parent_node.names.append(raw)  # type: ignore[union-attr]
        if is_dir:
            parent_node.subdirs += 1
            dirs[entry.path] = node
        else:
            files.add(entry.path)
        return node

    def implied(path: str) -> Node | None:
        """The directory at ``path``, added as 0755 (with its parents) when unlisted."""
        if path in dirs:
            return dirs[path]
        if path in files:
            return None
        head, _, name = path.rpartition("/")
        above = implied(head)
        return None if above is None else add(above, Entry(path=path, kind=Kind.DIR, mode=0o755), name)

    for entry in entries:
        path = entry.path
        if not path:
            continue
        head, _, name = path.rpartition("/")
        parent_node = dirs.get(head) or implied(head)
        if parent_node is None:
            log.warning("tree entry %r lies below a non-directory; it is not served", path)
            continue
        add(parent_node, entry, name)
    return nodes


def attributes(node: Node) -> pyfuse3.EntryAttributes:
    entry = node.entry
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = node.ino
    attr.st_mode = _TYPE_BITS[entry.kind] | stat.S_IMODE(entry.mode)
    attr.st_nlink = node.links if entry.kind is not Kind.DIR else 2 + node.subdirs if node.children is not None else 1
    attr.st_uid = entry.uid
    attr.st_gid = entry.gid
    attr.st_size = len(os.fsencode(entry.link)) if entry.kind is Kind.SYMLINK else entry.size
    attr.st_blksize = BLOCK_SIZE
    attr.st_blocks = -(-attr.st_size // 512)
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = entry.mtime * 1_000_000_000 + entry.mtime_nsec
    # A tree's root answered before its tree is indexed (``TreeFS._tree_root``) has no children
    # to count yet: its ``st_nlink`` 1 ("not counted") is not cached, and a getattr waits for them.
    attr.attr_timeout = TREE_TIMEOUT if node.children is not None or entry.kind is not Kind.DIR else 0.0
    # A tree's root is looked up anew at each walk from the view's root (module docstring).
    attr.entry_timeout = ROOT_TIMEOUT if node.parent == pyfuse3.ROOT_INODE else TREE_TIMEOUT
    return attr


@dataclass(slots=True)
class _OpenSource:
    fd: int
    users: int = 0


class SourceFiles:
    """O_RDONLY fds on store files, one per source, shared by every open file reading it.

    A layer tar backs thousands of files, so an fd per source (not per open) keeps
    the fd count near the number of layers. An fd is closed only while no open
    file uses it: reads run in worker threads, and closing an fd under one could
    make it read whatever file reuses the number. Idle fds beyond ``keep_idle`` are
    closed oldest first.
    """

    def __init__(self, root: Path, keep_idle: int = 64) -> None:
        self.root = root
        self.keep_idle = keep_idle
        self._open: OrderedDict[str, _OpenSource] = OrderedDict()

    def acquire(self, source: str) -> int:
        opened = self._open.get(source)
        if opened is None:
            opened = self._open[source] = _OpenSource(os.open(self.root / source, os.O_RDONLY | os.O_CLOEXEC))
        self._open.move_to_end(source)
        opened.users += 1
        return opened.fd

    def release(self, source: str) -> None:
        self._open[source].users -= 1
        idle = [name for name, opened in self._open.items() if opened.users == 0]
        for name in idle[: max(0, len(idle) - self.keep_idle)]:
            os.close(self._open.pop(name).fd)

    def close_all(self) -> None:
        for opened in self._open.values():
            os.close(opened.fd)
        self._open.clear()


@dataclass(slots=True)
class _FileHandle:
    entry: Entry
    fd: int


@dataclass(slots=True)
class _DirHandle:
    ino: int
    names: list[bytes]


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])
_T = TypeVar("_T")


def _guarded(handler: _Handler) -> _Handler:
    """Let only FUSEError out of a handler: pyfuse3 stops the filesystem on anything else."""

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        try:
            return await handler(*args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            request = [arg for arg in args[1:] if isinstance(arg, (int, bytes))]
            log.exception("FUSE %s%r failed", handler.__name__, tuple(request))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class StoreThread:
    """Runs the view's store reads in one thread that lives as long as the view.

    trio's worker threads exit after 10 s idle, and each new one opened its own SQLite
    connection (``Store`` keeps them per thread): the first lookup of a digest after a quiet
    spell, which is every publish of a new digest on a quiet node, paid ~1 ms for both
    (bench/RESULTS.md). The reads are short (building a tree's nodes runs elsewhere), so
    one thread with one connection, opened when the view starts, serves them all.
    """

    def __init__(self, store: Store) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="view-store")
        self._pool.submit(store.healthy)  # opens this thread's connection now

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the view stopped meanwhile
                token.run_sync_soon(done.set)

        future = self._pool.submit(fn, *args)
        future.add_done_callback(wake)
        await done.wait()
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class TreeFS(pyfuse3.Operations):
    """The view: the root lists committed digests, each a read-only directory of its tree.

    Inodes are allocated per tree on its first lookup (its nodes are built right after, in
    the background) and kept for the life of the process (trees are immutable, so
    ``forget`` has nothing to drop).
    """

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.store_thread = StoreThread(store)
        self.sources = SourceFiles(store.root)
        self._nodes: dict[int, Node] = {}
        self._trees: dict[str, tuple[int, int]] = {}  # digest -> (root inode, layout version) of its current tree
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._loading = trio.Lock()  # one tree indexed at a time
        # root inode -> (digest, first inode, inodes reserved) of the trees not indexed yet
        self._unindexed: dict[int, tuple[str, int, int]] = {}
        self._indexing: dict[int, trio.Event] = {}  # root inode -> set when its indexing ends
        self.nursery: trio.Nursery | None = None  # where trees are indexed in the background
        self._handles: dict[int, _FileHandle | _DirHandle] = {}
        self._next_fh = itertools.count(1)
        self._mounted_ns = time.time_ns()

    # -- trees --------------------------------------------------------------------------

    async def _tree_root(self, digest: str) -> int | None:
        """Inode of the root directory of the digest's current tree; None if not committed.

        The store says which layout version the digest's tree has now: when it is not the one
        this process gave a root inode for, the tree was committed again (rebuilt by newer rules),
        and it gets a new root inode and is indexed anew; the old inodes stay for the volumes
        bound to them.

        The first lookup is answered from the root entry alone and the tree is indexed in the
        background: a publish waits for that lookup only, not for the nodes of every entry
        (~17 ms for 12,600 entries, bench/RESULTS.md); a lookup below the root waits for them
        (``_indexed``), and so does a getattr of the root, to count its subdirectories: the
        lookup's answer says ``st_nlink`` 1, not to be cached. The root's inode and a range for
        the other entries are given out at once, so that trees indexed meanwhile take other numbers.
        """
        layout = await self.store_thread.run(self.store.layout, digest)
        if layout is None:
            return None
        known = self._trees.get(digest)
        if known is not None and known[1] == layout:
            return known[0]
        head = await self.store_thread.run(self.store.tree_root, digest)
        if head is None:
            return None
        known = self._trees.get(digest)
        if known is not None and known[1] == layout:  # looked up meanwhile
            return known[0]
        root, count = head
        ino = self._next_ino
        self._next_ino += 1 + count
        self._nodes[ino] = Node(ino, root, pyfuse3.ROOT_INODE)
        self._trees[digest] = (ino, layout)
        self._unindexed[ino] = (digest, ino + 1, count)
        if self.nursery is not None:
            self._indexing[ino] = trio.Event()
            self.nursery.start_soon(self._index, ino)
        return ino

    async def _index(self, root_ino: int) -> None:
        """Index the tree whose root is ``root_ino``; a failure is logged, and the next lookup
        below the root tries again."""
        digest, first_ino, reserved = self._unindexed[root_ino]
        try:
            async with self._loading:  # one at a time: a tree's nodes take memory while built
                if root_ino not in self._unindexed:
                    return
                entries = await self.store_thread.run(self.store.load_tree, digest)
                if not entries:
                    raise RuntimeError(f"tree {digest} is no longer in the store")
                # Built in a worker thread, not the store thread: a big tree takes a while
                # (~40 ms for 48,000 entries), and other lookups need the store meanwhile.
                nodes = await trio.to_thread.run_sync(build_tree, entries, root_ino, pyfuse3.ROOT_INODE, first_ino)
                if len(nodes) - 1 > reserved:  # directories the listing implies: more inodes
                    first_ino = self._next_ino
                    self._next_ino += len(nodes) - 1
                    nodes = await trio.to_thread.run_sync(build_tree, entries, root_ino, pyfuse3.ROOT_INODE, first_ino)
                self._nodes.update(nodes)
                del self._unindexed[root_ino]
                log.info("loaded tree %s (%d inodes)", digest, len(nodes))
        except Exception:  # noqa: BLE001 - a background task: its failure must not end the view
            log.exception("indexing tree %s failed; the next lookup in it tries again", digest)
        finally:
            event = self._indexing.pop(root_ino, None)
            if event is not None:
                event.set()

    async def _indexed(self, ino: int) -> Node:
        """The node of ``ino``, once the tree it is the root of (if it is one) is indexed."""
        if ino in self._unindexed:
            event = self._indexing.get(ino)
            if event is not None:
                await event.wait()
            else:
                await self._index(ino)
            if ino in self._unindexed:
                raise pyfuse3.FUSEError(errno.EIO)
        return self._node(ino)

    def _node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _parent(self, ino: int) -> int:
        return pyfuse3.ROOT_INODE if ino == pyfuse3.ROOT_INODE else self._node(ino).parent

    def _root_attributes(self) -> pyfuse3.EntryAttributes:
        """Answered without the store: every path walk through the view (each publish's check
        and bind) asks for them, as they are never cached. ``st_nlink`` 1 says "not counted", as
        btrfs does for directories; ``find`` then reads the root without counting on it."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.ROOT_INODE
        attr.st_mode = stat.S_IFDIR | 0o755
        attr.st_nlink = 1
        attr.st_blksize = BLOCK_SIZE
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._mounted_ns
        attr.entry_timeout = attr.attr_timeout = ROOT_TIMEOUT
        return attr

    async def _attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino == pyfuse3.ROOT_INODE:
            return self._root_attributes()
        return attributes(self._node(ino))

    async def _child(self, parent: int, name: bytes) -> int | None:
        if parent == pyfuse3.ROOT_INODE:
            digest = os.fsdecode(name)
            if not valid_digest(digest):  # no need to ask the store
                return None
            return await self._tree_root(digest)
        children = (await self._indexed(parent)).children
        if children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return children.get(name)

    # -- handlers -----------------------------------------------------------------------

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name == b".":
            return await self._attributes(parent_inode)
        if name == b"..":
            return await self._attributes(self._parent(parent_inode))
        ino = await self._child(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self._attributes(ino)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """A tree's root is answered once its tree is indexed, to count its subdirectories: a
        publish never asks (its lookup has the attributes), a pod's first look at its volume does;
        should the index fail, the root is answered uncounted."""
        if inode in self._unindexed:
            with contextlib.suppress(pyfuse3.FUSEError):  # the failure is logged; lookups below retry
                await self._indexed(inode)
        return await self._attributes(inode)

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        entry = self._node(inode).entry
        if entry.kind is not Kind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry.link)

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode == pyfuse3.ROOT_INODE:
            # A snapshot, so offsets stay valid while trees are committed mid-listing.
            digests = await self.store_thread.run(self.store.committed_digests)
            names = [os.fsencode(d) for d in digests]
        else:
            node_names = (await self._indexed(inode)).names
            if node_names is None:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            names = node_names
        fh = next(self._next_fh)
        self._handles[fh] = _DirHandle(inode, names)
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """``.``, ``..``, then the names; offset ``n`` resumes after the ``n``-th of them."""
        handle = self._handles[fh]
        assert isinstance(handle, _DirHandle)
        dots = [(b".", handle.ino), (b"..", self._parent(handle.ino))]
        for index in range(start_id, len(handle.names) + len(dots)):
            if index < len(dots):
                name, ino = dots[index]
            else:
                name = handle.names[index - len(dots)]
                child = await self._child(handle.ino, name)
                if child is None:  # a tree removed from the store since opendir
                    continue
                ino = child
            if not pyfuse3.readdir_reply(token, name, await self._attributes(ino), index + 1):
                return

    @_guarded
    async def releasedir(self, fh: int) -> None:
        del self._handles[fh]

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        entry = self._node(inode).entry
        if entry.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if entry.kind is Kind.DIR else errno.EINVAL)
        fh = next(self._next_fh)
        self._handles[fh] = _FileHandle(entry, self.sources.acquire(entry.source))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handles[fh]
        assert isinstance(handle, _FileHandle)
        size = min(size, handle.entry.size - off)
        if size <= 0:
            return b""
        return await _pread(handle.fd, size, handle.entry.offset + off)

    @_guarded
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        assert isinstance(handle, _FileHandle)
        self.sources.release(handle.entry.source)

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_files = len(self._nodes) + 1
        data.f_namemax = 255
        return data


async def _pread(fd: int, size: int, pos: int) -> memoryview:
    """``size`` bytes at ``pos``: from the page cache on the loop, from the disk in a thread.

    A read that the page cache can answer (``RWF_NOWAIT``; the store's files were just
    written, or the disk's readahead already brought them in) costs a copy; sending it
    to a worker thread would cost more than the copy. Only what must wait on the disk
    goes to a thread, so the loop never blocks on I/O.
    """
    view = memoryview(bytearray(size))
    done = 0
    try:
        done = os.preadv(fd, [view], pos, os.RWF_NOWAIT)
    except BlockingIOError:  # not in the page cache
        pass
    except OSError as exc:  # a file system (or kernel) without non-blocking buffered reads
        if exc.errno != errno.EOPNOTSUPP:
            raise
    while done < size:
        got = await trio.to_thread.run_sync(os.preadv, fd, [view[done:]], pos + done)
        if got == 0:  # the source ends early: the caller gets the short read
            break
        done += got
    return view[:done]


def _clear_mountpoint(mountpoint: Path) -> None:
    """Create the mountpoint, or detach the dead view a killed server left on it.

    A live view there (one whose server holds no view lock: an older driver's) is refused:
    stacking a second one would split the volumes between two servers.
    """
    state = kernel.path_state(str(mountpoint))
    if state == "missing":
        mountpoint.mkdir(parents=True, exist_ok=True)
    elif state == "dead":
        log.warning("detaching the dead FUSE view at %s", mountpoint)
        kernel.unmount(str(mountpoint))
    else:
        existing = kernel.find_mount(str(mountpoint))
        if existing is not None and existing.fs_type == FS_TYPE:
            raise RuntimeError(f"a live {FS_TYPE} view is already mounted at {mountpoint}; not mounting another")


async def _serve(fs: TreeFS) -> None:
    """Run the FUSE loop until it ends (unmounted from outside) or SIGTERM/SIGINT ends it."""
    async with trio.open_nursery() as nursery:
        fs.nursery = nursery
        nursery.start_soon(_terminate_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, unmounting the view", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def run(state_dir: Path, mountpoint: Path | None = None) -> None:
    """Mount the view (default ``<state_dir>/view``) and serve it until unmounted or signalled.

    While another server holds the view (``viewlock``), this stands by and takes over when that
    server exits. On SIGTERM/SIGINT the view is unmounted cleanly and this returns.
    """
    target = Path(os.path.abspath(mountpoint or Path(state_dir) / "view"))
    with viewlock.hold(Path(state_dir)):
        _clear_mountpoint(target)
        fs = TreeFS(Store(Path(state_dir)))
        pyfuse3.init(fs, str(target), set(MOUNT_OPTIONS))
        log.info("serving the trees of %s at %s", state_dir, target)
        # The objects of start-up (modules, pyfuse3, trio) live as long as the process: out of
        # the collector's sight, the first tree load no longer pays a full collection (~1.3 ms).
        gc.collect()
        gc.freeze()
        try:
            trio.run(_serve, fs)
        finally:
            pyfuse3.close(unmount=True)
            fs.sources.close_all()
            fs.store_thread.close()

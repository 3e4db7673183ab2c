"""The content store: verified blobs on disk, metadata in SQLite, one pull per digest.

Layout under the state dir::

    store.db                      SQLite (WAL): blobs, trees, tree listings, resolutions, verdicts
    blobs/sha256/<hex>            a blob exactly as the registry served it, verified (not a layer kept as its tar)
    layers/sha256/<hex>.tar       the uncompressed tar of a compressed tar-family layer
    tmp/                          work files; renamed into place only once verified

Why this shape:
- A blob is written to ``tmp/`` while its digest is computed, and renamed into
  ``blobs/`` only when the digest matches; a crash leaves at most a temp file, never
  a file under a real name with the wrong bytes. Nor does a power loss: each file is
  flushed (``fsync``) before its rename and its directory after (``commit_file``), as
  containerd commits, so a name on the disk always holds its whole file.
- A compressed layer is inflated *during* the download (one pass over the bytes),
  so the FUSE view can serve a file as a byte range of an uncompressed tar, and the
  bind view can copy it out, without inflating anything again.
- Each layer is kept once: a compressed layer that only a rule reading its tar places
  (``rules.tar_only``) is hashed and inflated as it arrives and its compressed bytes are
  never written (``put_blob(keep=False)``); its row in ``blobs`` (``kept`` 0, the compressed
  ``size``, the tar's ``decoded_size``) says it was verified and is stored as the tar alone.
  Only a titled ``tar+gzip`` that may be a directory or a file (rules 3 and 4) keeps both,
  and a blob some artifact shows as a file is stored as it is, even when another artifact
  stored the same digest as its tar first: the row then keeps both facts.
  Rows of older versions (no ``kept`` column) read as kept: their blobs are still on the disk,
  and stay until the layer is collected, since a tree of older layout rules may show one as a file.
- A tree counts as present only once its row in ``trees`` is committed, in the same
  transaction as its entries, after every blob it points at is in place and flushed.
  That row is what "complete" means for everything downstream. store.db commits without
  flushing (``open_database``): a power loss may lose the last rows, but never keep one
  that names content the disk lacks, because the content was flushed before the row was
  written; a lost row only means the next publish commits the tree again, from the blobs
  it finds stored.
- A tree's entries are ``marshal``-packed rows of ``LISTING_PART`` entries each, after a
  first row of the root alone (``listings``), not a row per entry: a 12,000-entry image
  commits in ~9 ms instead of ~25 and loads in ~7 ms instead of ~19, both on the cold-publish
  path; parts keep the memory of packing and unpacking a 50,000-entry tree small, and the
  root's own row lets the FUSE view answer a publish's lookup without unpacking thousands
  (bench/RESULTS.md). The data is the driver's own, never a registry's. Trees committed by
  earlier versions, as rows of ``entries`` or as entries without ``mtime_nsec``, still load.
- Each tree records the ``LAYOUT_VERSION`` it was built under (``trees.layout``; rows of a
  ``store.db`` from before it read as version 1). Only a tree of the current version is
  ``committed``: one built by older rules is rebuilt from the stored layers for the next publish
  and committed again under the same digest, while every view keeps showing the old tree to
  the volumes already bound to it (``load_tree`` and ``tree_root`` answer for any version).
- ``single_flight`` gives one lock per digest, so twenty volumes asking for one new
  artifact at once cause one download.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import io
import json
import marshal
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO


from csi_driver import errors
from csi_driver.content.inflate import ERRORS as INFLATE_ERRORS, Decoder
from csi_driver.database import open_database
from csi_driver.layout.tree import KINDS, LAYOUT_VERSION, ROOT, Entry, Kind, blob_relpath, decoded_relpath
from csi_driver.reference import digest_hex

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    decoded_size INTEGER,  -- the inflated tar's size when layers/sha256/<hex>.tar holds it
    fetched_at REAL NOT NULL,
    kept INTEGER NOT NULL DEFAULT 1  -- 0: a compressed layer verified and kept only as its tar
);
CREATE TABLE IF NOT EXISTS trees (
    digest TEXT PRIMARY KEY,
    committed_at REAL NOT NULL,
    last_used REAL NOT NULL,
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    private INTEGER NOT NULL,
    layout INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS listings (
    tree TEXT NOT NULL,
    part INTEGER NOT NULL,
    entries BLOB NOT NULL,
    PRIMARY KEY (tree, part)
);
-- A row per entry, as versions before ``listings`` wrote them: read and removed, never written.
CREATE TABLE IF NOT EXISTS entries (
    tree TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    size INTEGER NOT NULL,
    link TEXT NOT NULL,
    source TEXT NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (tree, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree_blobs (
    tree TEXT NOT NULL,
    blob TEXT NOT NULL,
    PRIMARY KEY (tree, blob)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resolutions (
    reference TEXT NOT NULL,
    platform TEXT NOT NULL,
    digest TEXT NOT NULL,
    resolved_at REAL NOT NULL,
    PRIMARY KEY (reference, platform)
);
-- The verification policy's verdict on a tree, for the repository it was named in, under one
-- policy (its hash): a warm publish reads it instead of asking the registry for signatures.
CREATE TABLE IF NOT EXISTS verdicts (
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    policy TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    verified_at REAL NOT NULL,
    expires REAL,
    PRIMARY KEY (digest, repository, policy)
) WITHOUT ROWID;
"""

CHUNK = 1 << 20
_STORED = "(CASE WHEN kept THEN size ELSE 0 END + COALESCE(decoded_size, 0))"
"""A ``blobs`` row's bytes on the disk: the blob if it is kept, and its inflated tar."""
LISTING_PART = 4096
"""Entries per packed row of ``listings``."""


def _listing_parts(entries: Sequence[Entry]) -> Iterator[Sequence[Entry]]:
    """A listing's parts as stored: the first entry (the root) alone, then ``LISTING_PART`` at a time.

    The FUSE view answers a publish's lookup from the root alone (``tree_root``); with the root
    in a part of its own it unpacks one entry, not 4,096: 3.1 -> 1.0 ms for the check of a
    12,299-entry tree (bench/RESULTS.md). Listings stored with the root in a full first part
    (earlier versions) load and answer the same.
    """
    if entries:
        yield entries[:1]
    for start in range(1, len(entries), LISTING_PART):
        yield entries[start : start + LISTING_PART]


def _as_rows(entries: Sequence[Entry]) -> list[tuple]:
    """Entries as stored rows (marshal takes plain tuples only), the inverse of ``_as_entries``."""
    return list(map(tuple, entries))


_LEGACY_ROWS = "SELECT path, kind, mode, uid, gid, mtime, size, link, source, offset FROM entries WHERE tree = ?"
"""A tree's rows as versions before ``listings`` stored them (one per entry)."""


def _as_entries(rows: Sequence[tuple]) -> Iterator[Entry]:
    """Entries from stored rows (path, kind value, mode, uid, gid, mtime, size, link, source, offset,
    mtime_nsec); rows stored before ``mtime_nsec`` (one part's rows all have the same length) lack it."""
    if rows and len(rows[0]) == 10:
        return (Entry(p, KINDS[k], m, u, g, t, s, ln, src, off) for p, k, m, u, g, t, s, ln, src, off in rows)
    return (Entry(p, KINDS[k], m, u, g, t, s, ln, src, off, ns) for p, k, m, u, g, t, s, ln, src, off, ns in rows)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a directory's names, to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs_path(path: Path) -> None:
    """Flush everything written to the file system that holds the directory ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


WRITE_BEHIND = 8 << 20
"""Bytes of a file being stored between two starts of its write-out to the disk (``_WriteBehind``)."""


class _WriteBehind(io.FileIO):
    """A file being stored whose pages the kernel starts writing to the disk every
    ``WRITE_BEHIND`` bytes (``sync_file_range``, which does not wait), so that the ``fsync``
    before its rename (``commit_file``) waits for the last few MiB, not for the whole file:
    the write-out overlaps the download instead of following it, which halves what the
    ``fsync`` costs a large layer (bench/RESULTS.md)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wb")
        self._written = self._started = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        written = super().write(data)
        self._written += written or 0
        if self._written - self._started >= WRITE_BEHIND:
            _libc.sync_file_range(self.fileno(), self._started, self._written - self._started, _SYNC_FILE_RANGE_WRITE)
            self._started = self._written
        return written


def _open_write_behind(path: Path) -> BinaryIO:
    """A new temp file for content being stored, written out as it fills (``_WriteBehind``)."""
    return io.BufferedWriter(_WriteBehind(path))


def commit_file(temp: Path, final: Path) -> None:
    """Rename a complete temp file to its real name so that a power loss leaves it whole or absent.

    A rename alone may reach the disk before the file's data does (ext4's and xfs's delayed
    allocation): after a power loss the name would hold an empty or short file. So, as
    containerd commits: ``fsync`` the file, rename it, ``fsync`` the directory, and only then
    may anything record the file as stored.
    """
    fsync_path(temp)
    os.replace(temp, final)
    fsync_path(final.parent)


class _Inflater:
    """Inflates a layer and writes its tar in a thread of its own, chunk by chunk, in order.

    A cold pull is three CPU-bound passes over the bytes: sha256 of the blob, inflating it,
    and writing the tar (and the blob, when it is kept). All three run in C with the GIL released
    (hashlib for more than 2 KiB, ISA-L and zstd, file writes), so the inflate, the longest, overlaps the download and
    the hash instead of following them (bench/RESULTS.md has the numbers). It behaves as the
    serial loop did: the same checks on the same bytes, and the first error in chunk order is
    the one ``close`` raises. The digest is the stronger fact, so a failed inflate does not stop
    the download: the rest of the blob (capped at its declared size) is only hashed, and the
    caller reports the inflate's error only if the bytes match their digest (DATA_LOSS otherwise).
    """

    def __init__(self, compression: str, out: BinaryIO, max_decoded_bytes: int | None, what: str) -> None:
        self._compression = compression
        self._out = out
        self._limit = max_decoded_bytes
        self._what = what
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._decoded = 0
        self._thread = threading.Thread(target=self._run, name="inflate", daemon=True)
        self._thread.start()

    def feed(self, chunk: bytes) -> None:
        """Queue the next chunk; nothing is queued once the inflater has failed."""
        if self._error is None:
            self._queue.put(chunk)

    def close(self) -> int:
        """The blob is complete: wait until it is inflated and written; the decoded size, or the error."""
        self._stop(_END)
        if self._error is not None:
            raise self._error
        return self._decoded

    def abort(self) -> None:
        """The download failed: stop without checking the stream's end. The download's error is
        the one to report, not an earlier inflate error: a blob not read whole has no known digest."""
        self._stop(_ABORT)

    def _stop(self, marker: object) -> None:
        self._queue.put(marker)
        self._thread.join()

    def _write(self, data: bytes) -> None:
        self._decoded += len(data)
        if self._limit is not None and self._decoded > self._limit:
            raise errors.ResourceExhausted(
                f"{self._what}: inflates to more than {self._limit} bytes, the limit set by "
                "--max-unpacked-bytes; raise the flag if this artifact is legitimate"
            )
        self._out.write(data)

    def _run(self) -> None:
        marker = None
        try:
            decoder = Decoder(self._compression, self._write)
            while True:
                chunk = self._queue.get()
                if chunk is _END or chunk is _ABORT:
                    marker = chunk
                    break
                decoder.feed(chunk)
            if marker is _END:
                decoder.finish()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by close()/abort()
            self._error = exc
            while marker is None:  # keep taking chunks so that the producer never blocks on a full queue
                chunk = self._queue.get()
                marker = chunk if chunk is _END or chunk is _ABORT else None


_END = object()
"""Queued after the last chunk of a complete download."""
_ABORT = object()
"""Queued when the download failed: the inflater stops without checking the stream's end."""


class Store:
    """Content-addressed store rooted at ``state_dir``; safe to share between threads."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        for sub in ("blobs/sha256", "layers/sha256", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for parent in (".", "blobs", "layers"):  # the directories above, on the disk before anything in them
            fsync_path(self.root / parent)
        self._local = threading.local()
        self._flights: dict[str, tuple[threading.Lock, int]] = {}
        self._flights_guard = threading.Lock()
        conn = self._conn()
        conn.executescript(SCHEMA)
        if "layout" not in {row[1] for row in conn.execute("PRAGMA table_info(trees)")}:  # a store.db from before it
            conn.execute("ALTER TABLE trees ADD COLUMN layout INTEGER NOT NULL DEFAULT 1")
        if "kept" not in {row[1] for row in conn.execute("PRAGMA table_info(blobs)")}:  # every blob was kept then
            conn.execute("ALTER TABLE blobs ADD COLUMN kept INTEGER NOT NULL DEFAULT 1")

    # -- database ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_database(self.root / "store.db")
        return conn

    @contextlib.contextmanager
    def _db(self, flushed: bool = False) -> Iterator[sqlite3.Connection]:
        """A transaction on this thread's connection (committed on success); ``flushed``: its
        commit, and with it every commit before it, is on the disk when this returns."""
        conn = self._conn()
        if flushed:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if flushed:
                conn.execute("PRAGMA synchronous=NORMAL")

    def remove_temp_files(self) -> None:
        """Drop what a killed pull or extraction left in ``tmp/``; only ``serve`` calls this, at start."""
        for leftover in (self.root / "tmp").iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def healthy(self) -> bool:
        try:
            self._conn().execute("SELECT 1 FROM trees LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return os.access(self.root / "tmp", os.W_OK)

    # -- single flight ----------------------------------------------------------------

    @contextlib.contextmanager
    def single_flight(self, digest: str) -> Iterator[None]:
        """Serialise work on one digest across threads; other digests proceed."""
        with self._flights_guard:
            lock, users = self._flights.get(digest, (threading.Lock(), 0))
            self._flights[digest] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._flights_guard:
                lock, users = self._flights[digest]
                if users == 1:
                    del self._flights[digest]
                else:
                    self._flights[digest] = (lock, users - 1)

    # -- blobs ------------------------------------------------------------------------

    def has_blob(self, digest: str, decoded: bool = False) -> bool:
        """Whether the blob as it was served (``decoded``: its inflated tar) is stored: its row says
        so and the file is there. A file whose row was never written (a crash right after its rename)
        counts as absent, so that the next pull stores and records it, and collection can find it."""
        row = self._conn().execute("SELECT kept, decoded_size FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None or not (row[1] is not None if decoded else row[0]):
            return False
        rel = decoded_relpath(digest) if decoded else blob_relpath(digest)
        return (self.root / rel).is_file()

    def read_blob(self, digest: str) -> bytes:
        return (self.root / blob_relpath(digest)).read_bytes()

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        """A stored blob in chunks, as ``RegistryClient.open_blob`` streams one: ``put_blob`` takes
        either, so that a layer stored without its inflated tar is inflated without a download."""
        with open(self.root / blob_relpath(digest), "rb") as blob:
            yield iter(lambda: blob.read(CHUNK), b"")

    def put_bytes(self, digest: str, data: bytes) -> None:
        """Store small already-fetched bytes (a manifest) after checking their digest."""
        self.put_blob(digest, [data], expected_size=len(data))

    def put_blob(
        self,
        digest: str,
        chunks: Iterable[bytes],
        expected_size: int,
        compression: str | None = None,
        max_decoded_bytes: int | None = None,
        what: str = "",
        keep: bool = True,
    ) -> None:
        """Stream a blob into the store, verifying its size and digest before it is named.

        With ``compression`` ("gzip"/"zstd") the inflated tar is written alongside in the
        same pass; ``keep=False`` (only with ``compression``) writes the tar alone: the blob's
        bytes are hashed and inflated, never written, and a blob already stored stays. Bytes that
        do not match the digest are DATA_LOSS even when they also fail to inflate: the inflate's own error (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED past
        ``max_decoded_bytes``) is raised only for the digest's bytes. ``what`` names the blob in
        error messages (reference and layer).
        """
        what = what or digest
        assert keep or compression, "a blob neither kept nor inflated would store nothing"
        hexpart = digest_hex(digest)
        tmp = self.root / "tmp"
        suffix = f"{hexpart}.{os.getpid()}.{threading.get_ident()}"
        raw_tmp = tmp / f"blob-{suffix}"
        dec_tmp = tmp / f"layer-{suffix}.tar"
        hasher = hashlib.sha256()
        received = decoded = 0
        undecodable: Exception | None = None  # the inflater's error, raised once the digest matches
        try:
            with contextlib.ExitStack() as stack:
                raw = stack.enter_context(_open_write_behind(raw_tmp)) if keep else None
                inflater = None
                if compression:
                    out = stack.enter_context(_open_write_behind(dec_tmp))
                    inflater = _Inflater(compression, out, max_decoded_bytes, what)
                try:
                    for chunk in chunks:
                        received += len(chunk)
                        if received > expected_size:
                            raise errors.DataLoss(
                                f"{what}: the registry sent more than the {expected_size} bytes the manifest "
                                "declares; the registry or artifact is corrupt, push it again"
                            )
                        hasher.update(chunk)
                        if raw is not None:
                            raw.write(chunk)
                        if inflater is not None:
                            inflater.feed(chunk)
                except BaseException:
                    if inflater is not None:
                        inflater.abort()
                    raise
                if inflater is not None:
                    try:
                        decoded = inflater.close()
                    except Exception as exc:  # noqa: BLE001 - raised below, unless the digest says DATA_LOSS
                        undecodable = exc
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest or received != expected_size:
                raise errors.DataLoss(
                    f"{what}: content does not match its digest (got {actual}, {received} bytes; "
                    f"expected {expected_size} bytes); the registry served corrupt data, push the artifact again"
                )
            if undecodable is not None:
                raise undecodable
            if compression:
                commit_file(dec_tmp, self.root / decoded_relpath(digest))
            if keep:
                commit_file(raw_tmp, self.root / blob_relpath(digest))
        except INFLATE_ERRORS as exc:
            raise errors.InvalidArgument(
                f"{what}: the layer is not valid {compression} data ({exc}); the artifact is broken, push it again"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.ResourceExhausted(
                    f"{what}: no space left in the driver's state dir {self.root}; free disk space or "
                    "lower the cache size"
                ) from None
            raise
        finally:
            for leftover in (raw_tmp, dec_tmp):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        with self._db() as db:  # an upsert: what an earlier put stored (the blob, or its tar) is still there
            db.execute(
                "INSERT INTO blobs (digest, size, decoded_size, fetched_at, kept) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET size = excluded.size, fetched_at = excluded.fetched_at, "
                "decoded_size = COALESCE(excluded.decoded_size, decoded_size), kept = MAX(kept, excluded.kept)",
                (digest, received, decoded if compression else None, time.time(), int(keep)),
            )

    # -- trees ------------------------------------------------------------------------

    def committed(self, digest: str) -> bool:
        """Whether the digest's tree is committed under the current layout rules: what a new publish may use."""
        return self.layout(digest) == LAYOUT_VERSION

    def layout(self, digest: str) -> int | None:
        """The ``LAYOUT_VERSION`` the digest's tree was built under; None when no tree is recorded.

        A tree of an older version is still served to the volumes bound to it, and rebuilt for new ones.
        """
        row = self._conn().execute("SELECT layout FROM trees WHERE digest = ?", (digest,)).fetchone()
        return row[0] if row else None

    def commit_tree(
        self,
        digest: str,
        entries: Sequence[Entry],
        private: bool = False,
        blobs: Sequence[str] = (),
        layout: int = LAYOUT_VERSION,
    ) -> None:
        """Record a complete tree; from now on views may serve it.

        ``private``: it was pulled with credentials, so other pods must prove access.
        ``blobs``: every blob the tree needs (index, manifest, layers), kept while it lives.
        ``layout``: the rules it was built under; only tests record an older one, as an earlier
        release did.
        """
        now = time.time()
        size = sum(e.size for e in entries if e.kind is Kind.FILE)
        with self._db() as db:
            db.execute("DELETE FROM listings WHERE tree = ?", (digest,))
            db.execute("DELETE FROM entries WHERE tree = ?", (digest,))
            db.executemany(
                "INSERT INTO listings VALUES (?, ?, ?)",
                ((digest, part, marshal.dumps(_as_rows(chunk))) for part, chunk in enumerate(_listing_parts(entries))),
            )
            db.executemany("INSERT OR IGNORE INTO tree_blobs VALUES (?, ?)", ((digest, b) for b in blobs))
            db.execute(
                "INSERT OR REPLACE INTO trees (digest, committed_at, last_used, entries, bytes, private, layout) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (digest, now, now, len(entries), size, int(private), layout),
            )

    def usage(self, digest: str) -> tuple[int, int]:
        """(bytes of regular files, number of entries) of a committed tree; (0, 0) if unknown."""
        row = self._conn().execute("SELECT bytes, entries FROM trees WHERE digest = ?", (digest,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def private(self, digest: str) -> bool:
        row = self._conn().execute("SELECT private FROM trees WHERE digest = ?", (digest,)).fetchone()
        return bool(row and row[0])

    def load_tree(self, digest: str) -> list[Entry]:
        """The entries of a tree in the order they were committed (parents first)."""
        conn = self._conn()
        parts = conn.execute("SELECT entries FROM listings WHERE tree = ? ORDER BY part", (digest,)).fetchall()
        if parts:
            entries: list[Entry] = []
            for (packed,) in parts:
                entries += _as_entries(marshal.loads(packed))
            return entries
        rows = conn.execute(_LEGACY_ROWS + " ORDER BY path", (digest,)).fetchall()  # committed by an earlier version
        return list(_as_entries(rows))

    def tree_root(self, digest: str) -> tuple[Entry, int] | None:
        """The root entry of a committed tree and its number of entries (None if it is not
        committed), without reading the whole listing: the view answers a publish's lookup with
        it and indexes the rest in the background."""
        conn = self._conn()
        row = conn.execute("SELECT entries FROM trees WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        part = conn.execute("SELECT entries FROM listings WHERE tree = ? AND part = 0", (digest,)).fetchone()
        rows = marshal.loads(part[0])[:1] if part else conn.execute(_LEGACY_ROWS + " AND path = ''", (digest,)).fetchall()
        return next((entry for entry in _as_entries(rows) if entry.path == ""), ROOT), row[0]

    def committed_digests(self) -> list[str]:
        return [d for (d,) in self._conn().execute("SELECT digest FROM trees ORDER BY digest")]

    def touch(self, digest: str) -> None:
        with self._db() as db:
            db.execute("UPDATE trees SET last_used = ? WHERE digest = ?", (time.time(), digest))

    # -- garbage collection -----------------------------------------------------------

    def trees_by_age(self) -> list[tuple[str, float]]:
        """(digest, last used) of every committed tree, least recently used first."""
        return list(self._conn().execute("SELECT digest, last_used FROM trees ORDER BY last_used, digest"))

    def stored_bytes(self) -> int:
        """Bytes of blobs and inflated layer tars on disk."""
        row = self._conn().execute(f"SELECT COALESCE(SUM({_STORED}), 0) FROM blobs").fetchone()
        return int(row[0])

    def remove_tree(self, digest: str) -> None:
        """Forget a tree: views stop offering it; its blobs go with the next ``remove_unused_blobs``."""
        with self._db() as db:
            for table, column in (
                ("trees", "digest"), ("listings", "tree"), ("entries", "tree"), ("tree_blobs", "tree"), ("resolutions", "digest"),
                ("verdicts", "digest"),
            ):  # fmt: skip
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (digest,))

    def remove_unused_blobs(self, older_than: float) -> int:
        """Delete blobs no tree needs that were fetched before ``older_than``; return bytes freed.

        The age limit protects a pull in flight, whose blobs are stored before its tree
        is committed. The rows go before the files, and flushed: a power loss in between
        leaves files no row needs (removed next time), never a tree whose blobs are gone.
        """
        with self._db(flushed=True) as db:
            rows = db.execute(
                f"SELECT digest, {_STORED} FROM blobs "
                "WHERE fetched_at < ? AND digest NOT IN (SELECT blob FROM tree_blobs)",
                (older_than,),
            ).fetchall()
            db.executemany("DELETE FROM blobs WHERE digest = ?", ((d,) for d, _ in rows))
        for digest, _ in rows:  # both names, whatever the row says: older versions could lose decoded_size
            for rel in (blob_relpath(digest), decoded_relpath(digest)):
                (self.root / rel).unlink(missing_ok=True)
        return sum(size for _, size in rows)

    # -- resolutions ------------------------------------------------------------------

    def record_resolution(self, reference: str, platform: str, digest: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO resolutions VALUES (?, ?, ?, ?)", (reference, platform, digest, time.time())
            )

    def resolution(self, reference: str, platform: str) -> str | None:
        row = self._conn().execute(
            "SELECT digest FROM resolutions WHERE reference = ? AND platform = ?", (reference, platform)
        ).fetchone()
        return row[0] if row else None

    # -- verdicts ---------------------------------------------------------------------

    def record_verdict(
        self, digest: str, repository: str, policy: str, allowed: bool, verdict: dict, expires: float | None
    ) -> None:
        """Remember the policy's verdict on the tree ``digest`` named in ``repository``
        (``registry/repository``); ``verdict`` is its JSON account, ``expires`` None for good."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (digest, repository, policy, int(allowed), json.dumps(verdict), time.time(), expires),
            )

    def verdict(self, digest: str, repository: str, policy: str) -> dict | None:
        """The verdict recorded for this tree, repository and policy, unless it has expired."""
        row = self._conn().execute(
            "SELECT verdict, expires FROM verdicts WHERE digest = ? AND repository = ? AND policy = ?",
            (digest, repository, policy),
        ).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return json.loads(row[0])

    def latest_verdict(self, digest: str, repository: str) -> dict | None:
        """The last verdict recorded for this tree and repository, under whichever policy
        (``inspect`` shows it; it never decides anything)."""
        row = self._conn().execute(
            "SELECT verdict FROM verdicts WHERE digest = ? AND repository = ? ORDER BY verified_at DESC LIMIT 1",
            (digest, repository),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def tree_blobs(self, digest: str) -> list[tuple[str, int]]:
        """(digest, size) of the blobs a committed tree needs that are stored as they were served: its
        index, manifest and layers, but not a layer kept only as its tar (``read_blob`` reads each)."""
        return list(
            self._conn().execute(
                "SELECT tree_blobs.blob, blobs.size FROM tree_blobs JOIN blobs ON blobs.digest = tree_blobs.blob "
                "WHERE tree_blobs.tree = ? AND blobs.kept ORDER BY tree_blobs.blob",
                (digest,),
            )
        )

    def references(self) -> dict[str, list[str]]:
        """Digest → the references this node last resolved to it, sorted (``cache ls``)."""
        found: dict[str, list[str]] = {}
        for reference, digest in self._conn().execute(
            "SELECT DISTINCT reference, digest FROM resolutions ORDER BY reference"
        ):
            found.setdefault(digest, []).append(reference)
        return found

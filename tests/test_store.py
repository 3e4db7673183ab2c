"""The content store: verification before naming, inflating in one pass, single flight."""

from __future__ import annotations

import gzip
import hashlib
import io
import marshal
import os
import sqlite3
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from csi_driver import errors
from csi_driver.content import store as store_module
from csi_driver.content.inflate import PIECE, Decoder
from csi_driver.content.store import Store
from csi_driver.layout.tree import LAYOUT_VERSION, blob_relpath, decoded_relpath, ROOT, Entry, Kind


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def a_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


def leftovers(store: Store) -> list[Path]:
    return list((store.root / "tmp").iterdir())


def test_verified_blob_is_stored_under_its_digest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"some manifest bytes"
    store.put_blob(digest_of(data), chunks(data), expected_size=len(data))
    assert store.read_blob(digest_of(data)) == data
    assert leftovers(store) == []


def test_wrong_digest_is_data_loss_and_nothing_is_named(tmp_path: Path) -> None:
    store = Store(tmp_path)
    claimed = digest_of(b"what the manifest promised")
    with pytest.raises(errors.DataLoss, match="does not match its digest"):
        store.put_blob(claimed, [b"what the registry sent!!!!"], expected_size=26)
    assert not store.has_blob(claimed)
    assert leftovers(store) == []


def test_more_bytes_than_declared_is_data_loss(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"0123456789"
    with pytest.raises(errors.DataLoss, match="more than the 5 bytes"):
        store.put_blob(digest_of(data), chunks(data), expected_size=5)
    assert leftovers(store) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layer_is_inflated_in_the_same_pass(tmp_path: Path, compression: str) -> None:
    store = Store(tmp_path)
    tar = a_tar()
    blob = gzip.compress(tar) if compression == "gzip" else zstandard.ZstdCompressor().compress(tar)
    store.put_blob(digest_of(blob), chunks(blob, 100), expected_size=len(blob), compression=compression)
    assert (tmp_path / blob_relpath(digest_of(blob))).read_bytes() == blob
    assert (tmp_path / decoded_relpath(digest_of(blob))).read_bytes() == tar


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_layer_is_kept_once_as_its_tar(tmp_path: Path, compression: str) -> None:
    """``keep=False``: the compressed bytes are hashed and inflated, never written anywhere, and the
    row says the layer was verified and is stored as its tar alone (its bytes counted once)."""
    store = Store(tmp_path)
    tar = a_tar()
    blob = gzip.compress(tar) if compression == "gzip" else zstandard.ZstdCompressor().compress(tar)
    digest = digest_of(blob)
    store.put_blob(digest, chunks(blob, 100), expected_size=len(blob), compression=compression, keep=False)
    assert not (tmp_path / blob_relpath(digest)).exists() and not store.has_blob(digest)
    assert (tmp_path / decoded_relpath(digest)).read_bytes() == tar and store.has_blob(digest, decoded=True)
    assert store.stored_bytes() == len(tar)
    assert leftovers(store) == []
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT size, decoded_size, kept FROM blobs WHERE digest = ?", (digest,)).fetchone() == (
            len(blob), len(tar), 0)


def test_a_layer_kept_as_its_tar_that_does_not_match_its_digest_names_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    blob = gzip.compress(a_tar())
    claimed = digest_of(blob + b"!")
    with pytest.raises(errors.DataLoss, match="does not match its digest"):
        store.put_blob(claimed, [blob], expected_size=len(blob), compression="gzip", keep=False)
    assert not store.has_blob(claimed, decoded=True) and not (tmp_path / decoded_relpath(claimed)).exists()
    assert leftovers(store) == [] and store.stored_bytes() == 0


def test_a_blob_stored_as_its_tar_and_then_as_served_keeps_both_facts(tmp_path: Path) -> None:
    """One digest, two uses: an image's layer (its tar only) and another artifact's file (the blob
    itself, rule 4). Whichever comes second, the row keeps what the first stored, so a later pull
    of either finds what it needs, and the bytes on the disk are counted as they are."""
    tar = a_tar()
    blob = gzip.compress(tar)
    digest = digest_of(blob)
    for first, second in (({"compression": "gzip", "keep": False}, {}), ({}, {"compression": "gzip", "keep": False})):
        store = Store(tmp_path / str(len(first)))
        store.put_blob(digest, [blob], expected_size=len(blob), **first)
        store.put_blob(digest, [blob], expected_size=len(blob), **second)
        assert store.read_blob(digest) == blob and store.has_blob(digest)
        assert (store.root / decoded_relpath(digest)).read_bytes() == tar and store.has_blob(digest, decoded=True)
        assert store.stored_bytes() == len(blob) + len(tar)


def test_collecting_a_layer_kept_as_its_tar_removes_the_tar_and_frees_what_it_held(tmp_path: Path) -> None:
    store = Store(tmp_path)
    tar = a_tar()
    blob = gzip.compress(tar)
    store.put_blob(digest_of(blob), [blob], expected_size=len(blob), compression="gzip", keep=False)
    assert store.remove_unused_blobs(older_than=time.time() + 1) == len(tar)
    assert list((tmp_path / "layers" / "sha256").iterdir()) == [] and store.stored_bytes() == 0


def test_a_layer_tar_renamed_into_place_whose_row_was_never_written_counts_as_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the rename and the row leaves a tar the store does not know: it is not
    taken as stored (nothing would ever collect or count it), and the next put stores it whole."""
    store = Store(tmp_path)
    tar = a_tar()
    blob = gzip.compress(tar)
    digest = digest_of(blob)
    monkeypatch.setattr(Store, "_db", lambda self, flushed=False: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        store.put_blob(digest, [blob], expected_size=len(blob), compression="gzip", keep=False)
    monkeypatch.undo()
    assert (tmp_path / decoded_relpath(digest)).is_file() and not store.has_blob(digest, decoded=True)
    store.put_blob(digest, [blob], expected_size=len(blob), compression="gzip", keep=False)
    assert store.has_blob(digest, decoded=True) and store.stored_bytes() == len(tar)


def test_a_store_db_from_before_kept_reads_every_blob_as_kept(tmp_path: Path) -> None:
    """An upgraded node: its rows have no ``kept``, and each blob and tar is still on the disk."""
    tar = a_tar()
    blob = gzip.compress(tar)
    digest = digest_of(blob)
    for rel, data in ((blob_relpath(digest), blob), (decoded_relpath(digest), tar)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, decoded_size INTEGER, "
                   "fetched_at REAL NOT NULL)")  # fmt: skip
        db.execute("INSERT INTO blobs VALUES (?, ?, ?, ?)", (digest, len(blob), len(tar), 1.0))
    store = Store(tmp_path)
    assert store.has_blob(digest) and store.has_blob(digest, decoded=True)
    assert store.read_blob(digest) == blob and store.stored_bytes() == len(blob) + len(tar)
    assert store.remove_unused_blobs(older_than=2.0) == len(blob) + len(tar)
    assert not (tmp_path / blob_relpath(digest)).exists() and not (tmp_path / decoded_relpath(digest)).exists()


def test_concatenated_gzip_members_inflate_whole(tmp_path: Path) -> None:
    store = Store(tmp_path)
    tar = a_tar()
    blob = gzip.compress(tar[:700]) + gzip.compress(tar[700:])
    store.put_blob(digest_of(blob), [blob], expected_size=len(blob), compression="gzip")
    assert (tmp_path / decoded_relpath(digest_of(blob))).read_bytes() == tar


def test_gzip_bomb_stops_at_the_unpacked_limit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    blob = gzip.compress(b"\0" * (4 << 20))
    with pytest.raises(errors.ResourceExhausted, match="--max-unpacked-bytes"):
        store.put_blob(digest_of(blob), chunks(blob, 4096), len(blob), compression="gzip", max_decoded_bytes=1 << 20)
    assert leftovers(store) == []
    assert not store.has_blob(digest_of(blob))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_inflating_holds_one_bounded_piece_at_a_time_whatever_the_ratio(compression: str) -> None:
    """A 1 MiB chunk of gzip can be a gigabyte of zeros: memory must not follow the ratio
    (bench/RESULTS.md measured 2 GB of RSS before this held)."""
    zeros = bytes(256 << 20)
    blob = gzip.compress(zeros, 9) if compression == "gzip" else zstandard.ZstdCompressor().compress(zeros)
    blob += blob  # two members/frames
    sizes: list[int] = []

    def emit(piece: bytes) -> None:
        assert not piece.strip(b"\0")
        sizes.append(len(piece))

    decoder = Decoder(compression, emit)
    for chunk in chunks(blob, 1 << 20):
        decoder.feed(chunk)
    decoder.finish()
    assert sum(sizes) == 2 * len(zeros)
    assert max(sizes) <= PIECE


@pytest.mark.parametrize("cut", [1, 5, 200, -1, -4, -5])
def test_a_zstd_stream_cut_anywhere_inside_a_frame_is_an_error(cut: int) -> None:
    """Cut in a frame header, a block, or its checksum; the stream writer alone would not notice."""
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(a_tar() + os.urandom(4096))
    assert len(frame) > 1000
    whole = frame + frame
    decoder = Decoder("zstd", lambda piece: None)
    decoder.feed(whole[: len(frame) + cut] if cut > 0 else whole[:cut])
    with pytest.raises(zstandard.ZstdError, match="truncated"):
        decoder.finish()


def test_zstd_skippable_frames_and_frames_without_checksums_are_followed() -> None:
    skippable = (0x184D2A5A).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    plain = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compress(a_tar())
    out: list[bytes] = []
    decoder = Decoder("zstd", out.append)
    for chunk in chunks(skippable + plain + skippable, 3):
        decoder.feed(chunk)
    decoder.finish()
    assert b"".join(out) == a_tar()


def test_concatenated_zstd_frames_inflate_whole(tmp_path: Path) -> None:
    store = Store(tmp_path)
    tar = a_tar()
    blob = zstandard.ZstdCompressor().compress(tar[:700]) + zstandard.ZstdCompressor().compress(tar[700:])
    store.put_blob(digest_of(blob), chunks(blob, 333), expected_size=len(blob), compression="zstd")
    assert (tmp_path / decoded_relpath(digest_of(blob))).read_bytes() == tar


def test_corrupt_gzip_is_invalid_argument(tmp_path: Path) -> None:
    store = Store(tmp_path)
    blob = b"definitely not gzip"
    with pytest.raises(errors.InvalidArgument, match="not valid gzip"):
        store.put_blob(digest_of(blob), [blob], expected_size=len(blob), compression="gzip")
    assert not store.has_blob(digest_of(blob)) and not store.has_blob(digest_of(blob), decoded=True)
    assert leftovers(store) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("size", [19, 3 << 20], ids=["one_chunk", "many_chunks"])
def test_bytes_that_neither_inflate_nor_match_their_digest_are_data_loss(tmp_path: Path, compression: str,
                                                                        size: int) -> None:  # fmt: skip
    """The digest is the stronger fact: the bytes are not the layer, whatever they inflate to."""
    store = Store(tmp_path)
    claimed = digest_of(b"the layer the manifest names")
    sent = os.urandom(size)
    with pytest.raises(errors.DataLoss, match="does not match its digest"):
        store.put_blob(claimed, chunks(sent, 1 << 20), expected_size=size, compression=compression)
    assert not store.has_blob(claimed) and not store.has_blob(claimed, decoded=True)
    assert leftovers(store) == []


def test_more_bytes_than_declared_that_do_not_inflate_either_is_data_loss(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sent = b"not gzip at all" * 100
    with pytest.raises(errors.DataLoss, match="more than the 100 bytes"):
        store.put_blob(digest_of(sent), chunks(sent, 10), expected_size=100, compression="gzip")
    assert leftovers(store) == []


def test_a_download_that_breaks_after_bytes_that_do_not_inflate_reports_the_break(tmp_path: Path) -> None:
    """A blob not read whole has no known digest, so its inflate error is not the verdict yet."""
    store = Store(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"not gzip at all"
        time.sleep(0.1)  # the inflater has failed on the first chunk by now
        raise errors.Unavailable("the registry broke off")

    with pytest.raises(errors.Unavailable, match="broke off"):
        store.put_blob(digest_of(b"x"), broken(), expected_size=100, compression="gzip")
    assert leftovers(store) == []


def test_gzip_bomb_that_does_not_match_its_digest_is_data_loss(tmp_path: Path) -> None:
    store = Store(tmp_path)
    bomb = gzip.compress(b"\0" * (4 << 20))
    claimed = digest_of(b"the layer the manifest names")
    with pytest.raises(errors.DataLoss, match="does not match its digest"):
        store.put_blob(claimed, chunks(bomb, 4096), len(bomb), compression="gzip", max_decoded_bytes=1 << 20)
    assert not store.has_blob(claimed) and not store.has_blob(claimed, decoded=True)
    assert leftovers(store) == []


def test_gzip_member_whose_crc_or_size_is_wrong_is_invalid_argument(tmp_path: Path) -> None:
    """The blob's sha256 only proves it is what was pushed; gzip's own trailer proves the inflate."""
    store = Store(tmp_path)
    good = gzip.compress(a_tar(), mtime=0)
    for blob in (good[:-8] + bytes(4) + good[-4:], good[:-4] + bytes(4)):
        with pytest.raises(errors.InvalidArgument, match="not valid gzip"):
            store.put_blob(digest_of(blob), chunks(blob, 300), expected_size=len(blob), compression="gzip")
    assert leftovers(store) == []


def test_tree_is_complete_only_once_committed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = digest_of(b"manifest")
    assert not store.committed(digest)
    entries = [
        Entry("", Kind.DIR, 0o755),
        Entry("a", Kind.DIR, 0o700, uid=1000),
        Entry("a/f", Kind.FILE, 0o644, size=5, source="layers/sha256/x.tar", offset=512),
        Entry("a/l", Kind.SYMLINK, 0o777, link="/etc/hostname"),
    ]
    store.commit_tree(digest, entries)
    assert store.committed(digest)
    assert store.load_tree(digest) == entries
    assert store.committed_digests() == [digest]


def test_a_tree_of_many_listing_parts_loads_whole_and_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "LISTING_PART", 3)
    store = Store(tmp_path)
    digest = digest_of(b"big manifest")
    entries = [Entry("", Kind.DIR, 0o755)] + [Entry(f"f{i:02d}", Kind.FILE, 0o644, size=i) for i in range(10)]
    store.commit_tree(digest, entries)
    assert store.load_tree(digest) == entries
    store.commit_tree(digest, entries[:4])  # committed again (a repaired tree): the old parts go
    assert store.load_tree(digest) == entries[:4]


def test_tree_root_answers_from_the_first_part_with_the_entry_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The FUSE view answers a publish's lookup with the root entry alone, before indexing the tree."""
    monkeypatch.setattr(store_module, "LISTING_PART", 2)
    store = Store(tmp_path)
    digest, rootless = digest_of(b"manifest"), digest_of(b"rootless manifest")
    root = Entry("", Kind.DIR, 0o700, uid=5, mtime=9)
    store.commit_tree(digest, [root] + [Entry(f"f{i}", Kind.FILE, 0o644) for i in range(5)])
    store.commit_tree(rootless, [Entry("f", Kind.FILE, 0o644)])
    assert store.tree_root(digest) == (root, 6)
    assert store.tree_root(rootless) == (ROOT, 1)  # the view shows a root all the same
    assert store.tree_root(digest_of(b"never committed")) is None


def test_tree_root_unpacks_one_entry_the_root_alone_in_the_first_part(tmp_path: Path) -> None:
    """The view's answer to a publish's lookup unpacks the root, not a part of 4,096 entries;
    listings stored with the root in a full first part (earlier versions) answer the same."""
    store = Store(tmp_path)
    digest, older = digest_of(b"manifest"), digest_of(b"older manifest")
    entries = [Entry("", Kind.DIR, 0o750)] + [Entry(f"f{i}", Kind.FILE, 0o644, size=i) for i in range(5)]
    store.commit_tree(digest, entries)
    db = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    parts = db.execute("SELECT part, entries FROM listings WHERE tree = ? ORDER BY part", (digest,)).fetchall()
    assert [len(marshal.loads(packed)) for _, packed in parts] == [1, 5]
    db.execute("INSERT INTO listings VALUES (?, 0, ?)", (older, marshal.dumps([tuple(entry) for entry in entries])))
    db.execute("INSERT INTO trees (digest, committed_at, last_used, entries, bytes, private) VALUES (?, 0, 0, 6, 10, 0)", (older,))
    assert store.tree_root(digest) == store.tree_root(older) == (entries[0], 6)
    assert store.load_tree(digest) == store.load_tree(older) == entries


def test_trees_committed_by_earlier_versions_as_entry_rows_still_load_and_remove(tmp_path: Path) -> None:
    """A DaemonSet upgrade keeps the state dir: trees stored a row per entry must still serve."""
    store = Store(tmp_path)
    digest = digest_of(b"old manifest")
    rows = [("", "dir", 0o755, 0, 0, 0, 0, "", "", 0), ("f", "file", 0o644, 1, 2, 3, 5, "", "layers/sha256/x.tar", 512)]
    db = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [(digest, *row) for row in rows])
    db.execute("INSERT INTO trees (digest, committed_at, last_used, entries, bytes, private) VALUES (?, 0, 0, 2, 5, 0)", (digest,))
    assert store.load_tree(digest) == [Entry("", Kind.DIR, 0o755), Entry("f", Kind.FILE, 0o644, 1, 2, 3, 5, "", "layers/sha256/x.tar", 512)]
    assert store.tree_root(digest) == (Entry("", Kind.DIR, 0o755), 2)
    store.remove_tree(digest)
    assert store.load_tree(digest) == []
    assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (0,)


def test_resolutions_remember_reference_and_platform(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.record_resolution("r.example/a:v1", "linux/amd64", "sha256:" + "1" * 64)
    assert store.resolution("r.example/a:v1", "linux/amd64") == "sha256:" + "1" * 64
    assert store.resolution("r.example/a:v1", "linux/arm64") is None


def test_single_flight_serialises_one_digest_not_others(tmp_path: Path) -> None:
    store = Store(tmp_path)
    inside: list[str] = []
    overlap = threading.Event()

    def work(digest: str) -> None:
        with store.single_flight(digest):
            inside.append(digest)
            if len(inside) > 1 and inside[-2] != digest:
                overlap.set()
            time.sleep(0.05)
            inside.remove(digest)

    threads = [threading.Thread(target=work, args=(d,)) for d in ("sha256:a", "sha256:a", "sha256:b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap.is_set()
    assert store._flights == {}


OLD_TREES = """CREATE TABLE trees (digest TEXT PRIMARY KEY, committed_at REAL NOT NULL, last_used REAL NOT NULL,
    entries INTEGER NOT NULL, bytes INTEGER NOT NULL, private INTEGER NOT NULL)"""
"""The ``trees`` table as releases before layout versions created it."""


def test_a_store_db_from_before_layout_versions_opens_and_its_trees_are_version_1(tmp_path: Path) -> None:
    """A node upgraded in place keeps its state dir: its trees still load, for the volumes that show
    them, but are not committed for a new publish, which rebuilds them."""
    digest = digest_of(b"old manifest")
    old = [("", "dir", 0o755, 0, 0, 7, 0, "", "", 0), ("plugin.tar.gz", "file", 0o644, 0, 0, 9, 5, "", "blobs/sha256/x", 0)]
    db = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    db.execute(OLD_TREES)
    db.execute("CREATE TABLE listings (tree TEXT NOT NULL, part INTEGER NOT NULL, entries BLOB NOT NULL, PRIMARY KEY (tree, part))")
    db.execute("INSERT INTO trees VALUES (?, 0, 0, 2, 5, 0)", (digest,))
    db.execute("INSERT INTO listings VALUES (?, 0, ?)", (digest, marshal.dumps(old)))
    db.close()
    store = Store(tmp_path)
    assert store.layout(digest) == 1 and not store.committed(digest)
    assert store.load_tree(digest) == [Entry(*row) for row in old]  # no mtime_nsec stored: 0
    assert store.committed_digests() == [digest]
    rebuilt = [Entry("", Kind.DIR, 0o755, mtime=7, mtime_nsec=5), Entry("plugin", Kind.DIR, 0o755)]
    store.commit_tree(digest, rebuilt)
    assert store.layout(digest) == LAYOUT_VERSION and store.committed(digest)
    assert store.load_tree(digest) == rebuilt
    assert Store(tmp_path).committed(digest)  # opened again: nothing to migrate


def test_a_tree_committed_under_an_older_layout_version_is_recorded_but_not_committed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = digest_of(b"manifest")
    store.commit_tree(digest, [ROOT], layout=LAYOUT_VERSION - 1)
    assert store.layout(digest) == LAYOUT_VERSION - 1 and not store.committed(digest)
    assert store.tree_root(digest) == (ROOT, 1)
    assert store.layout(digest_of(b"never committed")) is None

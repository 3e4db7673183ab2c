"""bind.materialize: the tree on disk is exactly the entries layout produced."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import zstandard

from csi_driver import errors
from csi_driver.content.store import Store
from csi_driver.layout.rules import TITLE, Layer, Limits, build_tree, compression, depth_first, tar_path
from csi_driver.layout.tree import LAYOUT_VERSION, blob_relpath, Entry, Kind
from csi_driver.views import bind
from csi_driver.views.bind import materialize, tree_dir

DIGEST = "sha256:" + "5" * 64
NOBODY = 65534


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
    link: str = "", uid: int = 0, gid: int = 0, mtime: int = 1700000000,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname = kind, len(data), mode, link
    info.uid, info.gid, info.mtime = uid, gid, mtime
    return info, data


def put_layer(state: Path, members: list[tuple[tarfile.TarInfo, bytes]], media_type: str) -> Layer:
    """Lay a tar out as the store does: the blob, plus the decoded tar when compressed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    encode = {"gzip": gzip.compress, "zstd": zstandard.compress}.get(compression(media_type), bytes)
    blob = encode(raw)
    layer = put_blob(state, blob, media_type, {})
    (state / tar_path(layer)).parent.mkdir(parents=True, exist_ok=True)
    (state / tar_path(layer)).write_bytes(raw)
    return layer


def put_blob(state: Path, data: bytes, media_type: str, annotations: dict[str, str]) -> Layer:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (state / blob_relpath(digest)).parent.mkdir(parents=True, exist_ok=True)
    (state / blob_relpath(digest)).write_bytes(data)
    return Layer(digest, media_type, annotations, len(data))


def sample_entries(state: Path, owner: int | None = None) -> list[Entry]:
    """A tree with every kind of entry, odd modes and owners, from three kinds of layer."""
    big = os.urandom(3 << 20)
    layers = [
        put_layer(state, [
            member("./", tarfile.DIRTYPE, mode=0o755, mtime=1600000000),
            member("bin", tarfile.DIRTYPE, mode=0o750, uid=1, gid=2),
            member("bin/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=3, gid=4),
            member("bin/sh", tarfile.SYMTYPE, mode=0o777, link="/bin/busybox"),
            member("lib", tarfile.SYMTYPE, mode=0o777, link="usr/lib", uid=5),
            member("usr/lib/big.so", data=big, mode=0o444),
            member("usr/lib/empty", mode=0o600),
            member("usr/lib/hard", tarfile.LNKTYPE, link="usr/lib/big.so"),
            member("ro", tarfile.DIRTYPE, mode=0o555),
            member("ro/inner", tarfile.DIRTYPE, mode=0o500),
            member("ro/inner/secret", data=b"s", mode=0o400),
            member("zz/secret-link", tarfile.LNKTYPE, link="ro/inner/secret"),  # its target's dir is finished first
            member("wo", tarfile.DIRTYPE, mode=0o300),  # unreadable (searchable): a link still reaches into it
            member("wo/blind", data=b"b", mode=0o644),
            member("zz/blind-link", tarfile.LNKTYPE, link="wo/blind"),
            member("tmp", tarfile.DIRTYPE, mode=0o1777, mtime=5),
            member("dev/null", tarfile.CHRTYPE),
            member("d" * 120 + "/" + "f" * 120, data=b"long"),
        ], "application/vnd.oci.image.layer.v1.tar+gzip"),
        put_layer(state, [member("etc/os-release", data=b"ID=test\n", mode=0o640)],
                  "application/vnd.oci.image.layer.v1.tar+zstd"),
        put_blob(state, b"notes\n", "text/plain", {TITLE: "docs/notes.txt"}),
    ]
    entries = build_tree(state, layers, Limits())
    if owner is None:
        return entries
    # An unprivileged builder can only give files its own uid and gid.
    return [entry._replace(uid=owner, gid=owner) for entry in entries]


def walk(root: Path) -> Iterator[Entry]:
    """The tree on disk as entries, without the store references."""
    for current, dirs, files in os.walk(root):
        for name in ["", *dirs, *files] if current == str(root) else [*dirs, *files]:
            path = os.path.join(current, name) if name else current
            st = os.lstat(path)
            relative = os.path.relpath(path, root) if name else ""
            kind = (Kind.DIR if stat.S_ISDIR(st.st_mode)
                    else Kind.SYMLINK if stat.S_ISLNK(st.st_mode) else Kind.FILE)
            yield Entry(
                path=relative, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                gid=st.st_gid, mtime=int(st.st_mtime), size=st.st_size if kind is Kind.FILE else 0,
                link=os.readlink(path) if kind is Kind.SYMLINK else "",
            )


def assert_matches(state: Path, root: Path, entries: Sequence[Entry]) -> None:
    on_disk = {entry.path: entry for entry in walk(root)}
    assert on_disk == {entry.path: entry._replace(source="", offset=0) for entry in entries}
    for entry in entries:
        if entry.kind is Kind.FILE:
            with open(state / entry.source, "rb") as source:
                source.seek(entry.offset)
                assert (root / entry.path).read_bytes() == source.read(entry.size), entry.path


def test_tree_dir_is_per_manifest_digest_and_layout_version(tmp_path: Path) -> None:
    """Version 1 extractions stay where releases before layout versions made them."""
    assert tree_dir(tmp_path, DIGEST, 1) == tmp_path / "trees" / "sha256" / ("5" * 64)
    assert tree_dir(tmp_path, DIGEST) == tmp_path / "trees" / f"v{LAYOUT_VERSION}" / "sha256" / ("5" * 64)


def test_materialized_tree_matches_its_entries(tmp_path: Path) -> None:
    entries = sample_entries(tmp_path)
    root = materialize(tmp_path, DIGEST, entries)
    assert root == tree_dir(tmp_path, DIGEST)
    assert_matches(tmp_path, root, entries)
    assert stat.S_IMODE(os.lstat(root / "bin/tool").st_mode) == 0o755  # setuid dropped by layout
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, None], ids=["022", "077", "000", "unknown"])
def test_files_get_their_modes_and_owners_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int | None
) -> None:
    """A file is created with its final mode where the umask leaves it whole, and given it
    afterwards where not (or where the umask cannot be read); a foreign owner, always."""
    entries = sample_entries(tmp_path)
    blob = next(entry for entry in entries if entry.path == "docs/notes.txt")  # never a hardlink: a whole blob
    entries += [
        blob._replace(path="group-writable", mode=0o664),
        blob._replace(path="world-writable", mode=0o666, uid=NOBODY, gid=NOBODY),
        blob._replace(path="sticky", mode=0o1644),
    ]
    entries.sort(key=depth_first)
    monkeypatch.setattr(bind, "_umask", lambda: umask)
    previous = os.umask(0o022 if umask is None else umask)
    try:
        root = materialize(tmp_path, DIGEST, entries)
    finally:
        os.umask(previous)
    assert_matches(tmp_path, root, entries)


def test_read_only_directories_with_children_work_without_privileges() -> None:
    """Root ignores permission bits, so build as nobody: read-only dirs must still fill up."""
    state = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        entries = sample_entries(state, owner=NOBODY)
        for path in [state, *state.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                materialize(state, DIGEST, entries)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert_matches(state, tree_dir(state, DIGEST), entries)
    finally:
        shutil.rmtree(state)


def test_hardlinks_are_one_inode_with_their_link_count(tmp_path: Path) -> None:
    """A layer's hardlinks are linked, not copied: one inode, ``st_nlink`` its number of names, as
    the other views show them, even when the first name's directory is finished (read-only) and
    in another directory; two titles of one blob (an ORAS file, not a hardlink) stay two files."""
    entries = sample_entries(tmp_path)
    notes = next(entry for entry in entries if entry.path == "docs/notes.txt")
    entries.append(notes._replace(path="docs/again.txt"))
    root = materialize(tmp_path, DIGEST, entries)
    assert_matches(tmp_path, root, entries)
    big, hard = os.lstat(root / "usr/lib/big.so"), os.lstat(root / "usr/lib/hard")
    assert (hard.st_ino, hard.st_nlink, big.st_nlink) == (big.st_ino, 2, 2)
    secret, link = os.lstat(root / "ro/inner/secret"), os.lstat(root / "zz/secret-link")
    assert (link.st_ino, link.st_nlink) == (secret.st_ino, 2)
    again, first = os.lstat(root / "docs/again.txt"), os.lstat(root / "docs/notes.txt")
    assert again.st_ino != first.st_ino and (again.st_nlink, first.st_nlink) == (1, 1)


def test_the_budget_counts_a_hardlinked_file_once(tmp_path: Path) -> None:
    """The extracted tree holds one copy of a hardlinked file, and so does what it is counted as."""
    entries = sample_entries(tmp_path)
    store = Store(tmp_path)
    store.commit_tree(DIGEST, entries)
    view = bind.BindView(store)
    assert view.held_bytes(DIGEST) == 0  # not extracted yet
    view.path_for(DIGEST)
    on_disk = {(st.st_ino, st.st_size) for path in tree_dir(tmp_path, DIGEST).rglob("*")
               if stat.S_ISREG((st := path.lstat()).st_mode)}  # fmt: skip
    assert view.held_bytes(DIGEST) == sum(size for _, size in on_disk) == store.usage(DIGEST)[0] - (3 << 20) - 2  # big.so, secret, blind
    view.release(DIGEST)
    assert view.held_bytes(DIGEST) == 0


def test_materialize_is_idempotent(tmp_path: Path) -> None:
    entries = sample_entries(tmp_path)
    first = materialize(tmp_path, DIGEST, entries)
    marker = first / "marker"
    marker.write_text("kept")
    assert materialize(tmp_path, DIGEST, entries) == first
    assert marker.read_text() == "kept"
    assert os.listdir(tmp_path / "tmp") == []


def test_losing_a_race_keeps_the_winners_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = sample_entries(tmp_path)
    winner = tree_dir(tmp_path, DIGEST)

    build = bind._Builder.build

    def other_call_finishes_first(self: bind._Builder, entries: list[Entry]) -> None:
        build(self, entries)
        winner.mkdir(parents=True)
        (winner / "marker").write_text("winner")

    monkeypatch.setattr(bind._Builder, "build", other_call_finishes_first)
    assert materialize(tmp_path, DIGEST, entries) == winner
    assert (winner / "marker").read_text() == "winner"
    assert os.listdir(tmp_path / "tmp") == []


def test_copy_falls_back_when_copy_file_range_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*_args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    entries = sample_entries(tmp_path)
    assert_matches(tmp_path, materialize(tmp_path, DIGEST, entries), entries)


def test_failure_leaves_no_temp_dir(tmp_path: Path) -> None:
    entries = sample_entries(tmp_path)
    entries.append(Entry("zz-missing", Kind.FILE, 0o644, size=1, source="blobs/sha256/" + "0" * 64))
    with pytest.raises(FileNotFoundError):
        materialize(tmp_path, DIGEST, entries)
    assert os.listdir(tmp_path / "tmp") == []
    assert not tree_dir(tmp_path, DIGEST).exists()


def test_source_shorter_than_its_entry_is_data_loss(tmp_path: Path) -> None:
    entries = sample_entries(tmp_path)
    notes = next(entry for entry in entries if entry.path == "docs/notes.txt")
    entries[entries.index(notes)] = notes._replace(size=notes.size + 1)
    with pytest.raises(errors.DataLoss, match="docs/notes.txt"):
        materialize(tmp_path, DIGEST, entries)
    assert os.listdir(tmp_path / "tmp") == []


def test_full_disk_is_resource_exhausted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", disk_full)
    with pytest.raises(errors.ResourceExhausted, match="disk of the state dir .* is full"):
        materialize(tmp_path, DIGEST, sample_entries(tmp_path))
    assert os.listdir(tmp_path / "tmp") == []
    assert not tree_dir(tmp_path, DIGEST).exists()


def test_nothing_is_written_through_a_symlink_even_if_layout_let_one_by(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    state = tmp_path / "state"
    blob = put_blob(state, b"evil", "text/plain", {})
    entries = [
        Entry("", Kind.DIR, 0o755),
        Entry("link", Kind.SYMLINK, 0o777, link=str(outside)),
        Entry("link/x", Kind.FILE, 0o644, size=4, source=blob_relpath(blob.digest)),
    ]
    with pytest.raises(errors.Internal):
        materialize(state, DIGEST, entries)
    assert os.listdir(outside) == []
    assert os.listdir(state / "tmp") == []


def test_pax_mtimes_are_set_to_the_nanosecond(tmp_path: Path) -> None:
    from test_layout import OCI_TAR, TIMES, put_tar, timed_members

    root = materialize(tmp_path, DIGEST, build_tree(tmp_path, [put_tar(tmp_path, timed_members(), OCI_TAR, image=True)], Limits()))
    shown = {path: os.lstat(root / path).st_mtime_ns for path in TIMES}
    assert shown == {path: sec * 10**9 + nsec for path, (sec, nsec) in TIMES.items()}

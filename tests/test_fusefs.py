"""The FUSE view over a real mount: what a pod reads through ``<state>/view/<digest>/``.

A store is built by hand (a layer tar and raw blobs under the state dir, trees
committed as Entries), ``fusefs.run`` is started as its own process, as the node
runs it, and everything is checked from this process through the kernel.

Run inside a private mount namespace, so a crashed test leaks no mount:
``unshare -m --propagation private .venv/bin/python -m pytest tests/test_fusefs.py -q``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pyfuse3
import trio

from csi_driver.content.store import Store
from csi_driver.layout import rules
from csi_driver.layout.tree import LAYOUT_VERSION, Entry, Kind
from csi_driver.mounts import kernel
from csi_driver.views import fusefs
from csi_driver.views.fusefs import FS_TYPE, build_tree
from processes import stop
from propagation import assert_read_only



def in_private_mount_namespace() -> bool:
    """Our mount namespace is not pid 1's nor our parent's, and ``/`` propagates no mount out.

    pid 1's namespace link is unreadable in some containers; the parent's (the
    shell that ran pytest) still tells a shared namespace apart.
    """
    ours = os.readlink("/proc/self/ns/mnt")
    for other in ("/proc/1/ns/mnt", f"/proc/{os.getppid()}/ns/mnt"):
        try:
            if os.readlink(other) == ours:
                return False
        except PermissionError:
            continue
    root = next(line.split() for line in open("/proc/self/mountinfo") if line.split()[4] == "/")
    return not any(tag.startswith("shared:") for tag in root[6 : root.index("-")])


if not os.path.exists("/dev/fuse"):
    pytest.fail("/dev/fuse is missing: the FUSE view tests need it (they never skip)", pytrace=False)
if not in_private_mount_namespace():
    pytest.fail(
        "not in a private mount namespace: run `unshare -m --propagation private python -m pytest ...`",
        pytrace=False,
    )

REPO = Path(__file__).resolve().parent.parent
MTIME = 1_700_000_000
SERVER = (
    "import logging, sys; from pathlib import Path; from csi_driver.views import fusefs; "
    "logging.basicConfig(level=logging.INFO); fusefs.run(Path(sys.argv[1]))"
)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Tree:
    """A committed tree and what each path must read as."""

    digest: str
    entries: list[Entry]
    contents: dict[str, bytes] = field(default_factory=dict)


def write_layer(state: Path, members: dict[str, tuple[bytes, int]]) -> tuple[str, dict[str, int]]:
    """An uncompressed layer tar in the store; returns its source path and each member's data offset."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, MTIME
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    source = f"layers/sha256/{hashlib.sha256(data).hexdigest()}.tar"
    (state / source).write_bytes(data)
    with tarfile.open(state / source) as tar:
        offsets = {member.name: member.offset_data for member in tar.getmembers()}
    return source, offsets


def write_blob(state: Path, data: bytes) -> str:
    source = f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"
    (state / source).write_bytes(data)
    return source


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path=path, kind=Kind.DIR, mode=mode, mtime=MTIME)


def build_main_tree(state: Path) -> Tree:
    """Dirs, files of several modes and owners, symlinks, an empty file, a 1,000-file dir."""
    big = random.Random(0).randbytes(300_000)
    members = {
        "bin/tool": (b"#!/bin/sh\necho tool\n", 0o755),
        "etc/config.json": (b'{"a": 1}\n', 0o644),
        "etc/secret": (b"s3cret\n", 0o600),
        "a/b/c/deep.txt": (b"deep\n", 0o644),
        "big.bin": (big, 0o644),
    }
    layer, offsets = write_layer(state, members)
    notes = b"notes pushed as an ORAS file\n"
    notes_blob = write_blob(state, notes)
    many_blob = write_blob(state, b"".join(f"{i:04d}".encode() for i in range(1000)))

    def file(path: str, mode: int, uid: int = 0) -> Entry:
        data = members[path][0]
        return Entry(path, Kind.FILE, mode, uid, uid, MTIME, len(data), source=layer, offset=offsets[path])

    entries = [
        directory(""),
        directory("a"),
        directory("a/b"),
        directory("a/b/c", 0o750),
        file("a/b/c/deep.txt", 0o644),
        file("big.bin", 0o644),
        directory("bin"),
        file("bin/tool", 0o755),
        Entry("bin/config-hardlink.json", Kind.FILE, 0o644, mtime=MTIME, size=9, source=layer,
              offset=offsets["etc/config.json"]),  # a name of etc/config.json in another directory
        Entry("empty", Kind.FILE, 0o644, mtime=MTIME, size=0, source=layer, offset=0),
        directory("etc"),
        file("etc/config.json", 0o644),
        Entry("etc/config-hardlink.json", Kind.FILE, 0o644, mtime=MTIME, size=9, source=layer,
              offset=offsets["etc/config.json"]),
        file("etc/secret", 0o600, uid=1000),
        Entry("link-abs", Kind.SYMLINK, 0o777, mtime=MTIME, link="/usr/bin/env"),
        Entry("link-rel", Kind.SYMLINK, 0o777, mtime=MTIME, link="etc/config.json"),
        directory("many"),
        *(
            Entry(f"many/f{i:04d}", Kind.FILE, 0o644, mtime=MTIME, size=4, source=many_blob, offset=4 * i)
            for i in range(1000)
        ),
        Entry("notes.txt", Kind.FILE, 0o644, mtime=MTIME, size=len(notes), source=notes_blob),
    ]
    contents = {path: data for path, (data, _) in members.items()}
    contents |= {"empty": b"", "notes.txt": notes, "etc/config-hardlink.json": members["etc/config.json"][0],
                 "bin/config-hardlink.json": members["etc/config.json"][0]}
    contents |= {f"many/f{i:04d}": f"{i:04d}".encode() for i in range(1000)}
    return Tree(digest_of(b"main tree"), entries, contents)


def build_small_tree(state: Path, text: bytes) -> Tree:
    source = write_blob(state, text)
    entries = [directory(""), Entry("hello.txt", Kind.FILE, 0o644, mtime=MTIME, size=len(text), source=source)]
    return Tree(digest_of(b"small tree " + text), entries, {"hello.txt": text})


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    view: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(state: Path, log: Path) -> Server:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(state)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    return Server(proc, state / "view", log)


def fuse_mounts(view: Path) -> list[kernel.MountInfo]:
    return [m for m in kernel.mount_table() if m.mount_point == str(view) and m.fs_type == FS_TYPE]


def answering_mount(view: Path) -> bool:
    """A view is mounted at ``view`` and answers: a dead one fails ``path_state``, and the bare
    directory left once a dead one is detached has its parent's device (so a mountinfo read
    just before the detach cannot pass for the new view)."""
    return (
        bool(fuse_mounts(view))
        and kernel.path_state(str(view)) == "ok"
        and os.stat(view).st_dev != os.stat(view.parent).st_dev
    )


def wait_mounted(server: Server, timeout: float = 15.0) -> None:
    """Until the view is in mountinfo and answers (a dead view left there does not count)."""
    deadline = time.monotonic() + timeout
    while not answering_mount(server.view):
        if server.proc.poll() is not None:
            pytest.fail(f"the view server exited with {server.proc.returncode}:\n{server.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the view did not appear in /proc/self/mountinfo within {timeout}s:\n{server.output()}")
        time.sleep(0.02)


def stop_server(server: Server) -> None:
    stop(server.proc, timeout=10)
    for _ in range(5):  # one lazy unmount per view left stacked there
        if not fuse_mounts(server.view):
            return
        subprocess.run(["umount", "-l", str(server.view)], check=False)
    pytest.fail(f"could not unmount the view at {server.view}")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = Path(os.path.realpath(tmp_path)) / "state"
    path.mkdir()
    return path


@pytest.fixture
def store(state: Path) -> Store:
    return Store(state)


@pytest.fixture
def tree(state: Path, store: Store) -> Tree:
    built = build_main_tree(state)
    store.commit_tree(built.digest, built.entries)
    return built


@pytest.fixture
def server(state: Path, tree: Tree, tmp_path: Path) -> Iterator[Server]:
    running = start_server(state, tmp_path / "fuse.log")
    try:
        wait_mounted(running)
        yield running
    finally:
        stop_server(running)


def test_mount_is_read_only_fuse_with_the_contract_options(server: Server) -> None:
    [info] = fuse_mounts(server.view)
    assert info.source == "oci-volume-csi"
    assert "ro" in info.options
    with open("/proc/self/mountinfo") as table:
        line = next(line for line in table if line.split()[4] == str(server.view))
    super_options = set(line.split(" - ")[1].split()[2].split(","))
    assert {"ro", "allow_other", "default_permissions"} <= super_options


def test_root_lists_committed_digests_as_directories(server: Server, tree: Tree) -> None:
    with os.scandir(server.view) as it:
        listed = {entry.name: entry.is_dir(follow_symlinks=False) for entry in it}
    assert listed == {tree.digest: True}
    root = os.stat(server.view)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o755
    assert (root.st_uid, root.st_gid) == (0, 0)
    assert root.st_nlink == 1, "not counted (asked on every path walk, answered without the store)"
    assert subprocess.run(["find", str(server.view), "-maxdepth", "1"], capture_output=True, text=True, check=True
                          ).stdout.split() == [str(server.view), str(server.view / tree.digest)]  # fmt: skip


def test_paths_bytes_modes_owners_and_symlinks_match_the_tree(server: Server, tree: Tree) -> None:
    top = server.view / tree.digest
    seen = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            seen.add(os.path.relpath(os.path.join(dirpath, name), top))
    assert seen == {e.path for e in tree.entries if e.path}

    for entry in tree.entries:
        path = top / entry.path if entry.path else top
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == entry.mode, entry.path
        assert (st.st_uid, st.st_gid) == (entry.uid, entry.gid), entry.path
        assert st.st_mtime == MTIME, entry.path
        if entry.kind is Kind.DIR:
            assert stat.S_ISDIR(st.st_mode), entry.path
        elif entry.kind is Kind.SYMLINK:
            assert stat.S_ISLNK(st.st_mode), entry.path
            assert os.readlink(path) == entry.link
            assert st.st_size == len(entry.link)
        else:
            assert stat.S_ISREG(st.st_mode), entry.path
            assert st.st_size == entry.size
            assert path.read_bytes() == tree.contents[entry.path], entry.path


def test_large_file_reads_at_any_offset(server: Server, tree: Tree) -> None:
    expected = tree.contents["big.bin"]
    path = server.view / tree.digest / "big.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, size in [(0, 10), (131_071, 5), (299_990, 100), (300_000, 10), (12_345, 200_000)]:
            assert os.pread(fd, size, offset) == expected[offset : offset + size]
    finally:
        os.close(fd)
    assert os.stat(path).st_blocks == -(-len(expected) // 512)


def test_symlinks_resolve_inside_the_view_and_keep_absolute_targets(server: Server, tree: Tree) -> None:
    top = server.view / tree.digest
    assert (top / "link-rel").read_bytes() == tree.contents["etc/config.json"]
    assert os.readlink(top / "link-abs") == "/usr/bin/env"


def test_tree_committed_after_mount_appears_at_once(server: Server, state: Path, store: Store, tree: Tree) -> None:
    assert os.listdir(server.view) == [tree.digest]
    later = build_small_tree(state, b"committed later\n")
    store.commit_tree(later.digest, later.entries)
    assert sorted(os.listdir(server.view)) == sorted([tree.digest, later.digest])
    assert (server.view / later.digest / "hello.txt").read_bytes() == b"committed later\n"


def test_missing_digest_is_enoent_and_visible_once_committed(server: Server, state: Path, store: Store) -> None:
    missing = build_small_tree(state, b"not yet\n")
    for _ in range(2):  # a second miss must not be answered from a cached negative entry either
        with pytest.raises(FileNotFoundError):
            os.stat(server.view / missing.digest)
    with pytest.raises(FileNotFoundError):
        os.stat(server.view / "not-a-digest")
    store.commit_tree(missing.digest, missing.entries)
    assert (server.view / missing.digest / "hello.txt").read_bytes() == b"not yet\n"


def test_every_write_fails_with_erofs(server: Server, tree: Tree) -> None:
    top = server.view / tree.digest
    attempts = [
        lambda: open(top / "etc/config.json", "r+b"),
        lambda: open(top / "etc/config.json", "wb"),
        lambda: open(top / "new-file", "xb"),
        lambda: os.mkdir(top / "new-dir"),
        lambda: os.mkdir(server.view / "new-dir"),
        lambda: os.unlink(top / "notes.txt"),
        lambda: os.rmdir(top / "a/b/c"),
        lambda: os.rename(top / "notes.txt", top / "renamed.txt"),
        lambda: os.symlink("x", top / "new-link"),
        lambda: os.chmod(top / "notes.txt", 0o777),
        lambda: os.chown(top / "notes.txt", 1, 1),
        lambda: os.utime(top / "notes.txt", (0, 0)),
        lambda: os.truncate(top / "notes.txt", 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS, caught.value
    assert (top / "notes.txt").read_bytes() == tree.contents["notes.txt"]


def test_a_volume_bound_from_the_view_is_read_only_in_every_propagated_copy(
    server: Server, tree: Tree, shared_kubelet_root: tuple[Path, Path]
) -> None:
    kubelet, peer = shared_kubelet_root
    target = kubelet / "target"
    target.mkdir()
    kernel.bind_readonly(str(server.view / tree.digest), str(target))
    try:
        for path in (target, peer / "target"):
            assert (path / "notes.txt").read_bytes() == tree.contents["notes.txt"]
            assert_read_only(path, "notes.txt")
    finally:
        kernel.unmount(str(target))


def test_big_directory_lists_fully(server: Server, tree: Tree) -> None:
    many = server.view / tree.digest / "many"
    names = os.listdir(many)
    assert len(names) == 1000
    assert sorted(names) == [f"f{i:04d}" for i in range(1000)]
    listed = subprocess.run(["ls", "-a", "-f", str(many)], capture_output=True, text=True, check=True).stdout
    assert listed.split("\n")[:3] == [".", "..", "f0000"]
    assert (many / "f0999").read_bytes() == b"0999"
    assert os.stat(many).st_nlink == 2


def test_hardlinks_are_one_inode_with_their_link_count_and_the_trees_root_counts_its_subdirectories(
    server: Server, tree: Tree
) -> None:
    """The names of one layer member share an inode number and report their number as
    ``st_nlink``, from whichever directory they are reached; other files (a whole blob at offset 0 too) have an
    inode each. A tree's root counts 2 + its subdirectories (a, bin, etc, many), as a volume's
    root in the other views does."""
    top = server.view / tree.digest
    elsewhere = os.lstat(top / "bin/config-hardlink.json")  # looked up first, from the other parent
    config, hard = os.lstat(top / "etc/config.json"), os.lstat(top / "etc/config-hardlink.json")
    assert {(st.st_ino, st.st_nlink) for st in (config, hard, elsewhere)} == {(config.st_ino, 3)}
    assert (top / "bin/config-hardlink.json").read_bytes() == b'{"a": 1}\n'
    with os.scandir(top / "etc") as listing:
        assert {entry.name: entry.inode() for entry in listing if "config" in entry.name} == {
            "config.json": config.st_ino, "config-hardlink.json": config.st_ino}
    files = [os.lstat(top / path) for path in ("empty", "notes.txt", "many/f0000", "many/f0001")]
    assert len({st.st_ino for st in files}) == 4 and {st.st_nlink for st in files} == {1}
    assert os.lstat(top).st_nlink == 2 + 4


def test_other_users_read_through_allow_other_and_modes_are_enforced(server: Server, tree: Tree) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        top = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
        uid = int(sys.argv[2])
        os.setgroups([]); os.setgid(uid); os.setuid(uid)
        for path in ("etc/config.json", "etc/secret"):
            try:
                fd = os.open(path, os.O_RDONLY, dir_fd=top)
                print(path, os.read(fd, 100))
            except PermissionError:
                print(path, "denied")
        """
    )
    top = str(server.view / tree.digest)

    def as_user(uid: int) -> str:
        command = [sys.executable, "-c", script, top, str(uid)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert as_user(65534) == "etc/config.json b'{\"a\": 1}\\n'\netc/secret denied\n"
    assert as_user(1000) == "etc/config.json b'{\"a\": 1}\\n'\netc/secret b's3cret\\n'\n"


def test_statfs_answers(server: Server) -> None:
    info = os.statvfs(server.view)
    assert info.f_bsize == 4096 and info.f_namemax == 255
    assert info.f_flag & os.ST_RDONLY


def test_sigterm_unmounts_and_exits_zero(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0, server.output()
    assert fuse_mounts(server.view) == []
    assert kernel.path_state(str(server.view)) == "ok"


def test_restart_replaces_a_dead_view(server: Server, state: Path, tree: Tree, tmp_path: Path) -> None:
    server.proc.kill()
    server.proc.wait()
    assert kernel.path_state(str(server.view)) == "dead"
    assert kernel.is_mount_point(str(server.view)), "a dead view is still a mount point"

    second = start_server(state, tmp_path / "fuse2.log")
    try:
        wait_mounted(second)
        assert (second.view / tree.digest / "notes.txt").read_bytes() == tree.contents["notes.txt"]
        assert len(fuse_mounts(second.view)) == 1, "the dead view must be detached, not stacked upon"
    finally:
        stop_server(second)


def test_a_second_server_stands_by_while_the_view_lives_and_takes_over_when_it_dies(
    server: Server, state: Path, tree: Tree, tmp_path: Path
) -> None:
    """The DaemonSet's fuse container restarted while serve's own view runs must not crash-loop:
    it waits, one view stays mounted, and it replaces that view the moment its server dies."""
    second = start_server(state, tmp_path / "fuse2.log")
    try:
        time.sleep(2)
        assert second.proc.poll() is None, second.output()
        assert "standing by" in second.output()
        assert len(fuse_mounts(server.view)) == 1
        assert (server.view / tree.digest / "notes.txt").read_bytes() == tree.contents["notes.txt"]

        server.proc.kill()
        server.proc.wait()
        wait_mounted(second)
        assert len(fuse_mounts(second.view)) == 1, "the dead view must be detached, not stacked upon"
        assert (second.view / tree.digest / "notes.txt").read_bytes() == tree.contents["notes.txt"]
    finally:
        stop_server(second)


def test_an_unexpected_error_is_eio_and_the_view_keeps_serving(
    server: Server, state: Path, store: Store, tree: Tree
) -> None:
    broken = Tree(
        digest_of(b"broken tree"),
        [directory(""), Entry("lost.txt", Kind.FILE, 0o644, mtime=MTIME, size=3, source="blobs/sha256/gone")],
    )
    store.commit_tree(broken.digest, broken.entries)
    with pytest.raises(OSError) as caught:
        (server.view / broken.digest / "lost.txt").read_bytes()
    assert caught.value.errno == errno.EIO
    assert server.proc.poll() is None
    assert (server.view / tree.digest / "notes.txt").read_bytes() == tree.contents["notes.txt"]


def test_build_tree_adds_unlisted_parents_and_drops_entries_below_files() -> None:
    entries = [
        Entry("a/b/file", Kind.FILE, 0o644, size=1),
        Entry("f", Kind.FILE, 0o644),
        Entry("f/under-a-file", Kind.FILE, 0o644),
    ]
    nodes = build_tree(entries, root_ino=10, parent=1, first_ino=20)
    paths = {node.entry.path: node for node in nodes.values()}
    assert set(paths) == {"", "a", "a/b", "a/b/file", "f"}
    assert paths[""].ino == 10 and paths[""].parent == 1
    assert sorted(node.ino for path, node in paths.items() if path) == [20, 21, 22, 23]
    assert paths["a"].entry.kind is Kind.DIR and paths["a"].entry.mode == 0o755
    assert paths["a"].children == {b"b": paths["a/b"].ino}
    assert paths[""].subdirs == 1


def test_view_process_loads_no_grpc_layer() -> None:
    """The view runs on every node beside ``serve``; the gRPC layer would add ~15 MB to it."""
    code = "import sys, csi_driver.__main__, csi_driver.views.fusefs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google', 'prometheus_client')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cached", [0, 3, 10, None], ids=["nothing-cached", "part-cached", "all-cached", "no-nowait"])
def test_reads_take_what_the_page_cache_has_and_the_rest_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: int | None
) -> None:
    """``RWF_NOWAIT`` answers on the loop only what is cached; the rest, or everything where the
    file system cannot read without blocking, is read in a thread."""
    source = tmp_path / "layer.tar"
    source.write_bytes(b"0123456789abcdef")
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list, pos: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT:
            if cached is None:  # a file system without non-blocking buffered reads
                raise OSError(errno.EOPNOTSUPP, "not supported")
            if not cached:
                raise BlockingIOError(errno.EAGAIN, "not cached")
            return real_preadv(fd, [buffers[0][:cached]], pos)
        return real_preadv(fd, buffers, pos)

    monkeypatch.setattr(fusefs.os, "preadv", preadv)
    fd = os.open(source, os.O_RDONLY)
    try:
        assert bytes(trio.run(fusefs._pread, fd, 10, 4)) == b"456789abcd"
        assert bytes(trio.run(fusefs._pread, fd, 10, 12)) == b"cdef"  # the source ends early
    finally:
        os.close(fd)


def test_store_reads_run_in_one_thread_that_outlives_idle_spells(tmp_path: Path) -> None:
    """trio's worker threads end after 10 s idle, and each new one opened its own SQLite
    connection; the view's store reads keep one thread (and connection) for its whole life."""
    import threading

    store_thread = fusefs.StoreThread(Store(tmp_path / "state"))

    async def main() -> tuple[int, int]:
        first = await store_thread.run(threading.get_ident)
        with pytest.raises(ZeroDivisionError):  # an error in the thread reaches the caller
            await store_thread.run(lambda: 1 / 0)
        return first, await store_thread.run(threading.get_ident)

    try:
        first, later = trio.run(main)
    finally:
        store_thread.close()
    assert first == later != threading.get_ident()


DIGEST_A, DIGEST_B, DIGEST_C = ("sha256:" + c * 64 for c in "abc")


def committed_store(path: Path) -> Store:
    store = Store(path)
    store.commit_tree(DIGEST_A, [
        Entry("", Kind.DIR, 0o755), Entry("dir", Kind.DIR, 0o750), Entry("dir/file", Kind.FILE, 0o644, size=3),
    ])  # fmt: skip
    # A listing that implies directories (an entry whose parents are not listed): more inodes
    # than entries, so its index cannot use the range reserved from the entry count alone.
    store.commit_tree(DIGEST_B, [Entry("", Kind.DIR, 0o755), Entry("x/y/z/file", Kind.FILE, 0o600, size=1)])
    store.commit_tree(DIGEST_C, [Entry("", Kind.DIR, 0o700)])
    return store


def test_a_trees_root_is_answered_before_the_tree_is_indexed_and_lookups_below_wait_for_it(tmp_path: Path) -> None:
    """A publish's lookup of view/<digest> gets the root at once (``st_nlink`` 1: not counted
    yet, and not to be cached); the tree's nodes are built in the background and a lookup below
    the root, or a getattr of it, waits for them. Trees looked up one after the other, one
    implying directories, never share an inode."""
    fs = fusefs.TreeFS(committed_store(tmp_path / "state"))

    async def main() -> dict[str, os.stat_result]:
        async with trio.open_nursery() as nursery:
            fs.nursery = nursery
            root_a = await fs.lookup(1, DIGEST_A.encode(), None)
            assert fs._unindexed  # answered before the index exists
            root_b = await fs.lookup(1, DIGEST_B.encode(), None)
            found = {"a": root_a, "b": root_b, "c": await fs.lookup(1, DIGEST_C.encode(), None)}
            found["a counted"] = await fs.getattr(root_a.st_ino, None)
            found["a/dir"] = await fs.lookup(root_a.st_ino, b"dir", None)
            found["a/dir/file"] = await fs.lookup(found["a/dir"].st_ino, b"file", None)
            ino = root_b.st_ino
            for name in ("x", "y", "z", "file"):
                found[f"b/{name}"] = attr = await fs.lookup(ino, name.encode(), None)
                ino = attr.st_ino
        return found

    found = trio.run(main)
    assert found["a"].st_nlink == found["b"].st_nlink == 1 and found["a"].attr_timeout == 0
    assert found["a counted"].st_nlink == 3 and found["a counted"].attr_timeout == fusefs.TREE_TIMEOUT
    del found["a counted"]  # the same inode as "a"
    assert stat.S_IMODE(found["a/dir"].st_mode) == 0o750 and found["a/dir"].st_nlink == 2
    assert found["a/dir/file"].st_size == 3 and stat.S_IMODE(found["b/file"].st_mode) == 0o600
    inodes = [attr.st_ino for attr in found.values()]
    assert len(set(inodes)) == len(inodes)
    assert not fs._unindexed
    fs.store_thread.close()


def test_a_tree_whose_indexing_failed_is_indexed_again_at_the_next_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup below the root answers EIO while the index failed, and the next one tries again."""
    store = committed_store(tmp_path / "state")
    fs = fusefs.TreeFS(store)
    load_tree, failures = store.load_tree, [RuntimeError("disk I/O error")]

    def flaky(digest: str) -> list[Entry]:
        if failures:
            raise failures.pop()
        return load_tree(digest)

    monkeypatch.setattr(store, "load_tree", flaky)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            fs.nursery = nursery
            root = await fs.lookup(1, DIGEST_A.encode(), None)
            with pytest.raises(pyfuse3.FUSEError) as failed:
                await fs.lookup(root.st_ino, b"dir", None)
            assert failed.value.errno == errno.EIO
            return (await fs.lookup(root.st_ino, b"dir", None)).st_ino

    assert trio.run(main) > 0
    fs.store_thread.close()


def test_pax_mtimes_show_to_the_nanosecond(server: Server, state: Path, store: Store) -> None:
    from test_layout import OCI_TAR, TIMES, put_tar, timed_members

    entries = rules.build_tree(state, [put_tar(state, timed_members(), OCI_TAR, image=True)], rules.Limits())
    digest = digest_of(b"timed tree")
    store.commit_tree(digest, entries)
    shown = {path: os.lstat(server.view / digest / path).st_mtime_ns for path in TIMES}
    assert shown == {path: sec * 10**9 + nsec for path, (sec, nsec) in TIMES.items()}


def test_a_tree_committed_again_by_newer_rules_is_new_to_lookups_and_old_to_its_volumes(
    server: Server, state: Path, store: Store
) -> None:
    """A volume holds the tree root it was bound to (here an open directory stands for it): it
    keeps the old tree, while a publish's lookup of the same digest gets the rebuilt tree."""
    old = build_small_tree(state, b"old rules\n")
    store.commit_tree(old.digest, old.entries, layout=LAYOUT_VERSION - 1)
    volume = os.open(server.view / old.digest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.listdir(volume) == ["hello.txt"]
        store.commit_tree(old.digest, [directory(""), directory("plugin")])
        assert os.listdir(server.view / old.digest) == ["plugin"]
        assert os.listdir(volume) == ["hello.txt"]
        with open(os.open("hello.txt", os.O_RDONLY, dir_fd=volume), "rb") as kept:
            assert kept.read() == b"old rules\n"
    finally:
        os.close(volume)

"""EROFS images mounted by the kernel: the whole tree compared with the tars it came from.

Real tars (Python's tarfile) in a state dir laid out as the store keeps them, entries from
``layout.build_tree`` as the driver builds them, the image from ``erofsimage.write``, mounted
file-backed with the layer tars as its extra devices by ``erofsmount.mount``. No ``fsck.erofs``
that reads 512-byte blocks is packaged for Debian bookworm (erofs-utils 1.5 refuses them): the
kernel's mount and a comparison of every byte, mode, owner, mtime, link count and name is the
validator. The same image is mounted over loop devices too (``backing="loop"``, what kernels
before 6.12 need), which this kernel does as well as file-backed.
"""

from __future__ import annotations

import contextlib
import decimal
import io
import math
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from test_layout import OCI_TAR, directory, file, hardlink, link, put_blob, put_tar, tar_bytes

from csi_driver.layout.rules import Limits, build_tree
from csi_driver.layout.tree import ROOT, Entry, Kind
from csi_driver.mounts import kernel
from csi_driver.views import erofsimage, erofsmount


def devices(state: Path, entries: Sequence[Entry]) -> list[erofsimage.Device]:
    return [erofsimage.Device(source, (state / source).stat().st_size) for source in erofsimage.sources(entries)]


@contextlib.contextmanager
def mounted(state: Path, entries: Sequence[Entry], direct_io: bool = False, backing: str = "file") -> Iterator[Path]:
    """The image of ``entries`` mounted, its devices being the store files they read from."""
    table = devices(state, entries)
    image = state / "image.erofs"
    erofsimage.write(image, entries, table, erofsimage.reader(state))
    target = state / "mnt"
    target.mkdir(exist_ok=True)
    erofsmount.mount(image, [state / device.source for device in table], target, direct_io=direct_io, backing=backing)
    try:
        yield target
    finally:
        kernel.unmount(os.fspath(target))


_TYPES = {Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.SYMLINK: stat.S_IFLNK}


def _dirent_kind(item: os.DirEntry) -> str:
    return Kind.SYMLINK if item.is_symlink() else Kind.DIR if item.is_dir(follow_symlinks=False) else Kind.FILE


def assert_same_tree(state: Path, entries: Sequence[Entry], root: Path) -> None:
    """Every entry as the mount shows it, and nothing else in the mount."""
    links: dict[tuple[str, int], int] = {}
    children: dict[str, set[str]] = {entry.path: set() for entry in entries if entry.kind is Kind.DIR}
    for entry in entries:
        if entry.kind is Kind.FILE and entry.offset:
            links[entry.source, entry.offset] = links.get((entry.source, entry.offset), 0) + 1
        if entry.path:
            parent, _, name = entry.path.rpartition("/")
            children[parent].add(name)
    kinds = {entry.path: entry.kind for entry in entries}
    for entry in entries:
        path = root / entry.path
        st = os.lstat(path)
        where = entry.path or "/"
        assert stat.S_IFMT(st.st_mode) == _TYPES[entry.kind], where
        assert stat.S_IMODE(st.st_mode) == entry.mode, where
        assert (st.st_uid, st.st_gid) == (entry.uid, entry.gid), where
        assert st.st_mtime_ns == entry.mtime * 10**9 + entry.mtime_nsec, where
        if entry.kind is Kind.DIR:
            listed = {item.name: _dirent_kind(item) for item in os.scandir(path)}  # d_type, not stat
            prefix = f"{entry.path}/" if entry.path else ""
            assert listed == {name: kinds[prefix + name] for name in children[entry.path]}, where
            assert st.st_nlink == 2 + sum(1 for kind in listed.values() if kind is Kind.DIR), where
        elif entry.kind is Kind.SYMLINK:
            assert os.readlink(path) == entry.link, where
            assert st.st_size == len(entry.link.encode()), where
        else:
            assert st.st_size == entry.size, where
            assert st.st_nlink == (links[entry.source, entry.offset] if entry.offset else 1), where
            with open(state / entry.source, "rb") as source:
                source.seek(entry.offset)
                expected = source.read(entry.size)
            assert path.read_bytes() == expected, where


def tar_mtime_ns(member: tarfile.TarInfo) -> int:
    """A member's mtime in nanoseconds from its header or PAX record, read with ``Decimal`` (not
    by the layout's parser), rounded toward minus infinity."""
    record = member.pax_headers.get("mtime")
    return int(member.mtime) * 10**9 if record is None else math.floor(decimal.Decimal(record) * 10**9)


def assert_matches_tar(tar: bytes, root: Path) -> None:
    """The mount against the tar itself, read by tarfile (no layout code involved)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        inodes: dict[str, int] = {}
        for member in archive.getmembers():
            path = root / member.name
            st = os.lstat(path)
            if member.islnk():  # a hardlink's header metadata is not its target's
                assert st.st_ino == inodes[member.linkname], member.name
                continue
            assert stat.S_IMODE(st.st_mode) == member.mode & 0o1777, member.name
            assert (st.st_uid, st.st_gid) == (member.uid, member.gid), member.name
            assert st.st_mtime_ns == tar_mtime_ns(member), member.name
            if member.isreg():
                extracted = archive.extractfile(member)
                assert extracted is not None
                assert path.read_bytes() == extracted.read(), member.name
                inodes[member.name] = st.st_ino
            elif member.issym():
                assert os.readlink(path) == member.linkname, member.name
            else:
                assert stat.S_ISDIR(st.st_mode), member.name


def rich_members() -> list:
    payload = bytes(range(256)) * 41 + b"tail"
    nanos = file("nanos", b"n", pax_headers={"mtime": "1700000000.123456789"})  # as Go's archive/tar writes it
    before_1970 = file("before-1970", b"b", pax_headers={"mtime": "-86400.25"})
    return [
        directory("d", 0o755, uid=70000, gid=70000, mtime=1600000000),
        file("d/payload", payload, 0o640, uid=0, gid=70000, mtime=1500000000),
        file("d/-a", b"dash", 0o600),
        file("d/!x", b"bang", 0o604),
        file("d/a.b", b"dot", 0o644),
        file("d/ünïcødé", "ünï".encode(), 0o644),
        file("d/empty", b"", 0o444),
        file("d/exactly-a-block", b"b" * 512),
        directory("sticky", 0o1777),
        link("abs", "/etc/passwd"),
        link("d/rel", "../sticky"),
        link("long", "x/" * 300 + "end"),
        hardlink("d/hard", "d/payload"),
        hardlink("hard-root", "d/payload"),
        hardlink("empty-link", "d/empty"),
        nanos,
        before_1970,
        file("z-last", b"z" * 700),
    ]


@pytest.mark.parametrize("backing", erofsmount.BACKINGS)
def test_mounted_tree_matches_the_tar_bytes_modes_owners_mtimes_links(tmp_path: Path, backing: str) -> None:
    members = rich_members()
    layer = put_tar(tmp_path, members, OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries, backing=backing) as root:
        assert_same_tree(tmp_path, entries, root)
        assert_matches_tar(tar_bytes(members), root)
        assert os.stat(root / "d" / "hard").st_nlink == 3
        assert os.stat(root / "empty-link").st_ino == os.stat(root / "d" / "empty").st_ino


def test_pax_mtimes_show_to_the_nanosecond_before_1970_too(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, rich_members(), OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries) as root:
        assert os.lstat(root / "nanos").st_mtime_ns == 1700000000_123456789
        assert os.lstat(root / "before-1970").st_mtime_ns == -86400_250000000
        assert os.lstat(root / "d" / "payload").st_mtime_ns == 1500000000 * 10**9  # a plain ustar header


def test_layers_are_devices_and_later_layers_win(tmp_path: Path) -> None:
    lower = put_tar(tmp_path, [file("a", b"lower a"), file("b", b"lower b"), directory("gone"), file("gone/x", b"x")], OCI_TAR)
    upper = put_tar(tmp_path, [file("a", b"upper a, longer"), file(".wh.gone"), file("c", b"upper c")], OCI_TAR)
    entries = build_tree(tmp_path, [lower, upper], Limits())
    assert len(erofsimage.sources(entries)) == 2
    with mounted(tmp_path, entries) as root:
        assert_same_tree(tmp_path, entries, root)
        assert (root / "a").read_bytes() == b"upper a, longer" and (root / "b").read_bytes() == b"lower b"
        assert not (root / "gone").exists()


@pytest.mark.parametrize("backing", erofsmount.BACKINGS)
def test_tar_ending_right_after_its_last_files_data_reads_whole(tmp_path: Path, backing: str) -> None:
    raw = tar_bytes([file("first", b"1" * 600), file("last", bytes(range(251)) * 40)])
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        last = archive.getmember("last")
    cut = raw[: last.offset_data + last.size]  # no padding, no end-of-archive blocks (umoci 0.4)
    layer = put_blob(tmp_path, cut, OCI_TAR)  # over a loop device, the partial last sector is not even there
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries, backing=backing) as root:
        assert_same_tree(tmp_path, entries, root)
        assert (root / "last").read_bytes() == bytes(range(251)) * 40


@pytest.mark.parametrize("size", [1, 511, 513, 10_001, 3 << 20])
def test_oras_file_blob_of_any_size_reads_whole(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    layer = put_blob(tmp_path, data, "application/vnd.example.data", title="data.bin")
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries) as root:
        assert (root / "data.bin").read_bytes() == data


def test_big_directory_lists_and_looks_up_every_name(tmp_path: Path) -> None:
    names = [f"{i:04d}{'-' * (i % 50)}" for i in range(3000)] + ["!first", "-dash", "a.b", ".dot"]
    layer = put_tar(tmp_path, [directory("big"), *(file(f"big/{n}", n.encode()) for n in names)], OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries) as root:
        assert sorted(os.listdir(root / "big")) == sorted(names)
        for name in names:
            assert (root / "big" / name).read_bytes() == name.encode(), name
        assert not (root / "big" / "0000-missing").exists()


def test_deep_tree(tmp_path: Path) -> None:
    parts = [f"d{i}" for i in range(150)]
    members = [directory("/".join(parts[: i + 1])) for i in range(len(parts))]
    members.append(file("/".join(parts) + "/leaf", b"deep"))
    layer = put_tar(tmp_path, members, OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries) as root:
        assert_same_tree(tmp_path, entries, root)


def test_file_over_4_gib_reads_at_every_offset(tmp_path: Path) -> None:
    size = (5 << 30) + 12345
    tar = tmp_path / "big.tar"
    marks = {0: b"start", (4 << 30) - 3: b"across-4GiB", size - 5: b"end!!"}
    with open(tar, "wb") as out:  # sparse: only the marks take disk
        out.truncate(512 + size + 512)
        for at, mark in marks.items():
            out.seek(512 + at)
            out.write(mark)
    entries = [ROOT, Entry("big", Kind.FILE, 0o644, size=size, source="big.tar", offset=512)]
    with mounted(tmp_path, entries) as root, open(root / "big", "rb") as big:
        assert os.fstat(big.fileno()).st_size == size
        for at, mark in marks.items():
            assert os.pread(big.fileno(), len(mark), at) == mark
        assert os.pread(big.fileno(), 100, size - 5) == b"end!!"


@pytest.mark.parametrize("backing", erofsmount.BACKINGS)
def test_many_layers_with_long_paths(tmp_path: Path, backing: str) -> None:
    state = tmp_path / ("long-state-dir-" + "x" * 100) / ("y" * 100)  # device paths over 255 bytes
    state.mkdir(parents=True)
    layers = [put_tar(state, [file(f"layer{i:03d}", f"layer {i}".encode() * (i + 1))], OCI_TAR) for i in range(128)]
    entries = build_tree(state, layers, Limits())
    assert len(erofsimage.sources(entries)) == 128
    assert len(os.fsencode(state / erofsimage.sources(entries)[0])) > 255
    with mounted(state, entries, backing=backing) as root:
        assert_same_tree(state, entries, root)
        if backing == "loop":
            assert len(loops_serving(state)) == 129  # the image and every tar


def test_five_thousand_devices(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    entries = [ROOT]
    for i in range(5000):
        name = f"d/{i:04d}"
        (tmp_path / name).write_bytes(bytes(512) + f"device {i}".encode().ljust(512, b"\0"))
        entries.append(Entry(f"f{i:04d}", Kind.FILE, 0o644, size=len(f"device {i}"), source=name, offset=512))
    with mounted(tmp_path, entries) as root:
        for i in (0, 1, 2499, 4998, 4999):
            assert (root / f"f{i:04d}").read_bytes() == f"device {i}".encode()
        assert len(os.listdir(root)) == 5000


def test_mount_is_read_only_nosuid_nodev_and_names_its_image(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("a", b"a")], OCI_TAR)
    with mounted(tmp_path, build_tree(tmp_path, [layer], Limits())) as root:
        info = kernel.find_mount(os.fspath(root))
        assert info is not None and info.fs_type == "erofs"
        assert info.source == os.fspath(tmp_path / "image.erofs")
        assert {"ro", "nosuid", "nodev"} <= info.options
        with pytest.raises(OSError):
            (root / "new").write_bytes(b"")


def loops_serving(under: Path) -> dict[str, str]:
    """Every attached loop device whose backing file is below ``under`` → that file."""
    found = {}
    for backing_file in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(FileNotFoundError):  # detached while we look
            path = backing_file.read_text().rstrip("\n")
            if path.startswith(f"{under}/"):
                found[f"/dev/{backing_file.parent.parent.name}"] = path
    return found


def test_loop_backed_mount_names_a_loop_device_of_its_image_read_only_direct_io_reading_ahead_1_mib(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("a", b"a" * 5000)], OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries, direct_io=True, backing="loop") as root:
        info = kernel.find_mount(os.fspath(root))
        assert info is not None and info.fs_type == "erofs" and {"ro", "nosuid", "nodev"} <= info.options
        loops = loops_serving(tmp_path)
        assert loops[info.source] == os.fspath(tmp_path / "image.erofs")
        assert sorted(loops.values()) == sorted([os.fspath(tmp_path / "image.erofs"), os.fspath(tmp_path / erofsimage.sources(entries)[0])])
        for device in loops:
            queue = Path("/sys/block") / os.path.basename(device)
            assert (queue / "ro").read_text() == "1\n" and (queue / "loop/autoclear").read_text() == "1\n"
            assert (queue / "loop/dio").read_text() == "1\n", device
            assert (queue / "queue/logical_block_size").read_text() == "512\n"
        image_queue = Path("/sys/block") / os.path.basename(info.source) / "queue"
        assert (image_queue / "read_ahead_kb").read_text() == f"{erofsmount.LOOP_READAHEAD_KB}\n"
        assert (root / "a").read_bytes() == b"a" * 5000


def test_loop_devices_without_a_node_in_dev_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a privileged container, whose /dev was copied when it started: the driver makes the
    node of each loop device it attaches (here in an empty directory standing in for /dev)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setattr(erofsmount, "DEV", os.fspath(dev))
    layer = put_tar(tmp_path, [file("a", b"in a container")], OCI_TAR)
    with mounted(tmp_path, build_tree(tmp_path, [layer], Limits()), backing="loop") as root:
        info = kernel.find_mount(os.fspath(root))
        assert info is not None and os.path.dirname(info.source) == os.fspath(dev)
        assert erofsmount.loop_backing_file(info.source) == os.fspath(tmp_path / "image.erofs")
        nodes = sorted(dev.iterdir())
        assert len(nodes) == 2 and all(stat.S_ISBLK(node.stat().st_mode) for node in nodes)
        assert (root / "a").read_bytes() == b"in a container"
    assert loops_serving(tmp_path) == {}


def test_unmounting_a_loop_backed_image_frees_its_loop_devices(tmp_path: Path) -> None:
    layers = [put_tar(tmp_path, [file(f"f{i}", b"x")], OCI_TAR) for i in range(3)]
    with mounted(tmp_path, build_tree(tmp_path, layers, Limits()), backing="loop"):
        assert len(loops_serving(tmp_path)) == 4
    assert loops_serving(tmp_path) == {}


def test_direct_io_mount_reads_the_same_bytes(tmp_path: Path) -> None:
    members = rich_members()
    layer = put_tar(tmp_path, members, OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    with mounted(tmp_path, entries, direct_io=True) as root:
        assert_matches_tar(tar_bytes(members), root)
        assert "directio" in super_options(root)


def super_options(root: Path) -> set[str]:
    """The file system's own options (after `` - erofs <source> `` in the mount table)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if fields[0].split()[4] == os.fspath(root):
            return set(fields[1].split()[2].split(","))
    raise AssertionError(f"{root} is not mounted")


def test_a_device_count_other_than_the_images_is_refused(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("a", b"a")], OCI_TAR)
    entries = build_tree(tmp_path, [layer], Limits())
    table = devices(tmp_path, entries)
    image = tmp_path / "image.erofs"
    erofsimage.write(image, entries, table, erofsimage.reader(tmp_path))
    target = tmp_path / "mnt"
    target.mkdir()
    device = tmp_path / table[0].source
    for given in ([], [device, device]):
        with pytest.raises(ValueError, match=f"names 1 devices, {len(given)} were given"):
            erofsmount.mount(image, given, target)
        assert not kernel.is_mount_point(os.fspath(target))


@pytest.mark.parametrize("backing", erofsmount.BACKINGS)
def test_kernel_refusal_carries_its_message_and_leaves_no_loop_device(tmp_path: Path, backing: str) -> None:
    image = tmp_path / "image.erofs"
    erofsimage.write(image, [ROOT], [], erofsimage.reader(tmp_path))
    raw = bytearray(image.read_bytes())
    raw[1024 + 12] = 8  # blkszbits below 9
    image.write_bytes(bytes(raw))
    target = tmp_path / "mnt"
    target.mkdir()
    with pytest.raises(OSError, match="mounting"):
        erofsmount.mount(image, [], target, backing=backing)
    assert not kernel.is_mount_point(os.fspath(target))
    assert loops_serving(tmp_path) == {}


@pytest.mark.parametrize("backing", erofsmount.BACKINGS)
def test_probe_mounts_a_tiny_image_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backing: str) -> None:
    monkeypatch.setenv(erofsmount.FORCE_BACKING, backing)
    assert erofsmount.probe(tmp_path) == (backing, f"EROFS {backing}-backed mounts with extra devices work")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not any(info.fs_type == "erofs" and info.mount_point.startswith(os.fspath(tmp_path)) for info in kernel.mount_table())
    assert loops_serving(tmp_path) == {}


def test_probe_prefers_file_backed_mounts(tmp_path: Path) -> None:
    assert erofsmount.probe(tmp_path) == ("file", "EROFS file-backed mounts with extra devices work")


def refuse_file_backed_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel answers as one before 6.12 (or without CONFIG_EROFS_FS_BACKED_BY_FILE), which
    refuses a regular file as the source: the source it is handed is /dev/null instead, neither a
    block device nor a regular file, unless it is a loop device."""
    real = erofsmount._syscall

    def syscall(name: str, *args: object) -> int:
        if name == "fsconfig" and args[2] == b"source" and not args[3].startswith(b"/dev/loop"):
            args = (*args[:3], b"/dev/null", *args[4:])
        return real(name, *args)

    monkeypatch.setattr(erofsmount, "_syscall", syscall)


def test_probe_falls_back_to_loop_devices_where_file_backed_mounts_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_file_backed_mounts(monkeypatch)
    backing, why = erofsmount.probe(tmp_path)
    assert backing == "loop", why
    assert why.startswith("EROFS file-backed mounts do not work here: ") and "mounting" in why
    assert why.endswith("; EROFS loop-backed mounts with extra devices work")
    assert loops_serving(tmp_path) == {}


def test_probe_says_why_it_failed(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_bytes(b"not a directory")
    backing, why = erofsmount.probe(tmp_path)
    assert backing is None
    assert "EROFS file-backed mounts do not work here" in why and "EROFS loop-backed mounts do not work here" in why

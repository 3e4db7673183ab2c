"""erofsimage.build: the on-disk format, field by field, read back with ``struct`` at the offsets
``fs/erofs/erofs_fs.h`` documents.

No ``fsck.erofs`` that reads 512-byte blocks is packaged for Debian bookworm (erofs-utils 1.5
refuses them), so these tests parse the writer's own output, and test_erofs_mount.py has the
kernel mount every image and compares the whole tree: the kernel is the validator.
"""

from __future__ import annotations

import struct

import pytest

from csi_driver.layout.tree import ROOT, Entry, Kind
from csi_driver.views import erofsimage

DEV = "layers/sha256/" + "ab" * 32 + ".tar"


def no_read(source: str, offset: int, size: int) -> bytes:
    raise AssertionError(f"read {source} {offset}+{size}: nothing should be copied")


def superblock(image: bytes) -> dict[str, int]:
    names = ("magic", "checksum", "feature_compat", "blkszbits", "sb_extslots", "root_nid", "inos",
             "epoch", "fixed_nsec", "blocks", "meta_blkaddr", "xattr_blkaddr", "uuid", "volume_name",
             "feature_incompat", "compr_algs", "extra_devices", "devt_slotoff", "dirblkbits",
             "xattr_prefix_count", "xattr_prefix_start", "packed_nid")  # fmt: skip
    return dict(zip(names, struct.unpack_from("<IIIBBHQQIIII16s16sIHHHBBIQ", image, 1024), strict=True))


class Image:
    """A parser of the images this writer makes, independent of its code: offsets from the header."""

    def __init__(self, image: bytes) -> None:
        self.raw = image
        self.sb = superblock(image)

    def inode(self, nid: int) -> dict[str, int]:
        at = self.sb["meta_blkaddr"] * 512 + nid * 32
        names = ("format", "xattr_icount", "mode", "nb", "size", "u", "ino", "uid", "gid", "mtime", "mtime_nsec", "nlink")
        fields = dict(zip(names, struct.unpack_from("<HHHHQIIIIqII", self.raw, at), strict=True))
        fields["at"] = at
        return fields

    def data(self, nid: int) -> bytes:
        """A directory's or symlink's bytes, as data.c maps flat inodes."""
        inode = self.inode(nid)
        layout, size = inode["format"] >> 1 & 7, inode["size"]
        assert inode["format"] & 1 == 1, "extended inodes only"
        if layout == erofsimage.FLAT_PLAIN:
            start = inode["u"] * 512
            return self.raw[start : start + size]
        assert layout == erofsimage.FLAT_INLINE
        full = size // 512 * 512
        tail_at = inode["at"] + 64
        assert tail_at % 512 + size - full <= 512, "inline data crosses a block"
        return self.raw[inode["u"] * 512 : inode["u"] * 512 + full] + self.raw[tail_at : tail_at + size - full]

    def blocks(self, nid: int) -> list[list[tuple[bytes, int, int]]]:
        """A directory's blocks as (name, nid, file type) lists, as dir.c reads them."""
        data, out = self.data(nid), []
        for start in range(0, len(data), 512):
            block = data[start : start + 512]
            first = struct.unpack_from("<QHBB", block, 0)[1]
            assert first % 12 == 0 and 0 < first < 512
            count = first // 12
            dirents = [struct.unpack_from("<QHBB", block, 12 * i) for i in range(count)]
            names = []
            for i, (child, nameoff, ftype, _) in enumerate(dirents):
                end = dirents[i + 1][1] if i + 1 < count else len(block)
                names.append((block[nameoff:end].rstrip(b"\0"), child, ftype))
            out.append(names)
        return out

    def children(self, nid: int) -> dict[bytes, tuple[int, int]]:
        return {name: (child, ftype) for block in self.blocks(nid) for name, child, ftype in block}

    def lookup(self, path: str) -> int:
        nid = self.sb["root_nid"]
        for part in filter(None, path.split("/")):
            nid = self.children(nid)[part.encode()][0]
        return nid

    def chunks(self, nid: int) -> list[tuple[int, int]]:
        inode = self.inode(nid)
        bits = 9 + (inode["u"] & 0x1F)
        count = -(-inode["size"] // (1 << bits))
        at = inode["at"] + 64
        return [struct.unpack_from("<HHI", self.raw, at + 8 * i)[1:] for i in range(count)]


def file(path: str, size: int, offset: int = 512, **meta: int) -> Entry:
    return Entry(path, Kind.FILE, meta.pop("mode", 0o644), size=size, source=DEV, offset=offset, **meta)


def build(entries: list[Entry], device_size: int = 1 << 20) -> Image:
    return Image(erofsimage.build(entries, [erofsimage.Device(DEV, device_size)], no_read))


def test_superblock_fields_are_at_their_documented_offsets() -> None:
    image = build([ROOT, file("a", 10)])
    sb = image.sb
    assert sb["magic"] == 0xE0F5E1E2
    assert sb["blkszbits"] == 9 and sb["sb_extslots"] == 0 and sb["dirblkbits"] == 0
    assert sb["feature_compat"] == erofsimage.FEATURE_COMPAT_SB_CHKSUM
    assert sb["feature_incompat"] == erofsimage.FEATURE_INCOMPAT_CHUNKED_FILE | erofsimage.FEATURE_INCOMPAT_DEVICE_TABLE
    assert sb["root_nid"] == 0 and sb["inos"] == 2
    assert sb["blocks"] * 512 == len(image.raw) and len(image.raw) % 512 == 0
    assert sb["extra_devices"] == 1 and sb["devt_slotoff"] * 128 == 1536
    assert sb["meta_blkaddr"] * 512 >= 1536 + 128
    assert sb["xattr_blkaddr"] == sb["packed_nid"] == sb["compr_algs"] == 0


def test_superblock_checksum_is_the_kernels_crc32c_of_the_rest_of_its_block() -> None:
    image = build([ROOT])
    # super.c: crc32c(0x5045B54A, sb + 8, blocksize - 8) with the superblock at 1024.
    assert image.sb["checksum"] == erofsimage.crc32c(0x5045B54A, image.raw[1032:1536])
    # The kernel's crc32c has no inversions: the standard CRC-32C check value with them added.
    assert erofsimage.crc32c(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283


def test_image_without_devices_has_no_device_table() -> None:
    image = Image(erofsimage.build([ROOT, Entry("e", Kind.FILE, 0o600)], [], no_read))
    assert image.sb["extra_devices"] == 0
    assert not image.sb["feature_incompat"] & erofsimage.FEATURE_INCOMPAT_DEVICE_TABLE


def test_device_slots_name_each_tar_and_its_blocks() -> None:
    devices = [erofsimage.Device(f"layers/sha256/{i:064x}.tar", 512 * i + 1) for i in range(1, 4)]
    image = Image(erofsimage.build([ROOT], devices, no_read))
    for index, device in enumerate(devices):
        tag, blocks, uniaddr = struct.unpack_from("<64sII", image.raw, 1536 + 128 * index)
        assert tag == f"{index + 1:064x}".encode()
        assert blocks == index + 2  # 512*i + 1 bytes round up to i + 1 blocks
        assert uniaddr == 0


def test_regular_file_is_one_chunk_index_into_its_tar() -> None:
    image = build([ROOT, file("a", 1000, offset=4096, uid=70000, gid=70001, mtime=1700000000, mode=0o1755)])
    nid = image.lookup("a")
    inode = image.inode(nid)
    assert inode["format"] == 1 | erofsimage.CHUNK_BASED << 1
    assert inode["mode"] == 0o100000 | 0o1755
    assert inode["size"] == 1000 and inode["xattr_icount"] == 0
    assert inode["u"] == erofsimage.CHUNK_FORMAT_INDEXES | 1  # 1024-byte chunks hold 1000 bytes
    assert (inode["uid"], inode["gid"], inode["nlink"]) == (70000, 70001, 1)
    assert (inode["mtime"], inode["mtime_nsec"]) == (1700000000, 0)
    assert image.chunks(nid) == [(1, 4096 // 512)]


def test_file_over_4_gib_is_still_one_chunk() -> None:
    size = 5 << 30
    image = build([ROOT, file("big", size)], device_size=size + 1024)
    inode = image.inode(image.lookup("big"))
    assert inode["size"] == size and inode["u"] & 0x1F == 33 - 9
    assert image.chunks(image.lookup("big")) == [(1, 1)]


def test_negative_mtime_survives() -> None:
    image = build([ROOT, file("old", 1, mtime=-86400)])
    assert image.inode(image.lookup("old"))["mtime"] == -86400


def test_empty_file_has_no_block() -> None:
    image = build([ROOT, Entry("e", Kind.FILE, 0o640)])
    inode = image.inode(image.lookup("e"))
    assert inode["format"] == 1 | erofsimage.FLAT_PLAIN << 1
    assert inode["size"] == 0 and inode["u"] == erofsimage.NULL_ADDR


def test_file_ending_in_a_partial_last_block_of_its_device_has_its_last_chunk_copied() -> None:
    size = 100_000
    data = bytes(range(256)) * 400
    image = Image(erofsimage.build([ROOT, file("f", size, offset=512)], [erofsimage.Device(DEV, 512 + size)],
                              lambda source, offset, length: data[offset - 512 : offset - 512 + length]))  # fmt: skip
    nid = image.lookup("f")
    bits = 9 + (image.inode(nid)["u"] & 0x1F)
    chunks = image.chunks(nid)
    assert all(device == 1 and block == 1 + i * (1 << bits - 9) for i, (device, block) in enumerate(chunks[:-1]))
    device, block = chunks[-1]
    last = (len(chunks) - 1) << bits
    assert device == 0, "the last chunk is read from the image"
    assert image.raw[block * 512 : block * 512 + size - last] == data[last:size]


def test_symlink_target_is_inline_after_its_inode() -> None:
    image = build([ROOT, Entry("l", Kind.SYMLINK, 0o777, 5, 6, 7, link="/etc/passwd")])
    nid = image.lookup("l")
    inode = image.inode(nid)
    assert inode["format"] == 1 | erofsimage.FLAT_INLINE << 1 and inode["mode"] == 0o120777
    assert inode["size"] == len("/etc/passwd") and image.data(nid) == b"/etc/passwd"
    assert image.children(0)[b"l"][1] == erofsimage.FT_SYMLINK


@pytest.mark.parametrize("length", [448, 449, 512, 1000, 4095])
def test_long_symlink_targets_take_blocks_of_their_own(length: int) -> None:
    target = ("x" * 99 + "/") * 41
    target = target[:length]
    image = build([ROOT, Entry("l", Kind.SYMLINK, 0o777, link=target)])
    nid = image.lookup("l")
    assert image.data(nid) == target.encode()


def test_hardlinks_are_one_inode_with_their_link_count() -> None:
    image = build([ROOT, Entry("d", Kind.DIR, 0o755), file("a", 10), file("d/b", 10), file("c", 10, offset=1024)])
    assert image.lookup("a") == image.lookup("d/b") != image.lookup("c")
    assert image.inode(image.lookup("a"))["nlink"] == 2
    assert image.inode(image.lookup("c"))["nlink"] == 1
    assert image.sb["inos"] == 4


def test_whole_blobs_sharing_a_source_stay_separate_files() -> None:
    image = build([ROOT, file("x", 10, offset=0), file("y", 10, offset=0)])
    assert image.lookup("x") != image.lookup("y")
    assert image.inode(image.lookup("x"))["nlink"] == 1


def test_directory_holds_dot_dotdot_and_names_in_byte_order() -> None:
    names = ["b", "-a", "!x", "a.b", "é", "Z", ".hidden", "a"]
    entries = [ROOT, Entry("d", Kind.DIR, 0o1777, 0, 0, 5), *(file(f"d/{n}", 1, offset=512 * (i + 1)) for i, n in enumerate(names))]
    image = build(entries)
    d = image.lookup("d")
    listed = [name for block in image.blocks(d) for name, _, _ in block]
    assert listed == sorted([b".", b"..", *(n.encode() for n in names)])
    assert listed[:3] == [b"!x", b"-a", b"."], "names before '.' sort before it"
    children = image.children(d)
    assert children[b"."] == (d, erofsimage.FT_DIR) and children[b".."] == (0, erofsimage.FT_DIR)
    assert image.children(0)[b".."] == (0, erofsimage.FT_DIR), "the root is its own parent"
    inode = image.inode(d)
    assert inode["mode"] == 0o041777 and inode["nlink"] == 2
    assert inode["size"] == 12 * len(listed) + sum(map(len, listed))


def test_directory_link_count_is_two_plus_its_subdirectories() -> None:
    entries = [ROOT, *(Entry(f"s{i}", Kind.DIR, 0o755) for i in range(3)), file("f", 1)]
    assert build(entries).inode(0)["nlink"] == 5


def test_big_directory_spans_blocks_sorted_across_them() -> None:
    names = [f"{i:05d}-{'n' * (i % 40)}" for i in range(2000)]
    image = build([ROOT, *(Entry(n, Kind.DIR, 0o755) for n in names)])
    blocks = image.blocks(0)
    assert len(blocks) > 100
    flat = [name for block in blocks for name, _, _ in block]
    assert flat == sorted(flat) and len(flat) == 2002
    for block in blocks:  # dirents then names, all inside the block
        assert 12 * len(block) + sum(len(name) for name, _, _ in block) <= 512
    inode = image.inode(0)
    assert inode["size"] == 512 * (len(blocks) - 1) + 12 * len(blocks[-1]) + sum(len(n) for n, _, _ in blocks[-1])
    for name in names[::97]:
        assert image.inode(image.lookup(name))["mode"] == 0o040755


def test_inodes_with_inline_data_never_cross_a_block() -> None:
    entries = [ROOT, *(Entry(f"l{i}", Kind.SYMLINK, 0o777, link="t" * (i * 7 % 440 + 1)) for i in range(300))]
    image = build(entries)
    for i in range(300):
        nid = image.lookup(f"l{i}")
        assert image.data(nid) == b"t" * (i * 7 % 440 + 1)


def test_root_is_the_first_inode_whatever_the_entry_order() -> None:
    entries = [file("z/f", 1), Entry("z", Kind.DIR, 0o700), ROOT._replace(mode=0o750)]
    image = build(entries)
    assert image.sb["root_nid"] == 0 and image.inode(0)["mode"] == 0o040750


@pytest.mark.parametrize(
    ("entries", "devices", "message"),
    [
        ([file("a", 1)], [erofsimage.Device(DEV, 1024)], "no root"),
        ([ROOT, file("a", 1), file("a", 2, offset=1024)], [erofsimage.Device(DEV, 2048)], "same path"),
        ([ROOT, file("d/a", 1)], [erofsimage.Device(DEV, 1024)], "not a directory"),
        ([ROOT, file("a", 1)], [], "not a device"),
        ([ROOT, file("a", 1, offset=100)], [erofsimage.Device(DEV, 1024)], "not block-aligned"),
        ([ROOT, file("a", 1000)], [erofsimage.Device(DEV, 1024)], "past its end"),
        ([ROOT], [erofsimage.Device(DEV, 1), erofsimage.Device(DEV, 1)], "listed twice"),
        ([ROOT], [erofsimage.Device(DEV, 3 << 40)], "more than 2 TiB"),
    ],
)
def test_what_the_format_cannot_hold_is_refused(entries: list[Entry], devices: list[erofsimage.Device], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        erofsimage.build(entries, devices, no_read)


def test_sources_lists_each_device_once_in_order_of_use() -> None:
    other = "blobs/sha256/" + "cd" * 32
    entries = [ROOT, file("a", 1), Entry("b", Kind.FILE, 0o644, size=1, source=other), file("c", 1), Entry("e", Kind.FILE, 0o644)]
    assert erofsimage.sources(entries) == [DEV, other]


def test_same_tree_same_bytes() -> None:
    entries = [ROOT, file("b", 3), file("a", 2, offset=1024), Entry("l", Kind.SYMLINK, 0o777, link="a")]
    assert build(entries).raw == build(list(reversed(entries))).raw

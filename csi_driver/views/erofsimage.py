"""An EROFS *metadata* image of a tree whose file bytes stay in the store's layer tars.

Why hand-written: no Python library writes EROFS, and ``mkfs.erofs --tar=i`` (erofs-utils) would
be a second reading of the tars, a subprocess and a package the node image must carry, for a
format this small. The image holds only metadata; every regular file is chunk-based and its one
chunk points into a layer tar, which the mount attaches as one of the image's extra devices, so
the kernel reads a file straight from the tar and nothing is copied.

The format follows the Linux kernel's ``fs/erofs/erofs_fs.h`` (on-disk structures) and
``Documentation/filesystems/erofs.rst``, and what ``fs/erofs`` checks when it reads them:

- ``super.c``: the superblock at byte 1024; ``blkszbits`` 9 (512-byte blocks, so a tar member's
  data, which starts on a 512-byte boundary, is a block address of its tar); the checksum
  (``EROFS_FEATURE_COMPAT_SB_CHKSUM``) is crc32c seeded 0x5045B54A, without final inversion, of
  the superblock's block from the byte after the checksum field to the block's end, computed
  last; the device table (``erofs_deviceslot``, 128 bytes each) starts at
  ``devt_slotoff * 128``; ``extra_devices`` must equal the number of ``device=`` options.
- ``inode.c``: extended (64-byte) inodes only: 32-bit owners, 64-bit sizes, and a mtime of their
  own in every kernel (compact inodes carry one only from 6.15, ``EROFS_FEATURE_COMPAT_MTIME``);
  a nid is the inode's offset from ``meta_blkaddr`` in 32-byte slots; the root's nid must fit
  the 16 bits of ``rootnid_2b``, so the root is the first inode.
- ``data.c``: a regular file is ``EROFS_INODE_CHUNK_BASED`` with ``EROFS_CHUNK_FORMAT_INDEXES``
  (8-byte indexes: device id, block address) right after the inode. Its chunk size
  (``512 << (format & 0x1f)``) is the smallest power of two that holds the whole file, so one
  index maps it: a tar member's bytes are contiguous. The kernel maps the last (here: only)
  chunk only up to the file size rounded up to a block, so a size that is no multiple of the
  chunk size needs nothing more. 32-bit block addresses reach 2 TiB into each tar.
- ``dir.c`` and ``namei.c``: a directory is 512-byte blocks of ``erofs_dirent`` (12 bytes)
  followed by the names, no entry straddling blocks, sorted by name bytes within and across
  blocks (lookup is a binary search over blocks, then within one), ``.`` and ``..`` included.
  Directories and symlinks keep the data of their last partial block inline after the inode
  (``EROFS_INODE_FLAT_INLINE``) when inode and tail fit one block, else all of it in blocks of
  their own (``EROFS_INODE_FLAT_PLAIN``); a symlink inline in its inode's block is a "fast"
  symlink.
- Empty files are ``EROFS_INODE_FLAT_PLAIN`` with no block (``EROFS_NULL_ADDR``).

Hardlinks: the entries that ``layout.tree.hardlinks`` says name one inode (the layout step's
copies of a hardlink's target, with the same ``source`` and ``offset``) become one inode with
their number as its link count, as in the other views.

No ``fsck.erofs`` packaged for Debian bookworm (erofs-utils 1.5) reads 512-byte blocks: the tests
validate images by mounting them in the kernel and comparing the whole tree.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from csi_driver.layout.tree import Entry, Kind, hardlinks

BLOCK_BITS = 9
BLOCK = 1 << BLOCK_BITS
SUPER_OFFSET = 1024
SUPER_MAGIC = 0xE0F5E1E2
CHECKSUM_SEED = 0x5045B54A

FEATURE_COMPAT_SB_CHKSUM = 0x1
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
FEATURE_INCOMPAT_DEVICE_TABLE = 0x8

LAYOUT_EXTENDED = 1
FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
CHUNK_FORMAT_INDEXES = 0x20
NULL_ADDR = 0xFFFFFFFF

FT_REG_FILE, FT_DIR, FT_SYMLINK = 1, 2, 7
S_IFREG, S_IFDIR, S_IFLNK = 0o100000, 0o040000, 0o120000

SLOT = 32  # nid granularity: the size of a compact inode
DEVICE_SLOT = 128
MAX_DEVICES = 0xFFFF  # extra_devices and a chunk index's device_id are 16 bits
MAX_BLOCKS = 0xFFFFFFFF  # without the (experimental) 48-bit layout, block numbers are 32 bits

# struct erofs_super_block: magic, checksum, feature_compat, blkszbits, sb_extslots, rootnid_2b,
# inos, epoch, fixed_nsec, blocks_lo, meta_blkaddr, xattr_blkaddr, uuid, volume_name,
# feature_incompat, available_compr_algs, extra_devices, devt_slotoff, dirblkbits,
# xattr_prefix_count, xattr_prefix_start, packed_nid (then reserved to 128 bytes).
SUPERBLOCK = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQ24x")
# struct erofs_inode_extended: i_format, i_xattr_icount, i_mode, i_nb (reserved here), i_size,
# i_u (startblk_lo, or the chunk format in its low half), i_ino, i_uid, i_gid, i_mtime,
# i_mtime_nsec, i_nlink, reserved.
INODE = struct.Struct("<HHHHQIIIIqII16x")
CHUNK_INDEX = struct.Struct("<HHI")  # startblk_hi, device_id, startblk_lo
DIRENT = struct.Struct("<QHBB")  # nid, nameoff, file_type, reserved
DEVICE = struct.Struct("<64sIIIH50x")  # tag, blocks_lo, uniaddr_lo, blocks_hi, uniaddr_hi

_FORMAT_CHUNKS = LAYOUT_EXTENDED | CHUNK_BASED << 1
_FORMAT_PLAIN = LAYOUT_EXTENDED | FLAT_PLAIN << 1
_FORMAT_INLINE = LAYOUT_EXTENDED | FLAT_INLINE << 1
_MAX_CHUNK_BITS = BLOCK_BITS + 0x1F  # a chunk format's 5 bits: 1 TiB chunks
_INLINE_MAX = BLOCK - INODE.size  # the largest tail that fits a block after its inode


class Device(NamedTuple):
    """A layer tar (or blob) attached to the image as an extra device: ``source`` as entries name
    it (relative to the state dir), ``size`` its bytes. Device ids count from 1 in list order,
    which is the order the mount must pass them in."""

    source: str
    size: int


Reader = Callable[[str, int, int], bytes]
"""``read(source, offset, size)``: bytes of a device, for the few that the image copies."""


def reader(root: Path) -> Reader:
    """A ``Reader`` of store files (``source`` relative to ``root``, the state dir)."""

    def read(source: str, offset: int, size: int) -> bytes:
        fd = os.open(root / source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    return read


def sources(entries: Iterable[Entry]) -> list[str]:
    """The store files a tree's regular files read from, in order of first use: its devices."""
    return list(dict.fromkeys(entry.source for entry in entries if entry.kind is Kind.FILE and entry.size))


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(crc: int, data: bytes) -> int:
    """The kernel's ``crc32c(crc, data, len)``: no inversion before or after (only 504 bytes of
    superblock go through it)."""
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class _Inode:
    """One inode being laid out: the entry it shows, and where its bytes go."""

    __slots__ = ("children", "chunk_bits", "chunks", "data", "entry", "layout", "nid", "nlink", "parent", "size", "startblk")

    def __init__(self, entry: Entry, size: int, nlink: int) -> None:
        self.entry = entry
        self.size = size
        self.nlink = nlink
        self.children: dict[bytes, _Inode] | None = None  # a directory's, by name
        self.data = b""  # a symlink's target (a directory's blocks are made once nids are known)
        self.layout = 0
        self.chunk_bits = 0
        self.chunks = 0  # a regular file's chunk indexes after the inode
        self.nid = 0
        self.startblk = NULL_ADDR
        self.parent = self  # a directory's, set as the tree is linked; the root is its own


def build(entries: Sequence[Entry], devices: Sequence[Device], read: Reader) -> bytes:
    """The image of ``entries``, whose regular files read from ``devices``.

    ``entries`` is a tree as the layout step builds it: paths relative and normalised, the root
    ``""`` a directory, every parent present as a directory, in any order. ``read`` is called
    only for a file that ends inside the last, partial block of its device (see ``_tail_copied``).
    Raises ValueError for a tree or device the format cannot hold.
    """
    device_ids = {device.source: index for index, device in enumerate(devices, 1)}
    if len(device_ids) != len(devices):
        raise ValueError("a device is listed twice")
    if len(devices) > MAX_DEVICES:
        raise ValueError(f"{len(devices)} devices, more than the {MAX_DEVICES} an image can name")
    for device in devices:
        if (device.size + BLOCK - 1) >> BLOCK_BITS > MAX_BLOCKS:
            raise ValueError(f"device {device.source!r} has {device.size} bytes, more than 2 TiB")
    sizes = {device.source: device.size for device in devices}
    root, inodes, dirs = _inodes(entries)
    packed = {id(node): _pack_directory(node) for node in dirs}

    # Where everything goes: superblock, device table, the blocks of directories, symlinks and
    # copied tails, then the inodes from meta_blkaddr on, the root first.
    devt_start = SUPER_OFFSET + BLOCK  # the block after the superblock's
    next_block = _round_up(devt_start + DEVICE_SLOT * len(devices), BLOCK) >> BLOCK_BITS
    tails: list[tuple[_Inode, bytes]] = []
    for node in inodes:
        size = node.size
        if node.entry.kind is Kind.FILE:
            if size:
                node.layout = _FORMAT_CHUNKS
                tail = _chunks(node, sizes, read)
                if tail is not None:
                    node.startblk = next_block
                    next_block += (len(tail) + BLOCK - 1) >> BLOCK_BITS
                    tails.append((node, tail))
            else:
                node.layout = _FORMAT_PLAIN
            continue
        tail_bytes = size & (BLOCK - 1)
        full = size >> BLOCK_BITS
        if tail_bytes and tail_bytes <= _INLINE_MAX:
            node.layout = _FORMAT_INLINE
        else:
            node.layout = _FORMAT_PLAIN
            full += 1 if tail_bytes else 0
        if full:
            node.startblk = next_block
            next_block += full
    meta_blkaddr = next_block
    meta_start = meta_blkaddr << BLOCK_BITS

    offset = 0
    for node in inodes:
        node.nid = offset // SLOT
        if node.layout == _FORMAT_INLINE:
            tail_bytes = node.size & (BLOCK - 1)
            if (offset & (BLOCK - 1)) + INODE.size + tail_bytes > BLOCK:
                offset = _round_up(offset, BLOCK)  # inline data may not cross a block
                node.nid = offset // SLOT
            offset += INODE.size + tail_bytes
        else:
            offset += INODE.size + CHUNK_INDEX.size * node.chunks
        offset = _round_up(offset, SLOT)
    total_blocks = meta_blkaddr + (_round_up(offset, BLOCK) >> BLOCK_BITS)
    if total_blocks > MAX_BLOCKS:
        raise ValueError(f"the image would have {total_blocks} blocks, more than 2 TiB")

    image = bytearray(total_blocks << BLOCK_BITS)
    for index, device in enumerate(devices):
        tag = os.path.basename(device.source).removesuffix(".tar").encode()[:64]
        DEVICE.pack_into(image, devt_start + index * DEVICE_SLOT, tag, (device.size + BLOCK - 1) >> BLOCK_BITS, 0, 0, 0)
    for node, tail in tails:
        start = node.startblk << BLOCK_BITS
        image[start : start + len(tail)] = tail
    pack_inode, pack_index = INODE.pack_into, CHUNK_INDEX.pack_into
    for ino, node in enumerate(inodes, 1):
        entry = node.entry
        at = meta_start + node.nid * SLOT
        kind = entry.kind
        if kind is Kind.FILE:
            if node.chunks:
                pack_inode(image, at, node.layout, 0, S_IFREG | entry.mode, 0, node.size,
                           CHUNK_FORMAT_INDEXES | (node.chunk_bits - BLOCK_BITS),
                           ino, entry.uid, entry.gid, entry.mtime, entry.mtime_nsec, node.nlink)  # fmt: skip
                device, block, step = device_ids[entry.source], entry.offset >> BLOCK_BITS, 1 << (node.chunk_bits - BLOCK_BITS)
                at += INODE.size
                for _ in range(node.chunks - (1 if node.startblk != NULL_ADDR else 0)):
                    pack_index(image, at, 0, device, block)
                    at, block = at + CHUNK_INDEX.size, block + step
                if node.startblk != NULL_ADDR:
                    pack_index(image, at, 0, 0, node.startblk)  # the copied last chunk, in the image
            else:
                pack_inode(image, at, node.layout, 0, S_IFREG | entry.mode, 0, 0, NULL_ADDR,
                           ino, entry.uid, entry.gid, entry.mtime, entry.mtime_nsec, node.nlink)  # fmt: skip
            continue
        data = _directory_bytes(node, packed[id(node)]) if kind is Kind.DIR else node.data
        mode = (S_IFDIR if kind is Kind.DIR else S_IFLNK) | entry.mode
        startblk = node.startblk if node.startblk != NULL_ADDR else 0
        pack_inode(image, at, node.layout, 0, mode, 0, node.size, startblk,
                   ino, entry.uid, entry.gid, entry.mtime, entry.mtime_nsec, node.nlink)  # fmt: skip
        full = node.size & ~(BLOCK - 1) if node.layout == _FORMAT_INLINE else node.size
        if node.layout == _FORMAT_INLINE:
            image[at + INODE.size : at + INODE.size + node.size - full] = data[full : node.size]
        if full:
            start = node.startblk << BLOCK_BITS
            image[start : start + full] = data[:full]

    features = FEATURE_INCOMPAT_CHUNKED_FILE | (FEATURE_INCOMPAT_DEVICE_TABLE if devices else 0)
    SUPERBLOCK.pack_into(
        image, SUPER_OFFSET, SUPER_MAGIC, 0, FEATURE_COMPAT_SB_CHKSUM, BLOCK_BITS, 0, root.nid,
        len(inodes), 0, 0, total_blocks, meta_blkaddr, 0, bytes(16), bytes(16), features, 0,
        len(devices), devt_start // DEVICE_SLOT, 0, 0, 0, 0,
    )  # fmt: skip
    checked = SUPER_OFFSET + 8  # past magic and checksum, to the end of the superblock's block
    checksum = crc32c(CHECKSUM_SEED, bytes(image[checked : SUPER_OFFSET + BLOCK]))
    struct.pack_into("<I", image, SUPER_OFFSET + 4, checksum)
    return bytes(image)


def _chunks(node: _Inode, sizes: dict[str, int], read: Reader) -> bytes | None:
    """Choose a regular file's chunks; the bytes of its last chunk when they must be copied.

    A file is one chunk, the smallest power of two of blocks that holds it: a tar member's bytes
    are contiguous. But the kernel reads a file's last block whole, and fails the read (EIO) when
    its device ends inside that block: a blob shown as a file (ORAS) whose size is no multiple of
    512, or the last member of a tar written without padding. Such a file gets chunks of about
    sqrt(8 x size) bytes (as many 8-byte indexes as bytes copied, roughly), and its last chunk's
    bytes are copied into the image, block-padded: for 1 GiB, 128 KiB copied and 64 KiB of indexes.
    """
    entry = node.entry
    size = node.size
    if entry.source not in sizes:
        raise ValueError(f"{entry.path!r} reads from {entry.source!r}, which is not a device")
    end = entry.offset + size
    if entry.offset % BLOCK or end > sizes[entry.source]:
        raise ValueError(f"{entry.path!r} is bytes {entry.offset}..{end} of {entry.source!r}: not block-aligned or past its end")
    if _round_up(end, BLOCK) <= sizes[entry.source]:
        node.chunk_bits = min(max((size - 1).bit_length(), BLOCK_BITS), _MAX_CHUNK_BITS)
        node.chunks = (size + (1 << node.chunk_bits) - 1) >> node.chunk_bits
        return None
    node.chunk_bits = max(((8 * size - 1).bit_length() + 1) // 2, BLOCK_BITS)
    node.chunks = (size + (1 << node.chunk_bits) - 1) >> node.chunk_bits
    last = (node.chunks - 1) << node.chunk_bits
    tail = read(entry.source, entry.offset + last, size - last)
    if len(tail) != size - last:
        raise ValueError(f"{entry.source!r} ends before byte {end}, which {entry.path!r} needs")
    return tail


def _round_up(value: int, unit: int) -> int:
    return (value + unit - 1) & ~(unit - 1)


def _inodes(entries: Sequence[Entry]) -> tuple[_Inode, list[_Inode], list[_Inode]]:
    """The inodes in placement order (breadth first from the root, each directory's children by
    name), and the directories among them.

    Few objects per entry (one ``_Inode``; no tuples, no lists): past ~50,000 entries the
    collector's passes over every live object, which each new container object brings nearer,
    cost more than the work itself: 42 µs an entry of a 100,000-entry tree with four objects
    each, 10 with one (``bench/bench_erofs.py``).
    """
    links = hardlinks(entries)
    by_path: dict[str, _Inode] = {}
    shared: dict[str, dict[int, _Inode]] = {source: {} for source in links}  # the inodes of hardlinks, made
    for entry in entries:
        kind = entry.kind
        if kind is Kind.FILE:
            group = links.get(entry.source)
            names = group.get(entry.offset) if group is not None else None
            if names is None:
                node = _Inode(entry, entry.size, 1)
            else:
                made = shared[entry.source]
                node = made.get(entry.offset)
                if node is None:
                    node = made[entry.offset] = _Inode(entry, entry.size, names)
        elif kind is Kind.DIR:
            node = _Inode(entry, 0, 2)
            node.children = {}
        elif kind is Kind.SYMLINK:
            node = _Inode(entry, 0, 1)
            node.data = entry.link.encode()
            node.size = len(node.data)
        else:
            raise ValueError(f"{entry.path!r} has the unknown kind {kind!r}")
        by_path[entry.path] = node
    if len(by_path) != len(entries):
        raise ValueError("two entries have the same path")
    root = by_path.get("")
    if root is None or root.children is None:
        raise ValueError("the tree has no root directory")
    for entry in entries:
        if not entry.path:
            continue
        parent, _, name = entry.path.rpartition("/")
        directory = by_path.get(parent)
        if directory is None or directory.children is None:
            raise ValueError(f"the parent of {entry.path!r} is not a directory of the tree")
        node = by_path[entry.path]
        directory.children[name.encode()] = node
        if node.children is not None:
            directory.nlink += 1
            node.parent = directory
    inodes = [root]
    dirs = []
    seen: set[int] = set()  # hardlinked inodes already placed
    for node in inodes:  # grows while it is walked: breadth first
        children = node.children
        if children is not None:
            dirs.append(node)
            for name in sorted(children):
                child = children[name]
                if child.nlink == 1 or child.children is not None:
                    inodes.append(child)
                elif id(child) not in seen:
                    seen.add(id(child))
                    inodes.append(child)
    return root, inodes, dirs


def _pack_directory(node: _Inode) -> list[list[bytes]]:
    """A directory's names packed into blocks, and its size set: ``.`` and ``..`` among the
    names in byte order, each block as many dirents as fit followed by their names, none split
    across blocks. The size runs to the end of the last name, as ``mkfs.erofs`` records it."""
    assert node.children is not None
    names = [b".", b"..", *node.children]
    names.sort()
    blocks: list[list[bytes]] = []
    block: list[bytes] = []
    used = 0
    for name in names:
        need = DIRENT.size + len(name)
        if used + need > BLOCK:
            blocks.append(block)
            block, used = [], 0
        block.append(name)
        used += need
    blocks.append(block)
    node.size = (len(blocks) - 1) * BLOCK + used
    return blocks


_FILE_TYPES = {Kind.FILE: FT_REG_FILE, Kind.DIR: FT_DIR, Kind.SYMLINK: FT_SYMLINK}


def _directory_bytes(node: _Inode, blocks: list[list[bytes]]) -> bytes:
    """A packed directory's bytes, now that every inode has its nid."""
    children = node.children
    assert children is not None
    out = bytearray(len(blocks) * BLOCK)
    pack, types = DIRENT.pack_into, _FILE_TYPES
    for number, block in enumerate(blocks):
        at = number * BLOCK
        nameoff = DIRENT.size * len(block)
        for index, name in enumerate(block):
            child = node if name == b"." else node.parent if name == b".." else children[name]
            pack(out, at + index * DIRENT.size, child.nid, nameoff, types[child.entry.kind], 0)
            out[at + nameoff : at + nameoff + len(name)] = name
            nameoff += len(name)
    return bytes(out)


def write(path: Path, entries: Sequence[Entry], devices: Sequence[Device], read: Reader) -> None:
    """Write the image of ``entries`` to ``path`` whole or not at all: a temp file beside it,
    flushed to the disk, renamed into place, and the rename flushed (as the store commits)."""
    image = build(entries, devices, read)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

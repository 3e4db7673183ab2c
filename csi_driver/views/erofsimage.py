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

import bisect
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


_FILE_INODE = struct.Struct(INODE.format + CHUNK_INDEX.format[1:] + "24x")
"""A regular file of one chunk: its inode, its one chunk index and the padding to the next slot
(96 bytes), packed in one call: nearly every file of a layer is one."""
_FILE_TYPES = {Kind.FILE: FT_REG_FILE, Kind.DIR: FT_DIR, Kind.SYMLINK: FT_SYMLINK}


class _Directory(NamedTuple):
    """A directory whose bytes wait for the nids of its children: its names (``.`` and ``..``
    among them) in byte order, the path of the entry each names and its file type (three lists,
    not a tuple per name: fewer objects for the collector to visit); the index of each block's
    first name; its size; where its blocks go (a block number) and where its inline tail goes
    (an offset into the inode area, -1 for none)."""

    names: list[bytes]
    paths: list[str]
    types: list[int]
    starts: list[int]
    size: int
    startblk: int
    inline_at: int


def build(entries: Sequence[Entry], devices: Sequence[Device], read: Reader) -> bytes:
    """The image of ``entries``, whose regular files read from ``devices``.

    ``entries`` is a tree as the layout step builds it: paths relative and normalised, the root
    ``""`` a directory, every parent present as a directory, in any order. ``read`` is called
    only for a file that ends inside the last, partial block of its device (see ``_chunks``).
    Raises ValueError for a tree or device the format cannot hold.

    One pass over the inodes in placement order (``_placement``) lays out each inode and the
    blocks it needs, packing every inode but a directory's dirents as it goes; the dirents follow
    once every nid is known. The cold publish waits for this (12,600 entries of the 256 MiB bench
    image), so the pass does per entry only what the format needs: a regular file of one chunk is
    one ``pack`` of 96 bytes, and no container object (which the collector would visit) is made per
    file (bench/RESULTS.md).
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
    order, children, nlinks, aliases = _placement(entries)

    # The image: superblock, device table, the blocks of directories, symlinks and copied tails
    # (from ``next_block`` on, in placement order), then the inodes (``meta``) from meta_blkaddr
    # on, the root first. A nid is an inode's offset in ``meta`` in slots.
    devt_start = SUPER_OFFSET + BLOCK  # the block after the superblock's
    next_block = _round_up(devt_start + DEVICE_SLOT * len(devices), BLOCK) >> BLOCK_BITS
    blocks: list[tuple[int, bytes]] = []  # (block number, bytes) of symlinks and copied tails
    directories: list[_Directory] = []
    nids: dict[str, int] = {}
    meta = bytearray()
    pack_file, pack_inode = _FILE_INODE.pack, INODE.pack
    for ino, entry in enumerate(order, 1):
        path, kind, mode, uid, gid, mtime, size, link, source, offset, nsec = entry
        at = len(meta)
        if kind is Kind.FILE:
            nids[path] = at // SLOT
            nlink = nlinks.get(path, 1) if nlinks else 1
            if not size:
                meta += pack_inode(_FORMAT_PLAIN, 0, S_IFREG | mode, 0, 0, NULL_ADDR, ino, uid, gid, mtime, nsec, nlink)
                continue
            device_size = sizes.get(source)
            if device_size is None:
                raise ValueError(f"{path!r} reads from {source!r}, which is not a device")
            end = offset + size
            if offset & (BLOCK - 1) or end > device_size:
                raise ValueError(f"{path!r} is bytes {offset}..{end} of {source!r}: not block-aligned or past its end")
            bits = (size - 1).bit_length()
            if (end + BLOCK - 1) & ~(BLOCK - 1) <= device_size and bits <= _MAX_CHUNK_BITS:
                meta += pack_file(_FORMAT_CHUNKS, 0, S_IFREG | mode, 0, size,
                                  CHUNK_FORMAT_INDEXES | (bits - BLOCK_BITS if bits > BLOCK_BITS else 0),
                                  ino, uid, gid, mtime, nsec, nlink, 0, device_ids[source], offset >> BLOCK_BITS)  # fmt: skip
                continue
            chunk_bits, indexes, tail = _chunks(entry, device_size, device_ids[source], next_block, read)
            if tail:
                blocks.append((next_block, tail))
                next_block += (len(tail) + BLOCK - 1) >> BLOCK_BITS
            meta += pack_inode(_FORMAT_CHUNKS, 0, S_IFREG | mode, 0, size, CHUNK_FORMAT_INDEXES | (chunk_bits - BLOCK_BITS),
                               ino, uid, gid, mtime, nsec, nlink)  # fmt: skip
            meta += indexes
            meta += bytes(_round_up(len(meta), SLOT) - len(meta))
            continue
        if kind is Kind.DIR:
            names, paths, types, starts, size = _pack_directory(path, children.get(path, ()))
            subdirs = types.count(FT_DIR) - 2  # not . and ..
            mode, data, nlink = S_IFDIR | mode, b"", 2 + subdirs
        elif kind is Kind.SYMLINK:
            data = link.encode()
            mode, size, nlink = S_IFLNK | mode, len(data), 1
        else:
            raise ValueError(f"{path!r} has the unknown kind {kind!r}")
        tail_bytes = size & (BLOCK - 1)
        full = size >> BLOCK_BITS
        if tail_bytes and tail_bytes <= _INLINE_MAX:
            layout, inline = _FORMAT_INLINE, tail_bytes
            if (at & (BLOCK - 1)) + INODE.size + tail_bytes > BLOCK:
                meta += bytes(_round_up(at, BLOCK) - at)  # inline data may not cross a block
                at = len(meta)
        else:
            layout, inline = _FORMAT_PLAIN, 0
            full += 1 if tail_bytes else 0
        startblk = NULL_ADDR
        if full:
            startblk, next_block = next_block, next_block + full
        nids[path] = at // SLOT
        meta += pack_inode(layout, 0, mode, 0, size, startblk if full else 0, ino, uid, gid, mtime, nsec, nlink)
        if kind is Kind.DIR:
            directories.append(_Directory(names, paths, types, starts, size, startblk, len(meta) if inline else -1))
            meta += bytes(inline)
        else:
            if full:
                blocks.append((startblk, data[: size - inline]))
            meta += data[size - inline :]
        meta += bytes(_round_up(len(meta), SLOT) - len(meta))
    meta_blkaddr = next_block
    meta_start = meta_blkaddr << BLOCK_BITS
    total_blocks = meta_blkaddr + (_round_up(len(meta), BLOCK) >> BLOCK_BITS)
    if total_blocks > MAX_BLOCKS:
        raise ValueError(f"the image would have {total_blocks} blocks, more than 2 TiB")
    for path, shown in aliases.items():
        nids[path] = nids[shown]  # a hardlink: the nid of the entry placed for it

    image = bytearray(total_blocks << BLOCK_BITS)
    for index, device in enumerate(devices):
        tag = os.path.basename(device.source).removesuffix(".tar").encode()[:64]
        DEVICE.pack_into(image, devt_start + index * DEVICE_SLOT, tag, (device.size + BLOCK - 1) >> BLOCK_BITS, 0, 0, 0)
    for block, data in blocks:
        start = block << BLOCK_BITS
        image[start : start + len(data)] = data
    image[meta_start : meta_start + len(meta)] = meta
    for directory in directories:
        data = _directory_bytes(directory, nids)
        size = directory.size
        full = size if directory.inline_at < 0 else size & ~(BLOCK - 1)
        if full:
            start = directory.startblk << BLOCK_BITS
            image[start : start + full] = data[:full]
        if directory.inline_at >= 0:
            at = meta_start + directory.inline_at
            image[at : at + size - full] = data[full:size]

    features = FEATURE_INCOMPAT_CHUNKED_FILE | (FEATURE_INCOMPAT_DEVICE_TABLE if devices else 0)
    SUPERBLOCK.pack_into(
        image, SUPER_OFFSET, SUPER_MAGIC, 0, FEATURE_COMPAT_SB_CHKSUM, BLOCK_BITS, 0, 0,  # the root: nid 0
        len(order), 0, 0, total_blocks, meta_blkaddr, 0, bytes(16), bytes(16), features, 0,
        len(devices), devt_start // DEVICE_SLOT, 0, 0, 0, 0,
    )  # fmt: skip
    checked = SUPER_OFFSET + 8  # past magic and checksum, to the end of the superblock's block
    checksum = crc32c(CHECKSUM_SEED, bytes(image[checked : SUPER_OFFSET + BLOCK]))
    struct.pack_into("<I", image, SUPER_OFFSET + 4, checksum)
    return bytes(image)


def _chunks(entry: Entry, device_size: int, device: int, next_block: int, read: Reader) -> tuple[int, bytes, bytes]:
    """A regular file that one chunk index cannot map: its chunk size (in bits), its chunk indexes,
    and the bytes of its last chunk when they must be copied into the image at ``next_block``.

    A file is one chunk, the smallest power of two of blocks that holds it: a tar member's bytes
    are contiguous. Only a file over 1 TiB (the largest chunk) needs several. And the kernel reads
    a file's last block whole, and fails the read (EIO) when its device ends inside that block: a
    blob shown as a file (ORAS) whose size is no multiple of 512, or the last member of a tar
    written without padding. Such a file gets chunks of about sqrt(8 x size) bytes (as many 8-byte
    indexes as bytes copied, roughly), and its last chunk's bytes are copied into the image,
    block-padded: for 1 GiB, 128 KiB copied and 64 KiB of indexes.
    """
    size, offset = entry.size, entry.offset
    end = offset + size
    copied = _round_up(end, BLOCK) > device_size
    if copied:
        chunk_bits = max(((8 * size - 1).bit_length() + 1) // 2, BLOCK_BITS)
    else:
        chunk_bits = min(max((size - 1).bit_length(), BLOCK_BITS), _MAX_CHUNK_BITS)
    chunks = (size + (1 << chunk_bits) - 1) >> chunk_bits
    step = 1 << (chunk_bits - BLOCK_BITS)
    mapped = chunks - 1 if copied else chunks
    block = offset >> BLOCK_BITS
    indexes = b"".join(CHUNK_INDEX.pack(0, device, block + i * step) for i in range(mapped))
    if not copied:
        return chunk_bits, indexes, b""
    last = (chunks - 1) << chunk_bits
    tail = read(entry.source, offset + last, size - last)
    if len(tail) != size - last:
        raise ValueError(f"{entry.source!r} ends before byte {end}, which {entry.path!r} needs")
    return chunk_bits, indexes + CHUNK_INDEX.pack(0, 0, next_block), tail


def _round_up(value: int, unit: int) -> int:
    return (value + unit - 1) & ~(unit - 1)


def _placement(
    entries: Sequence[Entry],
) -> tuple[list[Entry], dict[str, list[Entry]], dict[str, int], dict[str, str]]:
    """The entries that become inodes, in placement order (breadth first from the root, each
    directory's children by name); each directory's children by name; and, for a tree with
    hardlinks only (both empty otherwise, so a file costs no lookup), each hardlinked path's link
    count and the path of the entry placed for it.

    A directory's children sort as its entries do: their paths share the directory's prefix, and
    code point order is UTF-8 byte order (the layout admits only paths that are UTF-8).
    The entries that ``hardlinks`` says name one inode become one inode, placed where the first
    of them is met and showing the first of them in ``entries``.
    """
    root = None
    kids: dict[str, list[Entry]] = {}
    for entry in entries:
        path = entry.path
        if not path:
            root = entry
            continue
        parent = path.rpartition("/")[0]
        siblings = kids.get(parent)
        if siblings is None:
            kids[parent] = [entry]
        else:
            siblings.append(entry)
    if len({entry.path for entry in entries}) != len(entries):
        raise ValueError("two entries have the same path")
    if root is None or root.kind is not Kind.DIR:
        raise ValueError("the tree has no root directory")
    nlinks: dict[str, int] = {}
    aliases: dict[str, str] = {}
    placed: dict[str, Entry] = {}  # the entry each hardlinked inode shows, popped as it is placed
    links = hardlinks(entries)
    if links:
        shown: dict[str, dict[int, Entry]] = {source: {} for source in links}
        for entry in entries:
            group = links.get(entry.source) if entry.kind is Kind.FILE else None
            names = group.get(entry.offset) if group is not None else None
            if names is not None:
                first = shown[entry.source].setdefault(entry.offset, entry)
                aliases[entry.path] = first.path
                nlinks[entry.path] = names
        placed = {entry.path: entry for group in shown.values() for entry in group.values()}
    order = [root]
    children: dict[str, list[Entry]] = {}
    for entry in order:  # grows while it is walked: breadth first
        if entry.kind is not Kind.DIR:
            continue
        siblings = kids.pop(entry.path, None)
        if not siblings:
            continue
        siblings.sort()
        children[entry.path] = siblings
        if not aliases:
            order += siblings
            continue
        for child in siblings:
            if child.path not in aliases:
                order.append(child)
            elif (first := placed.pop(aliases[child.path], None)) is not None:
                order.append(first)
    for siblings in kids.values():
        raise ValueError(f"the parent of {siblings[0].path!r} is not a directory of the tree")
    return order, children, nlinks, aliases


def _pack_directory(path: str, siblings: Sequence[Entry]) -> tuple[list[bytes], list[str], list[int], list[int], int]:
    """The names of directory ``path`` packed into blocks: ``.`` and ``..`` among them in byte
    order, each block as many dirents as fit followed by their names, none split across blocks.
    Returns the names, the path each names and its file type, the index of each block's first
    name, and the size, which runs to the end of the last name, as ``mkfs.erofs`` records it."""
    prefix = len(path) + 1 if path else 0
    paths = [child.path for child in siblings]
    names = [child[prefix:].encode() for child in paths]
    types = [_FILE_TYPES.get(child.kind, 0) for child in siblings]
    for name, target in ((b".", path), (b"..", path.rpartition("/")[0])):  # the root's parent is the root
        at = bisect.bisect(names, name)
        names.insert(at, name)
        paths.insert(at, target)
        types.insert(at, FT_DIR)
    starts = [0]
    used = 0
    for index, name in enumerate(names):
        need = DIRENT.size + len(name)
        if used + need > BLOCK:
            starts.append(index)
            used = 0
        used += need
    return names, paths, types, starts, (len(starts) - 1) * BLOCK + used


def _directory_bytes(directory: _Directory, nids: dict[str, int]) -> bytearray:
    """A packed directory's bytes, now that every inode has its nid."""
    names, paths, types, starts = directory.names, directory.paths, directory.types, directory.starts
    out = bytearray(len(starts) * BLOCK)
    pack = DIRENT.pack_into
    for number, (low, high) in enumerate(zip(starts, [*starts[1:], len(names)])):
        at = number * BLOCK
        nameoff = DIRENT.size * (high - low)
        for index in range(low, high):
            pack(out, at, nids[paths[index]], nameoff, types[index], 0)
            at += DIRENT.size
            nameoff += len(names[index])
        joined = b"".join(names[low:high])
        start = number * BLOCK + DIRENT.size * (high - low)
        out[start : start + len(joined)] = joined
    return out


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

"""Manifest layers → the tree a volume shows (docs/layout-rules.md).

This step reads only tar headers from the store's uncompressed layer tars and
records where each file's bytes begin; it never extracts or writes anything. So a
hostile archive can at worst be refused here: the safety rules (no ``..``, no
absolute paths, no writing through a symlink, no hardlink out of the tree) are
checked against an in-memory tree before any view ever touches a disk.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from csi_driver import errors
from csi_driver.layout.manifest import ImageManifest
from csi_driver.layout.tree import blob_relpath, decoded_relpath, ROOT, Entry, Kind

TITLE = "org.opencontainers.image.title"
UNPACK = "io.deis.oras.content.unpack"
OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
KLAUS_PREFIX = "application/vnd.giantswarm.klaus-"
KLAUS_SUFFIX = ".content.v1.tar+gzip"
# Config media types that make a manifest an image (rule 0), whatever its artifactType says.
IMAGE_CONFIGS = frozenset({"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"})

# Media type endings of the tar family and the compression each implies. The stem
# before the ending must end in a separator, so ``…/x-tar`` counts and ``…guitar``
# does not.
_TAR_ENDINGS = (("tar+gzip", "gzip"), ("tar.gzip", "gzip"), ("tar+zstd", "zstd"), ("tar", ""))
_SEPARATORS = ("/", ".", "-", "+")
# Permission and sticky bits survive; setuid/setgid never reach a volume.
_KEPT_MODE = 0o1777
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
# What a Linux file system can hold: a name component of NAME_MAX bytes, a symlink target shorter
# than PATH_MAX, owners that fit uid_t/gid_t other than (uid_t)-1 ("no change" to chown), and an
# mtime whose nanoseconds fit the kernel's signed 64 bits. A member outside these is hostile
# or broken; it would otherwise fail much later, in SQLite, a chown or the FUSE view.
_NAME_MAX = 255
_LINK_MAX = 4095
_MAX_ID = 2**32 - 2
_MAX_MTIME = (2**63 - 1) // 10**9
# The most bytes a PAX extended header or GNU long name may hold, as in Go's archive/tar
# (containerd, Docker): tarfile reads such a header's data into memory whole.
_MAX_SPECIAL = 1 << 20


@dataclass(frozen=True)
class Layer:
    """A manifest's layer descriptor, as far as placing it needs."""

    digest: str
    media_type: str
    annotations: Mapping[str, str]
    size: int
    image: bool = False  # the manifest's config is an image config: rule 0 places the layer


@dataclass(frozen=True)
class Limits:
    """Bounds a hostile artifact cannot push the driver past (docs/layout-rules.md, "What is refused")."""

    max_entries: int = 1_000_000  # --max-entries
    max_unpacked_bytes: int = 64 << 30  # --max-unpacked-bytes


class _Member:
    """What placing a tar member needs of its header: a compact stand-in for ``tarfile.TarInfo``.

    A layer's headers are all held while it is placed: with ``TarInfo`` (and the strings and
    dict it carries) that is about 550 bytes per member, with this about 350, name included;
    for a layer of many files it is most of the driver's memory growth (bench/RESULTS.md).
    ``kind`` stands for ``TarInfo``'s predicates (one comparison, not a method call a member).
    """

    __slots__ = ("gid", "kind", "linkname", "mode", "mtime", "mtime_nsec", "name", "offset_data", "size", "sparse",
                 "uid")  # fmt: skip

    def __init__(self, name: str, mode: int, uid: int, gid: int, mtime: float, size: int, linkname: str,
                 offset_data: int, kind: str, sparse: bool = False, mtime_nsec: int = 0) -> None:  # fmt: skip
        self.name = name
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime  # whole seconds, or NaN for a PAX time that does not parse (``_pax_time``)
        self.mtime_nsec = mtime_nsec
        self.size = size
        self.linkname = linkname
        self.offset_data = offset_data
        self.kind = kind  # _DIR, _SYM, _LNK, _REG, or "" (devices, FIFOs, unknown types)
        self.sparse = sparse

    @classmethod
    def of(cls, info: tarfile.TarInfo) -> _Member:
        """The member of a header ``tarfile`` read; its time from the PAX record itself, when there is one
        (an extended or a global header), since ``tarfile`` reads it as a float, which cannot hold nanoseconds."""
        kind = _DIR if info.isdir() else _SYM if info.issym() else _LNK if info.islnk() else _REG if info.isreg() else ""
        pax_time = info.pax_headers.get("mtime")
        mtime, nsec = (info.mtime, 0) if pax_time is None else _pax_time(pax_time)
        return cls(info.name, info.mode, info.uid, info.gid, mtime, info.size, info.linkname,
                   info.offset_data, kind, info.issparse(), nsec)  # fmt: skip


_DIR, _SYM, _LNK, _REG = "dir", "symlink", "hardlink", "file"
# The header types _plain_header reads itself; tarfile reads every other one.
_PLAIN_TYPES = {tarfile.REGTYPE: _REG, tarfile.AREGTYPE: _REG, tarfile.DIRTYPE: _DIR,
                tarfile.SYMTYPE: _SYM, tarfile.LNKTYPE: _LNK}  # fmt: skip
_BLOCK = tarfile.BLOCKSIZE
# A ustar header block: name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, (magic,
# version, uname, gname: unused here), devmajor, devminor, prefix, (padding).
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s72x8s8s155s12x")


@dataclass(frozen=True)
class _Archive:
    """One layer's uncompressed tar: where it lives in the store and its headers."""

    source: str
    size: int
    members: list[_Member]


def layers_of(manifest: ImageManifest) -> list[Layer]:
    """The manifest's layers, each knowing whether the manifest is an image (rule 0).

    Only the config's media type says so: ToolHive's packager pushes images with an
    ``artifactType`` of its own and a title on the layer, and a container runtime still
    unpacks them as images, so the title cannot decide.
    """
    image = manifest.config.media_type in IMAGE_CONFIGS
    return [Layer(d.digest, d.media_type, d.annotations, d.size, image) for d in manifest.layers]


def compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``""`` (plain tar) for a tar-family media type, else None.

    The store decodes a compressed layer once while pulling it, so that this module
    and both views read a plain tar with random access.
    """
    for ending, codec in _TAR_ENDINGS:
        stem = media_type.removesuffix(ending)
        if stem != media_type and stem.endswith(_SEPARATORS):
            return codec
    return None


def tar_path(layer: Layer) -> str | None:
    """Where a tar-family layer's uncompressed tar lives, relative to the state dir.

    A plain tar is its own blob; None when the layer is not tar-family.
    """
    codec = compression(layer.media_type)
    if codec is None:
        return None
    if codec == "":
        return blob_relpath(layer.digest)
    return decoded_relpath(layer.digest)


def may_unpack(layer: Layer) -> bool:
    """Whether a placement rule may read the layer as a tar (rules 0 to 3).

    The store decodes only these: an ORAS file push that merely looks like a
    compressed tar (rule 4) is shown as its blob, so decoding it would waste disk
    and could fail on a file that is not really one.
    """
    if tar_path(layer) is None:
        return False
    return _unpacked_whole(layer) or layer.media_type == OCI_TAR_GZIP


def tar_only(layer: Layer) -> bool:
    """Whether the layer is compressed and only ever read as its inflated tar (rules 0 to 2), so
    that the store need not keep its compressed blob once it is verified and inflated.

    Not for a titled ``tar+gzip`` outside an image (rules 3 and 4): it is a directory or a file
    only once its headers are read, and as a file (rule 4) the volume shows the blob itself.
    """
    return bool(compression(layer.media_type)) and _unpacked_whole(layer)


def _unpacked_whole(layer: Layer) -> bool:
    """Whether a tar-family layer is placed by rules 0 to 2, as the tar it is: a layer of an
    image, an untitled one, one annotated to be unpacked, or a Klaus layer."""
    return (
        layer.image
        or TITLE not in layer.annotations
        or layer.annotations.get(UNPACK) == "true"
        or _is_klaus(layer.media_type)
    )


def build_tree(state_dir: Path, layers: Sequence[Layer], limits: Limits) -> list[Entry]:
    """The volume's tree: each layer placed in manifest order by the first matching rule of docs/layout-rules.md.

    Entries come back sorted depth-first, so every directory precedes its contents
    and the root ``""`` comes first.
    """
    builder = TreeBuilder(state_dir, layers, limits)
    for index in range(len(layers)):
        builder.fetched(index)
    return builder.entries()


class TreeBuilder:
    """``build_tree`` for layers that arrive in any order: the pull hands each layer over as
    soon as it is in the store, so reading its headers and placing it overlap the download and
    inflating of the others (on two cores, a third of a multi-layer image's cold publish;
    bench/RESULTS.md). Layers are still placed in manifest order, and an error reading a layer
    is raised when that layer's turn comes, so the answer is the one ``build_tree`` would give.
    Not thread-safe: one thread calls ``fetched`` and ``entries``.
    """

    def __init__(self, state_dir: Path, layers: Sequence[Layer], limits: Limits) -> None:
        self._state_dir = state_dir
        self._layers = list(layers)
        self._tree = _Tree(limits)
        self._read: dict[int, _Archive | errors.DriverError | None] = {}
        self._placed = 0

    def fetched(self, index: int) -> None:
        """Layer ``index`` is in the store: read it, and place every layer whose turn has come."""
        layer = self._layers[index]
        source = tar_path(layer)
        try:
            self._read[index] = _read(self._tree, self._state_dir, source, layer) if source and may_unpack(layer) else None
        except errors.DriverError as exc:
            self._read[index] = exc
        while self._placed in self._read:
            archive = self._read.pop(self._placed)
            if isinstance(archive, errors.DriverError):
                raise archive
            _place(self._tree, self._layers[self._placed], archive)
            self._placed += 1

    def entries(self) -> list[Entry]:
        if self._placed != len(self._layers):
            raise RuntimeError(f"{len(self._layers) - self._placed} layers were never fetched")
        return self._tree.sorted_entries()


def _place(tree: _Tree, layer: Layer, archive: _Archive | None) -> None:
    """Apply the first of the placement rules (0 to 5, docs/layout-rules.md) that matches ``layer``.

    ``archive`` is the layer's headers when ``may_unpack`` says a rule may read it as a tar.
    """
    title = layer.annotations.get(TITLE)
    unpack = layer.annotations.get(UNPACK) == "true"
    source = tar_path(layer)
    if layer.image:  # rule 0: a file system layer, as rule 2 places it; titles and ORAS annotations ignored
        if source is None:
            raise errors.InvalidArgument(
                f"layer {layer.digest} has media type {layer.media_type!r}, which is not a tar archive, but "
                "the manifest's config is an image config, so every layer must be a file system layer; "
                "the volume cannot show it"
            )
        assert archive is not None  # may_unpack holds for every tar-family layer of an image
        _unpack(tree, layer, archive, whiteouts=True)
    elif title is not None and unpack:  # rule 1: ORAS directory push
        if source is None:
            raise errors.InvalidArgument(
                f"layer {layer.digest} is annotated {UNPACK}=true but its media type "
                f"{layer.media_type!r} is not a tar archive; the artifact cannot be unpacked"
            )
        top = _title_path(title, layer)
        tree.claim(top, layer)
        assert archive is not None  # may_unpack holds for a tar-family layer with UNPACK
        for member in archive.members:
            if not _under(top, _entry_path(member.name, layer), member):
                raise errors.InvalidArgument(
                    f"layer {layer.digest} ({layer.media_type}) is the ORAS directory {top!r} "
                    f"but its entry {member.name!r} lies outside {top}/; refusing the artifact"
                )
        _unpack(tree, layer, archive, whiteouts=False)
    elif source is not None and (title is None or _is_klaus(layer.media_type)):  # rule 2
        assert archive is not None  # may_unpack holds for untitled and Klaus layers
        _unpack(tree, layer, archive, whiteouts=True)
    elif title is None:  # rule 5
        raise errors.InvalidArgument(
            f"layer {layer.digest} has media type {layer.media_type!r}, which is neither a tar "
            f"archive nor titled ({TITLE}); the volume cannot show it"
        )
    else:
        top = _title_path(title, layer)
        tree.claim(top, layer)
        if archive is not None and layer.media_type == OCI_TAR_GZIP:  # rule 3: oras-python directory
            if all(_under(top, _normalise(member.name), member) for member in archive.members):
                _unpack(tree, layer, archive, whiteouts=False)
                return
        # rule 4: ORAS file push, the blob itself is the file
        tree.count(layer)
        blob = blob_relpath(layer.digest)
        tree.put(Entry(path=top, kind=Kind.FILE, mode=0o644, size=layer.size, source=blob), layer)


def _is_klaus(media_type: str) -> bool:
    return media_type.startswith(KLAUS_PREFIX) and media_type.endswith(KLAUS_SUFFIX)


def _normalise(name: str) -> str | None:
    """``name`` as a tree path (``./a//b/`` → ``a/b``, ``.`` → the root ``""``); None if unsafe.

    Unsafe means it could land outside the tree or cannot be a file name: absolute,
    a ``..`` component, or a NUL byte.
    """
    if name.startswith("/") or "\0" in name:
        return None
    if "//" not in name and "/." not in name and not name.startswith(".") and not name.endswith("/"):
        return name  # no empty, "." or ".." component (nor any starting with a dot: those take the long way)
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [part for part in parts if part not in ("", ".")]
    elif ".." not in parts:
        return name  # already normal: the tree keeps this very string, not a copy of it
    if ".." in parts:
        return None
    return "/".join(parts)


def _entry_path(name: str, layer: Layer) -> str:
    path = _normalise(name)
    if path is None:
        raise _unsafe(layer, name, "is absolute, has a '..' component or a NUL byte")
    if len(path) > _NAME_MAX or not path.isascii():  # only then can it be unnameable
        why = _unnameable(path)
        if why:
            raise _unsafe(layer, name, why)
    return path


def _unnameable(path: str) -> str:
    """Why no Linux file system can hold ``path`` ("" if one can): it is not UTF-8 (tarfile
    decodes other bytes to lone surrogates, which SQLite refuses), or a component is too long."""
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if any(len(part) > _NAME_MAX for part in raw.split(b"/")):
        return f"has a component longer than {_NAME_MAX} bytes, more than a file name can be"
    return ""


def _title_path(title: str, layer: Layer) -> str:
    path = _normalise(title)
    if not path or _unnameable(path):
        raise errors.InvalidArgument(
            f"layer {layer.digest} has the title {title!r}, which is not a relative path inside "
            "the volume; the artifact is unsafe and was refused"
        )
    return path


def _under(top: str, path: str | None, member: _Member) -> bool:
    """Whether an entry lies under ``<top>/`` (``top`` itself may be its directory)."""
    if path is None:
        return False
    return path.startswith(top + "/") or (path == top and member.kind is _DIR)


def _unsafe(layer: Layer, name: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        f"layer {layer.digest}: entry {name!r} {why}; the artifact is unsafe and was refused"
    )


def _read(tree: _Tree, state_dir: Path, source: str, layer: Layer) -> _Archive:
    """The headers of a layer tar; data is skipped by seeking, never read.

    Every header counts against --max-entries as it is read, so a tar of millions
    of tiny headers is refused before it fills memory.

    A tar that ends right after its last file's data (no padding, no end-of-archive
    blocks, as umoci 0.4's ``insert`` writes layers) is complete: Go's archive/tar,
    and so containerd, Docker and umoci, read it so. A cut inside the data is not.

    Plain headers (most of a real layer's), alone or after a pax header of their own, are parsed
    by ``_plain_header`` and ``_pax_member``, about three times faster than ``tarfile``, which
    reads every other header (bench/RESULTS.md).
    """
    path = state_dir / source
    size = path.stat().st_size
    members: list[_Member] = []
    try:
        with _Headers(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            fd, encoding, errors_, offset = raw.fileno(), tar.encoding, tar.errors, tar.offset
            while True:
                plain = None
                if tar.firstmember is None and not tar.pax_headers and 0 < offset <= size - _BLOCK:
                    buf = os.pread(fd, _BLOCK, offset)
                    plain = _plain_header(buf, offset, encoding, errors_) or _pax_member(fd, buf, offset, size, encoding, errors_)
                if plain is not None:
                    member, offset = plain
                else:
                    tar.offset = offset
                    try:
                        info = tar.next()
                    except tarfile.ReadError:
                        if members and members[-1].offset_data + members[-1].size <= size < tar.offset:
                            break  # the file ends inside the last member's padding
                        raise
                    if info is None:
                        break
                    tar.members.clear()  # tarfile keeps every member it reads; we keep our own
                    member, offset = _Member.of(info), tar.offset
                if member.size < 0 or offset < member.offset_data:
                    # A negative size (also a sparse header's, which tarfile hides behind the real
                    # size) would move the next header backwards, or cancel out bytes counted.
                    raise _unsafe(layer, member.name, "has a negative size")
                tree.count(layer)
                members.append(member)
                if offset > size:  # the next header would lie past the end of the file
                    if member.offset_data + member.size <= size:
                        break  # the file ends inside this member's padding
                    raise errors.InvalidArgument(
                        f"layer {layer.digest}: entry {member.name!r} runs past the end of the archive; "
                        "the layer is cut short or corrupt"
                    )
    except _HeaderTooLarge:
        raise errors.InvalidArgument(
            f"layer {layer.digest} ({layer.media_type}) has a PAX or GNU long-name header of more than "
            f"{_MAX_SPECIAL} bytes, more than any file needs (Go's archive/tar refuses it too); "
            "the artifact is unsafe and was refused"
        ) from None
    except RecursionError:  # tarfile reads consecutive extended headers recursively
        raise errors.InvalidArgument(
            f"layer {layer.digest} ({layer.media_type}) has hundreds of PAX or GNU extended headers in a "
            "row; the artifact is unsafe and was refused"
        ) from None
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise errors.InvalidArgument(
            f"layer {layer.digest} ({layer.media_type}) is not a readable tar archive: {exc}"
        ) from exc
    return _Archive(source=source, size=size, members=members)


class _HeaderTooLarge(Exception):
    pass


class _Headers(io.FileIO):
    """A layer tar as tarfile reads it here: headers only, file data is skipped by seeking.

    So a read of more than ``_MAX_SPECIAL`` bytes at once can only be the data of a PAX or GNU
    long-name header, which tarfile would otherwise read into memory whole, however large.
    """

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_SPECIAL:
            raise _HeaderTooLarge()
        return super().read(size)


_ZERO_DEVICE = frozenset({b"\0" * 8, b"0000000\0", b"000000 \0", b"0000000 ", b"0" * 8})
"""Device number fields that ``nti()`` reads as 0: how writers fill them for every non-device."""


def _numbers(fields: tuple[bytes, ...]) -> tuple[int, int, int, int, int, int] | None:
    """The checksum, mode, uid, gid, size and mtime of a header's ``fields`` (as ``_HEADER``
    unpacks them) as ``nti()`` reads them, or None for anything it may read otherwise (then
    tarfile reads the header). The device numbers, unused here, are checked too, so that an
    unreadable one is an invalid header, as it is to tarfile.

    ``nti()`` takes a field up to its first NUL, decodes it as ASCII, strips it and reads it as
    octal ("" is 0). Here the field loses its trailing NULs and spaces instead, in one C call:
    where that leaves an octal number, it is the number ``nti()`` reads (no NUL can remain in
    front of it, or ``int`` would refuse the bytes); where it does not (a NUL between digits,
    base-256, a byte that is whitespace only to ``str``), the header goes to tarfile. Spelled
    out field by field, not looped over (bench/RESULTS.md).
    """
    _, mode, uid, gid, size, mtime, chksum, _, _, major, minor, _ = fields
    try:
        if major not in _ZERO_DEVICE or minor not in _ZERO_DEVICE:
            int(major.rstrip(b"\0 ") or b"0", 8), int(minor.rstrip(b"\0 ") or b"0", 8)
        return (
            int(chksum.rstrip(b"\0 ") or b"0", 8), int(mode.rstrip(b"\0 ") or b"0", 8),
            int(uid.rstrip(b"\0 ") or b"0", 8), int(gid.rstrip(b"\0 ") or b"0", 8),
            int(size.rstrip(b"\0 ") or b"0", 8), int(mtime.rstrip(b"\0 ") or b"0", 8),
        )  # fmt: skip
    except ValueError:
        return None


def _plain_header(buf: bytes, offset: int, encoding: str, errors: str) -> tuple[_Member, int] | None:
    """The member whose header block ``buf`` starts at ``offset``, and where the next header starts.

    Only for a header that ``tarfile`` (``TarInfo.frombuf`` and ``_proc_builtin``) would read to
    the same member: a regular file, directory, symlink or hardlink with octal numbers and the
    right (unsigned) checksum, read while no global pax header is in force. Anything else is
    None and left to ``tarfile``: pax and GNU long-name headers, sparse files, devices,
    base-256 numbers, a V7 directory, a signed or bad checksum, the end of the archive.
    """
    fields = _HEADER.unpack(buf)
    kind = _PLAIN_TYPES.get(fields[7])
    if kind is None:
        return None
    numbers = _numbers(fields)
    if numbers is None or not _checksum_ok(buf, numbers[0]):
        return None
    _, mode, uid, gid, size, mtime = numbers
    name, linkname, prefix = fields[0], fields[8], fields[11]
    # Text fields end at their first NUL, if any (find's -1 modulo the field's length + 1 keeps it whole).
    name = name[: name.find(b"\0") % 101].decode(encoding, errors)
    if kind is _DIR:
        name = name.rstrip("/")
    elif fields[7] == tarfile.AREGTYPE and name.endswith("/"):
        return None  # a V7 directory
    if prefix[0]:
        name = prefix[: prefix.find(b"\0") % 156].decode(encoding, errors) + "/" + name
        if kind is _DIR:
            name = name.rstrip("/")
    linkname = linkname[: linkname.find(b"\0") % 101].decode(encoding, errors) if linkname[0] else ""
    data = offset + _BLOCK
    return _Member(name, mode, uid, gid, mtime, size, linkname, data, kind), data + _following(kind, size)


def _checksum_ok(buf: bytes, chksum: int) -> bool:
    """The unsigned header checksum: the sum of the block's bytes, its checksum field as spaces.

    The sum is taken as two ``adler32`` halves: adler32's low half is 1 + the sum of the bytes
    modulo 65521, and 256 bytes sum to at most 65280, so nothing wraps. Six times faster than
    ``sum(buf)``, which this paid twice per pax member (bench/RESULTS.md). An all-zero block (the
    end of the archive) fails this too.
    """
    total = (zlib.adler32(buf[:256]) & 0xFFFF) + (zlib.adler32(buf[256:]) & 0xFFFF) - 2
    return chksum == 256 + total - sum(buf[148:156])


def _following(kind: str, size: int) -> int:
    """The bytes of data blocks after a member's header: a regular file's, rounded up to blocks."""
    blocks, rest = divmod(size, _BLOCK)
    return (blocks + (1 if rest else 0)) * _BLOCK if kind is _REG else 0


_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_PAX_NAMES = frozenset({"path", "linkpath", "uname", "gname"})  # tarfile's PAX_NAME_FIELDS


def _pax_member(fd: int, buf: bytes, offset: int, file_size: int, encoding: str, errors: str) -> tuple[_Member, int] | None:
    """A pax extended header (``x``) at ``offset`` and the plain header after it, read to the member
    ``tarfile`` (``_proc_pax`` and ``_apply_pax_info``) would make of them, and where the next header starts.

    Tools that write pax for every entry (sub-second times: Python's ``tarfile``, oras-go) would
    otherwise send every member through ``tarfile``. None, and so ``tarfile``, for anything else:
    GNU sparse records, a ``hdrcharset``, a zero-length record, a header that is not plain,
    data past the end of the file or larger than ``_MAX_SPECIAL``.
    """
    if buf[156:157] != tarfile.XHDTYPE:
        return None
    fields = _HEADER.unpack(buf)
    numbers = _numbers(fields)
    if numbers is None or not _checksum_ok(buf, numbers[0]) or numbers[4] > _MAX_SPECIAL:
        return None
    records_at = offset + _BLOCK
    header_at = records_at + _following(_REG, numbers[4])
    if header_at + _BLOCK > file_size:
        return None
    raw = os.pread(fd, header_at + _BLOCK - records_at, records_at)
    records = _pax_records(raw[:-_BLOCK], encoding, errors)
    plain = _plain_header(raw[-_BLOCK:], header_at, encoding, errors) if records is not None else None
    if plain is None:
        return None
    member, after = plain
    for keyword, value in records.items():
        if keyword == "path":
            member.name = value.rstrip("/")
        elif keyword == "linkpath":
            member.linkname = value
        elif keyword == "mtime":
            member.mtime, member.mtime_nsec = _pax_time(value)
        elif keyword in ("size", "uid", "gid"):
            try:
                setattr(member, keyword, int(value))
            except ValueError:
                setattr(member, keyword, 0)
    if "size" in records:
        after = member.offset_data + _following(member.kind, member.size)
    return member, after


_PAX_TIME = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]*))?")
_NS = 1_000_000_000
_NOT_A_TIME = (math.nan, 0)
"""What ``_pax_time`` makes of a value Go's archive/tar refuses: ``_entry``'s range check refuses NaN."""


def _pax_time(value: str) -> tuple[float, int]:
    """A PAX ``mtime`` record as (whole seconds, nanoseconds), the seconds rounded toward minus
    infinity and the nanoseconds 0 to 999,999,999, as the kernel's ``timespec`` holds it.

    Read as Go's archive/tar reads it (``parsePAXTime``, src/archive/tar/strconv.go), which
    containerd and Docker unpack layers with: decimal seconds with an optional sign, then an
    optional ``.`` and digits, of which the first nine count (a shorter fraction is padded, the
    rest is cut off); a negative time's fraction counts toward minus infinity, so ``-1.5`` is
    ``(-2, 500000000)``. GNU tar (``decode_timespec``, src/xheader.c) reads the same, except that a
    negative time's digits past the ninth round it toward minus infinity where Go cuts them off
    (``-1.0000000001`` is -1.000000001 s to GNU tar, -1 s to Go); neither writes more than nine.
    A value Go refuses (``1e3``, `` 7``, ``1_0``, ``nan``, ``.5``) or whose nanoseconds do not fit
    a signed 64-bit count is ``_NOT_A_TIME``, and the artifact is refused.
    """
    match = _PAX_TIME.fullmatch(value)
    if match is None:
        return _NOT_A_TIME
    sign, whole, fraction = match.groups()
    try:
        ns = int(whole) * _NS + int(((fraction or "") + "00000000")[:9] or "0")
    except ValueError:  # more digits than int() reads: far outside any time
        return _NOT_A_TIME
    if sign == "-":
        ns = -ns
    if not -(2**63) <= ns < 2**63:
        return _NOT_A_TIME
    return divmod(ns, _NS)


def _pax_records(buf: bytes, encoding: str, errors: str) -> dict[str, str] | None:
    """``keyword=value`` records as ``_proc_pax`` parses them (to the first unparsable record)."""
    if b"hdrcharset=" in buf:
        return None
    records = {}
    pos = 0
    while match := _PAX_RECORD.match(buf, pos):
        length = int(match.group(1))
        if length == 0:
            return None  # tarfile: invalid header
        keyword = _pax_text(match.group(2), "utf-8", errors)
        if keyword.startswith("GNU.sparse"):
            return None
        value = buf[match.end(2) + 1 : match.start(1) + length - 1]
        records[keyword] = _pax_text(value, encoding if keyword in _PAX_NAMES else "utf-8", errors)
        pos += length
    return records


def _pax_text(raw: bytes, fallback: str, errors: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode(fallback, errors)


def _unpack(tree: _Tree, layer: Layer, archive: _Archive, whiteouts: bool) -> None:
    """Lay a tar's entries over the tree, later entries overriding earlier ones.

    Whiteouts are applied first, against the tree as earlier layers left it: an OCI
    whiteout hides only lower layers' content, never an entry of its own layer,
    whatever the order inside the tar.
    """
    items = [(_entry_path(member.name, layer), member) for member in archive.members]
    if whiteouts:
        for path, member in items:
            if _WHITEOUT in path:  # a substring search first: few paths hold one
                _whiteout(tree, layer, path, member)
    for path, member in items:
        if whiteouts and _WHITEOUT in path and path.rpartition("/")[2].startswith(_WHITEOUT):
            continue
        entry = _entry(tree, layer, archive, path, member)
        if entry is not None:
            tree.put(entry, layer)


def _whiteout(tree: _Tree, layer: Layer, path: str, member: _Member) -> None:
    parent, _, base = path.rpartition("/")
    if base == _OPAQUE:
        tree.clear(parent)
    elif base.startswith(_WHITEOUT):
        name = base.removeprefix(_WHITEOUT)
        if name in ("", ".", ".."):
            raise _unsafe(layer, member.name, "is a whiteout that escapes its directory")
        tree.remove(f"{parent}/{name}" if parent else name)


def _entry(
    tree: _Tree, layer: Layer, archive: _Archive, path: str, member: _Member
) -> Entry | None:
    """The tree entry for one tar member; None for what a volume never shows (devices, FIFOs).

    Each entry is built in one constructor call of positional arguments (not built and then
    ``replace``d, no keywords): this runs once per archive member, on the cold-publish path
    (bench/RESULTS.md).
    """
    uid, gid, mtime = member.uid, member.gid, member.mtime
    if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID and -_MAX_MTIME <= mtime <= _MAX_MTIME):  # NaN fails too
        why = f"has owner uid {uid}, gid {gid} and mtime {mtime}: outside 0..{_MAX_ID} for owners or ±{_MAX_MTIME} s"
        raise _unsafe(layer, member.name, why)
    mode, mtime, nsec, kind = member.mode & _KEPT_MODE, int(mtime), member.mtime_nsec, member.kind
    if kind is _DIR:
        return Entry(path, Kind.DIR, mode, uid, gid, mtime, 0, "", "", 0, nsec)
    if kind is _SYM:
        if not member.linkname or "\0" in member.linkname:
            raise _unsafe(layer, member.name, "is a symlink with an empty target or a NUL byte")
        if len(member.linkname) > _LINK_MAX // 4 or not member.linkname.isascii():  # only then can it be bad
            try:
                length = len(member.linkname.encode())
            except UnicodeEncodeError:
                raise _unsafe(layer, member.name, "is a symlink whose target is not valid UTF-8") from None
            if length > _LINK_MAX:
                raise _unsafe(layer, member.name, f"is a symlink whose target is longer than {_LINK_MAX} bytes")
        return Entry(path, Kind.SYMLINK, mode, uid, gid, mtime, 0, member.linkname, "", 0, nsec)
    if kind is _LNK:
        target = _normalise(member.linkname)
        node = tree.nodes.get(target) if target is not None else None
        if node is None or node.kind is not Kind.FILE:
            why = f"is a hardlink to {member.linkname!r}, not to a regular file earlier in the tree"
            raise _unsafe(layer, member.name, why)
        return node._replace(path=path)
    if kind is _REG:
        if member.sparse:
            raise errors.InvalidArgument(
                f"layer {layer.digest}: entry {member.name!r} is a sparse file, which the volume "
                "cannot show; rebuild the artifact without sparse files"
            )
        if member.offset_data + member.size > archive.size:
            raise errors.InvalidArgument(
                f"layer {layer.digest}: entry {member.name!r} runs past the end of the archive"
            )
        return Entry(path, Kind.FILE, mode, uid, gid, mtime, member.size, "", archive.source, member.offset_data, nsec)
    return None


class _Tree:
    """The tree being built: nodes by path, plus each directory's children, so that
    overriding or whiting out a directory drops its subtree without a scan."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.nodes: dict[str, Entry] = {"": ROOT}
        self.children: dict[str, set[str]] = {"": set()}
        self.entries = 0
        self.unpacked = 0
        self.titles: dict[str, str] = {}  # path of each titled (ORAS) layer placed -> its digest

    def claim(self, top: str, layer: Layer) -> None:
        """Record the path an ORAS title names; two titles may not name one path, nor may a later
        one be the directory of an earlier one (``oras pull`` refuses both)."""
        for other, digest in self.titles.items():
            if other == top or other.startswith(top + "/"):
                raise errors.InvalidArgument(
                    f"layer {layer.digest} has the title {top!r}, which collides with the title {other!r} "
                    f"of layer {digest}; the titles of an artifact's files must name distinct paths"
                )
        self.titles[top] = layer.digest

    def count(self, layer: Layer) -> None:
        """Count one entry (a tar header, an implicit directory or an ORAS file)."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise errors.ResourceExhausted(
                f"layer {layer.digest}: the artifact has more than {self.limits.max_entries} "
                "entries, the --max-entries limit; raise --max-entries to allow it"
            )

    def put(self, entry: Entry, layer: Layer) -> None:
        """Add ``entry`` in place of whatever the path held.

        A directory over a directory only updates its metadata and keeps the
        children, as extracting one layer over another would. Runs once per archive member on
        the cold-publish path, so ``_parents``' common case (the parent is a directory already)
        is settled here, with one dict lookup.
        """
        path, kind = entry.path, entry.kind
        if not path:
            if kind is not Kind.DIR:
                raise _unsafe(layer, ".", "would replace the volume root with a non-directory")
            self.nodes[""] = entry
            return
        nodes = self.nodes
        parent = path.rpartition("/")[0]
        node = nodes.get(parent)
        if node is None or node.kind is not Kind.DIR:
            parent = self._parents(path, layer)
        old = nodes.get(path)
        if old is not None and not (old.kind is Kind.DIR and kind is Kind.DIR):
            self.remove(path)
        nodes[path] = entry
        self.children[parent].add(path)
        if kind is Kind.DIR:
            self.children.setdefault(path, set())
        elif kind is Kind.FILE:
            self.unpacked += entry.size
            if self.unpacked > self.limits.max_unpacked_bytes:
                raise errors.ResourceExhausted(
                    f"layer {layer.digest}: the artifact unpacks to more than "
                    f"{self.limits.max_unpacked_bytes} bytes, the --max-unpacked-bytes limit; "
                    "raise --max-unpacked-bytes to allow it"
                )

    def _parents(self, path: str, layer: Layer) -> str:
        """Make sure every ancestor of ``path`` is a directory; return its parent.

        Missing ones appear as 0755 root-owned directories; an ancestor that is a
        symlink is refused, since an entry below it would be written through it.

        A node is only ever present with all its ancestors present as directories (``put``
        and ``remove`` keep it so), so ``put`` calls this only when the parent is not a
        directory yet.
        """
        parent = ""
        for part in path.split("/")[:-1]:
            child = f"{parent}/{part}" if parent else part
            node = self.nodes.get(child)
            if node is None:
                self.count(layer)
                self.nodes[child] = Entry(path=child, kind=Kind.DIR, mode=0o755)
                self.children[child] = set()
                self.children[parent].add(child)
            elif node.kind is Kind.SYMLINK:
                raise _unsafe(layer, path, f"would be written through the symlink {child!r}")
            elif node.kind is Kind.FILE:
                raise errors.InvalidArgument(
                    f"layer {layer.digest}: entry {path!r} lies below {child!r}, which is a file"
                )
            parent = child
        return parent

    def remove(self, path: str) -> None:
        """Drop ``path`` and everything below it, if present."""
        if path not in self.nodes:
            return
        self.children[path.rpartition("/")[0]].discard(path)
        stack = [path]
        while stack:
            current = stack.pop()
            del self.nodes[current]
            stack.extend(self.children.pop(current, ()))

    def clear(self, path: str) -> None:
        """Drop everything below the directory ``path`` (an opaque whiteout)."""
        for child in list(self.children.get(path, ())):
            self.remove(child)

    def sorted_entries(self) -> list[Entry]:
        """All entries depth-first: each directory right before its contents."""
        return sorted(self.nodes.values(), key=depth_first)


def depth_first(entry: Entry) -> str:
    """Sort key that puts each directory right before its contents.

    It orders as the list of path components would (``a`` < ``a/b`` < ``a-b``), because NUL,
    which no path contains (``_normalise``), sorts before every other character; one string per
    entry instead of a list of strings keeps the sort's memory and time low (bench/RESULTS.md).
    """
    return entry.path.replace("/", "\0")

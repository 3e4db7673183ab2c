"""Random hostile archives and the properties every tree built from them must have (issue 7).

Shared by the hypothesis properties in ``test_fuzz.py`` (a small budget in CI) and by
``bench/fuzz_layout.py`` (the long run: millions of archives). The generator writes tar
headers byte by byte, so it reaches what ``tarfile`` would never write: ``..`` and absolute
names, symlinks and hardlinks aimed out of the tree or written through, whiteouts of ``..``,
PAX records with NUL bytes, negative or huge sizes, NaN times, base-256 owners, bad checksums,
truncations and flipped bytes, in one to three layers placed by any of the placement rules.

``check_tree`` states what ``rules.build_tree`` guarantees for whatever it accepts: every
entry lies inside the tree (a normalised relative path whose every ancestor is a directory of
the tree, so none is reached through a symlink or a file), every file's bytes lie inside a
store file, and modes, owners, times and names are what a Linux file system, SQLite and the
FUSE view can hold; the limits hold. Anything it refuses must be a ``DriverError``.
"""

from __future__ import annotations

import random
from pathlib import Path

from csi_driver import errors
from csi_driver.layout import rules
from csi_driver.layout.rules import TITLE, UNPACK, Layer, Limits
from csi_driver.layout.tree import blob_relpath, decoded_relpath, Entry, Kind

TAR = "application/vnd.oci.image.layer.v1.tar"
TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
KLAUS = "application/vnd.giantswarm.klaus-plugin.content.v1.tar+gzip"
LIMITS = Limits(max_entries=64, max_unpacked_bytes=1 << 20)
BLOCK = 512
MAX_ID = 2**32 - 2
MAX_MTIME = (2**63 - 1) // 10**9

# Name components: mostly a few plain names (so that entries collide, replace, link and write
# through each other), and every hostile one.
_COMPONENTS = [b"a"] * 6 + [b"b"] * 4 + [b"c"] * 2 + [
    b".", b"..", b"", b".wh.a", b".wh.b", b".wh..wh..opq", b".wh..", b".wh...", b".wh.", b"\xff\xfe",
    "é".encode(), b"line\nbreak", b"n" * 256, b"sp ace", b"\\",
]
_PREFIXES = [b""] * 8 + [b"./", b"/", b"//", b"../", b"./../", b"/tmp/PWNED/"]
_LINK_TARGETS = [b"a", b"b", b"..", b"../..", b"/", b"/etc", b"/tmp/PWNED", b"a/b", b".", b"", b"c/../..", b"a/../../b"]
_TITLES = ["a", "b", "a/b", "skill", "/abs", "..", ".", "a/../..", "a\0b", "\udcff", "./a", "a//b", "n" * 256, ""]


class _Rng(random.Random):
    """A random source with a hostility level: how often a field is made odd (0 = a benign
    archive except for what names and links say, 1 = hostile throughout)."""

    level = 0.5

    def odd(self, scale: float = 1.0) -> bool:
        return self.random() < self.level * scale


def _name(rng: random.Random) -> bytes:
    hostile = isinstance(rng, _Rng) and rng.odd(0.6)
    components = _COMPONENTS if hostile else _COMPONENTS[:12] + [b".wh.a", b".wh..wh..opq"]
    parts = [rng.choice(components) for _ in range(rng.randint(1, 4))]
    prefix = rng.choice(_PREFIXES) if hostile else rng.choice([b"", b"./"])
    return prefix + b"/".join(parts) + (b"/" if rng.random() < 0.05 else b"")


def _number(rng: _Rng, value: int, width: int) -> bytes:
    """``value`` in a tar numeric field of ``width`` bytes: octal mostly, else base-256 (which
    can say anything), a signed octal string, or garbage."""
    how = 0.0 if not rng.odd(0.4) else rng.random()
    if how < 0.5 and 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    if how < 0.8:
        value = max(-(256 ** (width - 1)) // 2, min(value, 256 ** (width - 1) // 2 - 1))
        raw = (value % 256 ** (width - 1)).to_bytes(width - 1, "big")
        return (b"\xff" if value < 0 else b"\x80") + raw
    if how < 0.95:
        return (b"%o" % value if value >= 0 else b"-%o" % -value)[: width - 1].ljust(width, b"\0")
    return bytes(rng.randrange(256) for _ in range(width))


def _value(rng: _Rng, usual: int, odd: list[int]) -> int:
    return rng.choice(odd) if rng.odd(0.3) else usual


def header(rng: _Rng, name: bytes, typeflag: bytes, size: int, linkname: bytes = b"") -> bytes:
    buf = bytearray(BLOCK)
    if len(name) > 100 and rng.random() < 0.5:  # ustar prefix/name split
        cut = name.rfind(b"/", 0, 156)
        if cut > 0:
            buf[345:345 + min(cut, 155)] = name[:min(cut, 155)]
            name = name[cut + 1:]
    buf[0:100] = name[:100].ljust(100, b"\0")
    mode = _value(rng, rng.choice([0o644, 0o755, 0o600]), [0o4755, 0o6777, 0o7777, 0o1777, -1, 2**40])
    uid = _value(rng, 0, [1000, 65534, MAX_ID, MAX_ID + 1, 2**40, -1, -(2**40)])
    gid = _value(rng, 0, [1000, 65534, MAX_ID, MAX_ID + 1, 2**40, -1])
    mtime = _value(rng, 1_700_000_000, [0, -1, MAX_MTIME, MAX_MTIME + 1, 2**62, -(2**62)])
    for (start, width), value in zip(((100, 8), (108, 8), (116, 8), (124, 12), (136, 12)), (mode, uid, gid, size, mtime)):
        buf[start:start + width] = _number(rng, value, width)
    buf[148:156] = b" " * 8
    buf[156:157] = typeflag
    buf[157:257] = linkname[:100].ljust(100, b"\0")
    buf[257:265] = rng.choice([b"ustar\x0000", b"ustar  \0", b"\0" * 8]) if rng.odd() else b"ustar\x0000"
    buf[329:337] = _number(rng, rng.choice([0, 1, 8]), 8)
    buf[337:345] = _number(rng, rng.choice([0, 1, 3]), 8)
    checksum = sum(buf) + (rng.choice([1, -1, 7]) if rng.odd(0.05) else 0)
    buf[148:156] = b"%06o\0 " % (checksum % 8**6)
    return bytes(buf)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _pax(rng: _Rng, global_: bool = False) -> bytes:
    records = []
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"uname", b"comment"])
        value = {
            b"path": lambda: rng.choice([_name(rng), b"a\0b", b"../x", b"/etc/x", b"a" * 300]),
            b"linkpath": lambda: rng.choice(_LINK_TARGETS + [b"x\0y", b"l" * 5000]),
            b"size": lambda: rng.choice([b"0", b"5", b"-1", b"-1024", b"99999999999", b"x", str(2**62).encode()]),
            b"uid": lambda: rng.choice([b"0", b"-5", str(2**32).encode(), str(2**70).encode(), b"7"]),
            b"gid": lambda: rng.choice([b"0", b"-5", str(2**32).encode(), b"7"]),
            b"mtime": lambda: rng.choice([b"1.5", b"nan", b"inf", b"-inf", b"1e300", b"-1", b"1700000000"]),
            b"uname": lambda: b"root",
            b"comment": lambda: b"c" * rng.choice([1, 600]),
        }[key]()
        records.append(_pax_record(key, value))
    data = b"".join(records)
    if rng.odd(0.1):
        data = data[: rng.randrange(len(data) + 1)]  # a record cut short
    return header(rng, b"././@PaxHeader", b"g" if global_ else b"x", len(data)) + _padded(data)


def archive(rng: _Rng) -> bytes:
    """One hostile tar: a few members of every kind, maybe cut short or with bytes flipped."""
    out = bytearray()
    names: list[bytes] = []
    for _ in range(rng.randint(0, 8)):
        kind = rng.choices(
            ["file", "dir", "symlink", "hardlink", "pax", "gnulong", "special", "unknown", "global", "sparse"],
            [30, 20, 15, 10, 8, 4, 4, 2, 2, 1],
        )[0]
        name = _name(rng) if not names or rng.random() < 0.7 else rng.choice(names)
        names.append(name)
        if kind == "pax":
            out += _pax(rng)
            kind = "file"
        elif kind == "global":
            out += _pax(rng, global_=True)
            continue
        elif kind == "gnulong":
            long_name = name + b"/" + b"g" * rng.choice([10, 120, 300]) + b"\0"
            out += header(rng, b"././@LongLink", b"L", len(long_name)) + _padded(long_name)
            kind = "file"
        if kind == "file":
            data = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 100, 512, 700])))
            claimed = _value(rng, len(data), [len(data) + 1, len(data) + 5000, -1, 2**33, 0])
            out += header(rng, name, rng.choice([b"0", b"\0", b"7"]), claimed) + _padded(data)
        elif kind == "dir":
            out += header(rng, name, b"5", 0)
        elif kind == "symlink":
            out += header(rng, name, b"2", 0, rng.choice(_LINK_TARGETS + names))
        elif kind == "hardlink":
            out += header(rng, name, b"1", 0, rng.choice(names + _LINK_TARGETS))
        elif kind == "special":
            out += header(rng, name, rng.choice([b"3", b"4", b"6"]), 0)
        elif kind == "unknown":
            data = b"u" * rng.choice([0, 10])
            out += header(rng, name, rng.choice([b"s", b"Z", b"V", b"M"]), len(data)) + _padded(data)
        elif kind == "sparse":
            out += header(rng, name, b"S", 0)
    if not rng.odd(0.3):
        out += b"\0" * (2 * BLOCK)
    elif rng.random() < 0.5 and out:
        del out[rng.randrange(len(out)):]
    if out and rng.odd(0.3):
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def layers(seed: int, state: Path) -> list[Layer]:
    """One to three layers written where the store keeps them, each placed by a random rule;
    the same seed always gives the same layers."""
    rng = _Rng(seed)
    rng.level = rng.random() ** 2  # most archives mostly benign, so that they get deep
    placed = []
    for index in range(rng.choices([1, 2, 3], [5, 3, 2])[0]):
        digest = "sha256:%064x" % (index + 1)
        data = archive(rng)
        rule = rng.choices(["image", "klaus", "oras-dir", "oras-python-dir", "oras-file"], [10, 2, 2, 2, 2])[0]
        title = rng.choice(_TITLES if rng.odd() else _TITLES[:4]) if rng.random() < 0.8 else _name(rng).decode(
            "utf-8", "surrogateescape"
        )
        media_type, annotations = {
            "image": (TAR, {}),
            "klaus": (KLAUS, {TITLE: title} if rng.random() < 0.5 else {}),
            "oras-dir": (TAR, {TITLE: title, UNPACK: "true"}),
            "oras-python-dir": (TGZ, {TITLE: title}),
            "oras-file": ("text/plain", {TITLE: title}),
        }[rule]
        blob = state / blob_relpath(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        if rules.compression(media_type):  # the store's inflated copy of a compressed layer
            decoded = state / decoded_relpath(digest)
            decoded.parent.mkdir(parents=True, exist_ok=True)
            decoded.write_bytes(data)
        placed.append(Layer(digest, media_type, annotations, len(data)))
    return placed


def check_tree(entries: list[Entry], state: Path, limits: Limits) -> None:
    """Assert what build_tree guarantees of every tree it returns (see the module docstring)."""
    assert entries and entries[0].path == "" and entries[0].kind is Kind.DIR, entries[:1]
    seen: dict[str, Entry] = {}
    unpacked = 0
    sizes: dict[str, int] = {}
    for entry in entries:
        path = entry.path
        assert path not in seen, f"{path!r} twice"
        assert 0 <= entry.uid <= MAX_ID and 0 <= entry.gid <= MAX_ID, entry
        assert isinstance(entry.mtime, int) and -MAX_MTIME <= entry.mtime <= MAX_MTIME, entry
        assert entry.mode == entry.mode & 0o1777, entry
        if path:
            raw = path.encode()  # UTF-8, as SQLite stores it
            parts = raw.split(b"/")
            assert all(part not in (b"", b".", b"..") and len(part) <= 255 for part in parts), path
            assert b"\0" not in raw, path
            parent = seen.get(path.rpartition("/")[0])
            assert parent is not None and parent.kind is Kind.DIR, f"{path!r} is not below a directory of the tree"
        if entry.kind is Kind.FILE:
            assert entry.size >= 0 and entry.offset >= 0, entry
            assert entry.source.startswith(("blobs/sha256/", "layers/sha256/")) and ".." not in entry.source, entry
            if entry.source not in sizes:
                sizes[entry.source] = (state / entry.source).stat().st_size
            assert entry.offset + entry.size <= sizes[entry.source], entry
            unpacked += entry.size
        elif entry.kind is Kind.SYMLINK:
            link = entry.link.encode()
            assert link and b"\0" not in link and len(link) <= 4095, entry
        else:
            assert entry.size == 0 and not entry.link and not entry.source, entry
        seen[path] = entry
    assert len(entries) <= limits.max_entries + 1, len(entries)
    assert unpacked <= limits.max_unpacked_bytes, unpacked


def build(state: Path, placed: list[Layer], limits: Limits = LIMITS) -> list[Entry] | errors.DriverError:
    """build_tree's answer: the entries (checked), or the DriverError it refused with; any
    other exception propagates, and fails the caller."""
    try:
        entries = rules.build_tree(state, placed, limits)
    except errors.DriverError as exc:
        return exc
    check_tree(entries, state, limits)
    return entries


def plain_tarfile_only() -> object:
    """A context in which layout reads every header with tarfile (its fast paths switched off)."""
    import contextlib
    from unittest import mock

    if not hasattr(rules, "_plain_header"):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for fast in ("_plain_header", "_pax_member"):
        stack.enter_context(mock.patch.object(rules, fast, lambda *args, **kwargs: None))
    return stack


def same(a: list[Entry] | errors.DriverError, b: list[Entry] | errors.DriverError) -> bool:
    if isinstance(a, errors.DriverError) or isinstance(b, errors.DriverError):
        return type(a) is type(b)
    return a == b


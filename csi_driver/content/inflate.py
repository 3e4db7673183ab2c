"""Streaming gzip and zstd inflating with bounded memory, that refuses a stream cut short.

A layer's bytes arrive in chunks; each chunk is inflated at once and handed on in pieces of at
most ``PIECE`` bytes, however high the ratio (a 1 MiB chunk of gzip can hold 1 GiB of zeros).
Concatenated gzip members and zstd frames are followed, as containerd's readers do.

gzip: ``isal_zlib.decompressobj`` (ISA-L's inflate, from the ``isal`` package: zlib's API, about
2.5 times zlib's speed; a gzip layer's inflate is the longest step of a cold publish) with
``max_length`` does all of it. It checks each member's CRC and size as zlib does; unlike zlib, and
like Go's compress/gzip (so containerd), it does not refuse reserved header flag bits. zstd: ``zstandard``'s
``decompressobj`` has no ``max_length``, and its ``stream_writer`` (which bounds its output) does
not tell a stream cut at a frame's middle from a whole one. So zstd is inflated by the
``stream_writer`` and its frame boundaries are followed here, reading only frame and block
headers (a few per 128 KiB): a stream is whole when it ends where a frame ends. Feeding the
``decompressobj`` small slices instead bounded memory too, but cost 80 ms of a 256 MiB image's
cold publish in Python-level looping (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import zstandard
from isal import isal_zlib

PIECE = 1 << 20
ERRORS = (isal_zlib.error, zstandard.ZstdError)
"""What a Decoder raises for a stream that is not whole, valid gzip or zstd."""
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


class Decoder:
    """Inflates ``compression`` ("gzip" or "zstd") chunk by chunk into ``emit``, a piece at a time."""

    def __init__(self, compression: str, emit: Callable[[bytes], object]) -> None:
        self.compression = compression
        self._emit = emit
        if compression == "gzip":
            self._gzip = isal_zlib.decompressobj(wbits=16 + isal_zlib.MAX_WBITS)
        else:
            self._frames = _ZstdFrames()
            self._zstd = zstandard.ZstdDecompressor().stream_writer(_Sink(emit), write_size=PIECE, closefd=False)

    def feed(self, data: bytes) -> None:
        if self.compression == "zstd":
            self._frames.follow(data)
            self._zstd.write(data)
            return
        while True:
            out = self._gzip.decompress(data, PIECE)
            if out:
                self._emit(out)
            if self._gzip.eof:  # (whose unconsumed_tail then repeats unused_data: never read it)
                data = self._gzip.unused_data
                if not data:
                    return
                self._gzip = isal_zlib.decompressobj(wbits=16 + isal_zlib.MAX_WBITS)  # the next member
                continue
            data = self._gzip.unconsumed_tail
            if not data and len(out) < PIECE:  # all read, and nothing left pending inside the inflater
                return

    def finish(self) -> None:
        """A stream cut short (inside a gzip member or a zstd frame) is an error, never a shorter tar."""
        if self.compression == "gzip" and not self._gzip.eof:
            raise isal_zlib.error("truncated gzip stream")
        if self.compression == "zstd":
            self._zstd.flush()
            if not self._frames.whole():
                raise zstandard.ZstdError("truncated zstd stream: it ends inside a frame")


class _Sink:
    """What ``stream_writer`` writes to: each piece straight on to ``emit``."""

    def __init__(self, emit: Callable[[bytes], object]) -> None:
        self.write = emit


class _ZstdFrames:
    """Follows frame boundaries through a zstd stream's headers (RFC 8878, section 3.1)."""

    def __init__(self) -> None:
        self._state = "magic"
        self._want = 4  # bytes of the header being read
        self._head = b""
        self._skip = 0  # bytes to pass over (header fields not needed, block contents)
        self._checksum = False
        self._frames = 0

    def whole(self) -> bool:
        return self._frames > 0 and self._state == "magic" and not self._head and not self._skip

    def follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                continue
            take = data[pos : pos + self._want - len(self._head)]
            pos += len(take)
            self._head += take
            if len(self._head) == self._want:
                header, self._head = int.from_bytes(self._head, "little"), b""
                self._step(header)

    def _step(self, header: int) -> None:
        if self._state == "magic":
            if header == _ZSTD_MAGIC:
                self._state, self._want = "descriptor", 1
            elif header in _SKIPPABLE:
                self._state, self._want = "skippable", 4
            else:
                raise zstandard.ZstdError("not a zstd frame: unknown magic number")
        elif self._state == "skippable":
            self._state, self._want, self._skip = "magic", 4, header
            self._frames += 1
        elif self._state == "descriptor":
            if header & 0x08:
                raise zstandard.ZstdError("zstd frame header has its reserved bit set")
            single = header >> 5 & 1
            self._checksum = bool(header >> 2 & 1)
            self._skip = (1 - single) + (0, 1, 2, 4)[header & 3] + (single, 2, 4, 8)[header >> 6]
            self._state, self._want = "block", 3
        else:  # a block header: last-block bit, type, size
            kind, size = header >> 1 & 3, header >> 3
            if kind == 3:
                raise zstandard.ZstdError("zstd block of the reserved type")
            self._skip = 1 if kind == 1 else size  # an RLE block holds one byte
            if header & 1:
                self._skip += 4 if self._checksum else 0
                self._state, self._want = "magic", 4
                self._frames += 1

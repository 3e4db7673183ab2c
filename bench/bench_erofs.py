"""The EROFS metadata image writer and file-backed mounts (issue 20), run by hand as root.

``writer``: ``erofsimage.build`` of synthetic trees of 12,000 and 100,000 entries (40 entries a
directory, one in ten a symlink, the rest files of one tar), best of 3, in microseconds per entry
(the issue's target: 15 or less).

``reads``: one 256 MiB file of a tar, read once cold (1 MiB reads after ``drop_caches``) from the
tar directly, from a buffered EROFS mount and from a ``directio`` one; the page cache it costs
(``Cached`` of /proc/meminfo before and after, and ``fincore`` of the tar: a buffered file-backed
mount caches each byte twice, in the EROFS file and in the tar), then the same read warm.

Run: ``unshare -m --propagation private .venv/bin/python bench/bench_erofs.py [--parts writer reads]
[--workdir DIR]``. It prints its results; nothing asserts them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csi_driver.layout.tree import ROOT, Entry, Kind  # noqa: E402
from csi_driver.mounts import kernel  # noqa: E402
from csi_driver.views import erofsimage, erofsmount

TAR = "layers/sha256/" + "0" * 64 + ".tar"


def synthetic_tree(count: int) -> tuple[list[Entry], int]:
    """``count`` entries and the size of the tar they read from."""
    entries = [ROOT]
    dirs = max(1, count // 40)
    entries.extend(Entry(f"dir{d:05d}", Kind.DIR, 0o755, 0, 0, 1700000000) for d in range(dirs))
    offset, i = 512, 0
    while len(entries) < count:
        parent = f"dir{i % dirs:05d}"
        if i % 10 == 9:
            entries.append(Entry(f"{parent}/link{i}", Kind.SYMLINK, 0o777, 0, 0, 1700000000, 0, "../lib/libexample.so.1"))
        else:
            entries.append(Entry(f"{parent}/file-{i:07d}.py", Kind.FILE, 0o644, 0, 0, 1700000000, 1234, "", TAR, offset))
            offset += 2048
        i += 1
    return entries, offset


def writer() -> None:
    for count in (12_000, 100_000):
        entries, size = synthetic_tree(count)
        devices = [erofsimage.Device(TAR, size)]
        best = min(_timed(lambda: erofsimage.build(entries, devices, _no_read)) for _ in range(3))
        image = erofsimage.build(entries, devices, _no_read)
        print(f"writer: {count} entries in {best * 1e3:.0f} ms, {best / count * 1e6:.1f} us/entry, image {len(image) / 2**20:.1f} MiB")


def _no_read(source: str, offset: int, size: int) -> bytes:
    raise AssertionError("the synthetic tars are padded: nothing is copied")


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _cached_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Cached:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no Cached line in /proc/meminfo")


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _read_mib_s(path: Path) -> float:
    start, total = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as source:
        while chunk := source.read(1 << 20):
            total += len(chunk)
    return total / (time.perf_counter() - start) / 2**20


def _resident_mib(path: Path) -> int:
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip() or 0) >> 20


def reads(workdir: Path) -> None:
    size = 256 << 20
    tar = workdir / "layer.tar"
    with open(tar, "wb") as out:
        out.write(bytes(512))
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            out.write(block)
        out.write(bytes(1024))
    entries = [ROOT, Entry("big", Kind.FILE, 0o644, size=size, source="layer.tar", offset=512)]
    image = workdir / "image.erofs"
    erofsimage.write(image, entries, [erofsimage.Device("layer.tar", tar.stat().st_size)], erofsimage.reader(workdir))
    target = workdir / "mnt"
    target.mkdir()
    for label in ("tar directly", "erofs buffered", "erofs directio"):
        rates, grown, resident = [], [], []
        for _ in range(3):
            if label != "tar directly":
                erofsmount.mount(image, [tar], target, direct_io=label == "erofs directio")
            try:
                _drop_caches()
                before = _cached_mib()
                rates.append(_read_mib_s(tar if label == "tar directly" else target / "big"))
                grown.append(_cached_mib() - before)
                resident.append(_resident_mib(tar))
                warm = _read_mib_s(tar if label == "tar directly" else target / "big")
            finally:
                if label != "tar directly":
                    kernel.unmount(os.fspath(target))
        print(f"reads: {label}: cold {min(rates):.0f}-{max(rates):.0f} MiB/s, warm {warm:.0f} MiB/s, "
              f"page cache +{'/'.join(map(str, grown))} MiB, of it the tar's {'/'.join(map(str, resident))} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("writer", "reads"), default=["writer", "reads"])
    parser.add_argument("--workdir", type=Path, help="where the 256 MiB tar goes (default: a temp dir)")
    args = parser.parse_args()
    if "writer" in args.parts:
        writer()
    if "reads" in args.parts:
        with tempfile.TemporaryDirectory(dir=args.workdir) as work:
            reads(Path(work))


if __name__ == "__main__":
    main()

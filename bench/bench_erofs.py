"""The EROFS metadata image writer and file-backed mounts (issue 20), run by hand as root.

``writer``: ``erofsimage.build`` of synthetic trees of 12,000 and 100,000 entries (40 entries a
directory, one in ten a symlink, the rest files of one tar), best of 3, in microseconds per entry
(the issue's target: 15 or less).

``reads``: one 256 MiB file of a tar, read cold (``read()`` of 1 MiB, or ``--read-kib``, after
``drop_caches``) and again warm,
from the tar directly ("native") and from the image mounted every way (``READ_VARIANTS``):
file-backed buffered and ``directio``, over loop devices with and without direct I/O, the loop
mount's readahead (its image's loop device's bdi) at the kernel's default or raised to 4 MiB.
Each repeat reads every variant once, in an order rotated from repeat to repeat, so that the
other work on the machine falls on all of them alike; the medians are printed with their ratio
to native. Also: the page cache the cold read added (``Cached`` of /proc/meminfo before and
after: a buffered mount caches each byte twice, in the EROFS file and in the tar), and the reads
the block device under the work directory saw during the cold read (count and mean size, from
``/sys/dev/block/M:m/stat``): how the kernel split the 256 MiB into requests.

Run: ``unshare -m --propagation private .venv/bin/python bench/bench_erofs.py [--parts writer reads]
[--repeats N] [--workdir DIR]`` (default: a fresh ext4 on a RAM-backed loop device, as the other
benches). It prints its results; nothing asserts them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_publish  # noqa: E402  (puts the repo and tests/ on sys.path)
from csi_driver.layout.tree import ROOT, Entry, Kind  # noqa: E402
from csi_driver.mounts import kernel  # noqa: E402
from csi_driver.views import erofsimage, erofsmount  # noqa: E402
from namespace import enter_private_namespace  # noqa: E402

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


READ_BYTES = 1 << 20  # each read() of the reads part (--read-kib)


def _read_mib_s(path: Path) -> float:
    start, total = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as source:
        while chunk := source.read(READ_BYTES):
            total += len(chunk)
    return total / (time.perf_counter() - start) / 2**20


# name: None (the tar itself) or (backing, direct I/O, readahead KiB of the loop mount's bdi). A loop
# device's read_ahead_kb outlives its detaching (a device used before keeps what was set), so
# every loop variant sets its own: 128 KiB is the kernel's VM_READAHEAD_PAGES.
READ_VARIANTS = {
    "native (the tar)": None,
    "erofs file buffered": ("file", False, None),
    "erofs file directio": ("file", True, None),
    "erofs loop dio, ra 128 KiB": ("loop", True, 128),
    "erofs loop dio, ra 1 MiB": ("loop", True, 1024),
    "erofs loop dio, ra 4 MiB": ("loop", True, 4096),
    "erofs loop buffered, ra 128 KiB": ("loop", False, 128),
    "erofs loop buffered, ra 1 MiB": ("loop", False, 1024),
    "erofs loop buffered, ra 4 MiB": ("loop", False, 4096),
}


def _disk_reads(stat: Path) -> tuple[int, int]:
    """(reads completed, sectors read) of a block device (Documentation/block/stat.rst)."""
    fields = stat.read_text().split()
    return int(fields[0]), int(fields[2])


def _read_once(how: tuple[str, bool, int | None] | None, image: Path, tar: Path, target: Path, stat: Path) -> tuple[float, float, int, tuple[int, int]]:
    """(cold MiB/s, warm MiB/s, page cache added MiB, (disk reads, mean KiB)) of one variant."""
    path = tar
    if how is not None:
        backing, direct_io, readahead_kb = how
        erofsmount.mount(image, [tar], target, direct_io=direct_io, backing=backing)
        info = kernel.find_mount(os.fspath(target))
        assert info is not None
        if readahead_kb is not None:
            Path(f"/sys/class/bdi/{info.device}/read_ahead_kb").write_text(f"{readahead_kb}\n")
        path = target / "big"
    try:
        _drop_caches()
        before, (reads, sectors) = _cached_mib(), _disk_reads(stat)
        cold = _read_mib_s(path)
        grown = _cached_mib() - before
        reads_after, sectors_after = _disk_reads(stat)
        count = reads_after - reads
        warm = _read_mib_s(path)
    finally:
        if how is not None:
            kernel.unmount(os.fspath(target))
    return cold, warm, grown, (count, (sectors_after - sectors) // 2 // max(count, 1))


def reads(workdir: Path, repeats: int) -> None:
    size = 256 << 20
    tar = workdir / "layer.tar"
    with open(tar, "wb") as out:
        out.write(bytes(512))
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))
        out.write(bytes(1024))
    entries = [ROOT, Entry("big", Kind.FILE, 0o644, size=size, source="layer.tar", offset=512)]
    image = workdir / "image.erofs"
    erofsimage.write(image, entries, [erofsimage.Device("layer.tar", tar.stat().st_size)], erofsimage.reader(workdir))
    target = workdir / "mnt"
    target.mkdir()
    dev = os.stat(tar).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    names = list(READ_VARIANTS)
    seen: dict[str, list[tuple[float, float, int, tuple[int, int]]]] = {name: [] for name in names}
    print(f"reads: load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())} at the start")
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seen[name].append(_read_once(READ_VARIANTS[name], image, tar, target, stat))
    print(f"reads: load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())} at the end; {repeats} repeats, medians, "
          f"read() of {READ_BYTES >> 10} KiB")
    native_cold = statistics.median(run[0] for run in seen[names[0]])
    native_warm = statistics.median(run[1] for run in seen[names[0]])
    print("| variant | cold MiB/s | ÷ native | re-read MiB/s | ÷ native | page cache added ÷ 256 MiB | disk reads during the cold read (median), mean KiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in seen.items():
        cold, warm = statistics.median(run[0] for run in runs), statistics.median(run[1] for run in runs)
        grown = statistics.median(run[2] for run in runs) / 256
        count = statistics.median(run[3][0] for run in runs)
        mean_kib = statistics.median(run[3][1] for run in runs)
        print(f"| {name} | {cold:.0f} | {cold / native_cold:.2f}× | {warm:.0f} | {warm / native_warm:.2f}× | {grown:.2f}× | {count:.0f}, {mean_kib:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("writer", "reads"), default=["writer", "reads"])
    parser.add_argument("--repeats", type=int, default=7, help="reads: rounds of every variant (default 7)")
    parser.add_argument("--read-kib", type=int, default=1024, help="reads: the size of each read() (default 1024)")
    parser.add_argument("--workdir", help="where the 256 MiB tar goes (default: a fresh ext4 on a RAM-backed loop device)")
    args = parser.parse_args()
    enter_private_namespace()
    global READ_BYTES
    READ_BYTES = args.read_kib << 10
    if "writer" in args.parts:
        writer()
    if "reads" in args.parts:
        with bench_publish.work_filesystem(args.workdir) as (work, fs_note):
            print(f"reads: on {fs_note}")
            reads(work, args.repeats)


if __name__ == "__main__":
    main()

"""Concurrency, FUSE reads, scale and disk use of the driver, against the loopback registry (issue 10).

Four parts (``--parts``, default all), each in erofs, fuse and bind mode or those of ``--mode``:

``concurrency``: 50 and 200 NodePublishVolume calls of ONE reference at once (distinct volume ids
and targets, a thread pool of that size released together by a barrier) on a driver with a fresh
state dir, so the reference was never pulled by it: the wall time of all of them against one cold
publish of the same artifact (``bench_publish.cold_publish``, median of ``--repeats``), and how
often the registry served each blob during the round (its access log; the target is exactly once:
the store's single flight must hold for a burst of pods scheduled together). Then all are
unpublished (at once, too) and no mount may be left.

``reads``: a tree of ``--entries`` entries (small files of random bytes in nested directories,
plus 8 large files totalling ``--read-mib``), pushed as one plain ``tar`` layer, published in each
mode and extracted with ``tar x`` on the same ext4 ("disk"). Per tree and repeat: a cold
sequential read of the large files (1 MiB ``readinto``) after ``sync; echo 3 >
/proc/sys/vm/drop_caches``, the same read again (warm), and a metadata walk (``find -printf``
of size, mode and owner: ``readdir`` and ``lstat`` of every entry) cold and warm. Whether the
kernel page cache holds the FUSE view's files is shown two ways: ``fincore`` of the large files
after the re-read, and the CPU the view process spends during the re-read (none if the kernel
answers from its cache). How it holds them is shown too: the share of those pages in large folios
(``/proc/kpageflags``), which sets how fast a re-read can copy out of the cache. With
``--erofs-variants`` (needs erofs in ``--mode``), a second erofs driver serves the tree over loop
devices (its cold publish is shown too), and the erofs driver's image is also mounted by hand
in the backings and options the driver does not use (``EROFS_VARIANTS``: file-backed buffered;
loop devices with and without direct I/O, the mount's readahead left at the kernel's default or
raised to 4 MiB), so every way of mounting it is read side by side in one run.

``scale``: one driver per mode, ``--digests`` small images cached first, then live volumes of
them (mixed round-robin) grown to each of ``--steps``; at each step ``--probes`` publishes of a new
volume (each unpublished again, so the count stays) give the warm publish p50, and ``VmRSS`` of
``serve`` and of the FUSE view process is read. Then every volume is unpublished and
``/proc/self/mountinfo`` must show none left under the kubelet dir.

``disk``: ``du`` of the state dir (allocated bytes; the FUSE view ``view/`` excluded) with one pod
of the ``concurrency`` image and with ``--pods`` pods of it, and for two versions of an artifact:
a Klaus plugin whose v2 changes one file (its one layer is a new blob, stored again whole), and a
3-layer image whose v2 changes its last layer (the other two are the same blobs, stored once).

Run as root, in a private mount namespace (the script also enters one itself):

    unshare -m --propagation private .venv/bin/python bench/bench_scale.py \\
        [--parts concurrency reads scale disk] [--mode erofs fuse bind] [--erofs-variants] [--no-write] [--workdir DIR]

Everything lands on a fresh ext4 as in ``bench_publish.py``. It refreshes the ``bench_scale``
section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import itertools
import mmap
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare  # noqa: E402
import bench_image  # noqa: E402
import bench_publish as bench  # noqa: E402  (puts the repo and tests/ on sys.path)
from artifacts import Pushed, push_image, push_klaus  # noqa: E402
from csi_driver._pb import csi_pb2  # noqa: E402
from csi_driver.content.store import Store  # noqa: E402
from csi_driver.mounts import kernel  # noqa: E402
from csi_driver.views import erofs, erofsimage, erofsmount  # noqa: E402
from driver import Driver, run_driver  # noqa: E402
from kubelet import publish_request, target_for, unpublish_request  # noqa: E402
from registry_server import access_log, blob_fetches, run_registry  # noqa: E402

BEGIN, END = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"
PARTS = ("concurrency", "reads", "scale", "disk")
TARGET_COLD_READ = 0.75  # FUSE cold read throughput ÷ disk
TARGET_WARM_READ = 0.90
TARGET_WALK = 3.0  # FUSE metadata walk time ÷ native
EROFS_TARGETS = (0.95, 0.95, 1.2)  # the kernel serves an erofs volume: cold read, re-read, walk as for native
TARGET_CACHE = 1.25  # page cache after one read ÷ the bytes read
TARGET_IDLE_RSS_MB = 100.0  # serve + FUSE view
TARGET_MAX_RSS_MB = 200.0  # at the largest step
TARGET_P50_GROWTH = 1.2  # publish p50 at the largest step ÷ at the first
TARGET_STORE = 1.05  # store ÷ the layer's tar (what it unpacks to), one digest, erofs and fuse (bind extracts a copy)
LARGE_FILES = 8
# name: backing, direct I/O, readahead KiB of the loop mount's bdi (None: none to set). A loop device's
# read_ahead_kb outlives its detaching, so each loop variant sets its own (128 KiB: VM_READAHEAD_PAGES).
EROFS_VARIANTS = {
    "erofs file buffered": ("file", False, None),
    "erofs loop dio, ra 128 KiB": ("loop", True, 128),
    "erofs loop dio, ra 4 MiB": ("loop", True, 4096),
    "erofs loop buffered, ra 128 KiB": ("loop", False, 128),
    "erofs loop buffered, ra 4 MiB": ("loop", False, 4096),
}
PLUGIN_MIB = 4
MB = bench_image.MB
Request = csi_pb2.NodePublishVolumeRequest


# -- shared helpers ------------------------------------------------------------------------------

def volume(kubelet: Path, prefix: str, i: int, reference: str) -> Request:
    """A new pod's volume of ``reference``: its own target, volume id and pod."""
    target = target_for(kubelet, f"{prefix}-{i:05d}", "image")
    return publish_request(target, {"reference": reference}, pod_name=f"{prefix}-{i}")


def mounts_under(root: Path) -> int:
    prefix = str(root) + "/"
    return sum(info.mount_point.startswith(prefix) for info in kernel.mount_table())


def view_pid(driver: Driver, mode: str) -> int | None:
    return bench.fuse_pid(driver.state_dir) if mode == "fuse" else None


def rss(pid: int | None) -> int | None:
    return None if pid is None else bench_image.memory(pid)["VmRSS"]


def pss(pid: int | None) -> int:
    """Proportional set size: shared pages (the Python runtime, libraries) split between the
    processes that map them, so ``serve`` + view is not counted twice for what they share."""
    if pid is None:
        return 0
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))


def repository(reference: str, registry: str) -> str:
    return reference.removeprefix(registry + "/").rsplit(":", 1)[0]


def at_once(call: Callable[[Request], object], requests: list[Request]) -> tuple[float, list[float]]:
    """Run ``call`` on every request from its own thread, all released together by a barrier.

    Returns the wall time from the release to the last answer, and each call's own time: the
    driver sees a burst as when a Deployment's pods land on one node at the same moment.
    """
    barrier = threading.Barrier(len(requests) + 1)

    def timed(request: Request) -> float:
        barrier.wait()
        start = time.perf_counter()
        call(request)
        return time.perf_counter() - start

    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(timed, request) for request in requests]
        barrier.wait()
        start = time.perf_counter()
        calls = [future.result() for future in futures]
        return time.perf_counter() - start, calls


def push_layer_image(registry: str, repo_tag: str, blobs: list[bytes], media_type: str, work: Path) -> Pushed:
    """``push_image`` of untitled layers of one media type, its upload files deleted after."""
    pushed = push_image(registry, repo_tag, [(blob, media_type) for blob in blobs], work)
    shutil.rmtree(work)
    return pushed


# -- concurrency ---------------------------------------------------------------------------------

@dataclass
class Burst:
    volumes: int
    wall: float
    calls: list[float]
    fetches: dict[str, int]  # blob digest -> GETs during the burst
    manifest_requests: int
    unpublish_wall: float
    left: int


def burst(registry: str, reference: str, files: int, mode: str, base: Path, n: int) -> Burst:
    """``n`` publishes of ``reference`` at once on a fresh driver; then ``n`` unpublishes at once."""
    repo = repository(reference, registry)
    fetched = blob_fetches(registry, repo)
    manifests = sum(f"/v2/{repo}/manifests/" in line for line in access_log(registry))
    tmp = Path(tempfile.mkdtemp(prefix=f"burst-{mode}-{n}-", dir=base))
    with run_driver(tmp, registry, mode) as driver:
        kubelet = tmp / "kubelet"
        requests = [volume(kubelet, "burst", i, reference) for i in range(n)]
        wall, calls = at_once(driver.publish, requests)
        found = sum(len(names) for _, _, names in os.walk(requests[0].target_path))
        empty = [r.target_path for r in requests if not any(os.scandir(r.target_path))]
        if found < files or empty:
            raise RuntimeError(f"{mode}: volume shows {found} of {files} files; {len(empty)} volumes empty")
        unpublish_wall, _ = at_once(lambda r: driver.unpublish(unpublish_request(r)), requests)
        left = mounts_under(kubelet)
    shutil.rmtree(tmp)
    after = blob_fetches(registry, repo)
    manifests = sum(f"/v2/{repo}/manifests/" in line for line in access_log(registry)) - manifests
    return Burst(n, wall, calls, {d: c - fetched.get(d, 0) for d, c in after.items() if c > fetched.get(d, 0)},
                 manifests, unpublish_wall, left)  # fmt: skip


def run_concurrency(args: argparse.Namespace, registry: str, image: Pushed, files: int, modes: list[str],
                    base: Path) -> list[str]:  # fmt: skip
    cold: dict[str, list[float]] = {}
    bursts: dict[str, list[Burst]] = {}
    for mode in modes:
        cold[mode] = [bench.cold_publish(registry, image.reference, mode, base, files) for _ in range(args.repeats)]
        bursts[mode] = [burst(registry, image.reference, files, mode, base, n) for n in args.concurrency]
        for b in bursts[mode]:
            print(f"  {mode} ×{b.volumes}: {bench.ms(b.wall)} ms (cold one {bench.ms(statistics.median(cold[mode]))} ms), "
                  f"blob GETs {sorted(b.fetches.values())}, mounts left {b.left}", flush=True)  # fmt: skip
    lines = [
        f"### Concurrency: N publishes of one reference at once, fresh state dir (the {image.reference.split('/', 1)[1]} image)",
        "",
        "Wall = barrier release to the last answer; cold = one publish on a fresh driver (median of "
        f"{args.repeats}); blob GETs from the registry's access log during the burst, per blob.",
        "",
        "| mode | N | wall ms | one cold publish ms | wall ÷ cold | per call p50 / max ms | blob GETs per blob "
        "(target 1) | manifest requests | unpublish all, wall ms | mounts left |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for mode in modes:
        one = statistics.median(cold[mode])
        for b in bursts[mode]:
            ok = bool(b.fetches) and set(b.fetches.values()) == {1}
            gets = ", ".join(str(c) for c in b.fetches.values()) or "none"
            lines.append(
                f"| {mode} | {b.volumes} | {bench.ms(b.wall)} | {bench.ms(one)} | {b.wall / one:.2f}× | "
                f"{bench.ms(bench.pct(b.calls, 50))} / {bench.ms(max(b.calls))} | {gets} ({len(b.fetches)} blobs) "
                f"{bench.verdict(ok)} | {b.manifest_requests} | {bench.ms(b.unpublish_wall)} | {b.left} |"
            )
    return lines + [""]


# -- reads ---------------------------------------------------------------------------------------

@dataclass
class ReadsTree:
    tar: bytes
    entries: int
    large: list[str]
    large_bytes: int
    small_bytes: int


def make_reads_tree(entries: int, large_mib: int, seed: int = bench.SEED) -> ReadsTree:
    """``entries`` tar entries: ``LARGE_FILES`` files of random bytes totalling ``large_mib``, and
    small files (100 B to 16 KiB, log-uniform, random bytes) in a two-level tree of directories
    of ~20 files each, as in a source checkout or a ``node_modules``."""
    rng = random.Random(seed)
    leaves = max(1, entries // 21)
    top = max(1, round(leaves**0.5))
    dirs = ["src", "big"] + [f"src/m{a:02d}" for a in range(top)]
    leaf_dirs = [f"src/m{k % top:02d}/p{k // top:03d}" for k in range(leaves)]
    dirs += leaf_dirs
    small = entries - len(dirs) - LARGE_FILES
    if small < 0:
        raise ValueError(f"--entries {entries} is too few")
    buf = io.BytesIO()
    small_bytes = 0

    def add(name: str, data: bytes | None) -> None:
        info = tarfile.TarInfo(name)
        info.mtime = 1_700_000_000
        if data is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = len(data), 0o644
        tar.addfile(info, None if data is None else io.BytesIO(data))

    large = [f"big/blob-{k}.bin" for k in range(LARGE_FILES)]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs):
            add(name, None)
        for k in range(small):
            data = rng.randbytes(bench._log_uniform(rng, 100, 16 << 10))
            small_bytes += len(data)
            add(f"{leaf_dirs[k % leaves]}/f{k:05d}.dat", data)
        for name in large:
            add(name, rng.randbytes((large_mib << 20) // LARGE_FILES))
    return ReadsTree(buf.getvalue(), entries, large, (large_mib << 20) // LARGE_FILES * LARGE_FILES, small_bytes)


@dataclass
class Reads:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    walk_cold: list[float] = field(default_factory=list)
    walk_warm: list[float] = field(default_factory=list)
    view_cpu_cold: list[float] = field(default_factory=list)
    view_cpu_warm: list[float] = field(default_factory=list)
    resident: int = 0
    large_folios: float = 0.0
    cache_grown: list[int] = field(default_factory=list)  # bytes of page cache the cold read added


def cached_bytes() -> int:
    """``Cached`` of /proc/meminfo: all of the page cache, which also shows an erofs mount caching the
    tars it reads from (a buffered file-backed mount caches each byte twice)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Cached:"):
                return int(line.split()[1]) << 10
    raise RuntimeError("no Cached line in /proc/meminfo")


def drop_caches() -> None:
    """Write back, then drop clean page cache, dentries and inodes (the FUSE view's too)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_files(paths: list[Path]) -> float:
    """Seconds to read every file front to back in 1 MiB ``readinto`` calls (no copy kept)."""
    buf = bytearray(1 << 20)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def walk_tree(root: Path, entries: int) -> float:
    """Seconds for ``find`` to list and ``lstat`` every entry (size, mode, owner); checks the count."""
    start = time.perf_counter()
    out = subprocess.run(["find", str(root), "-printf", "%s %m %U\\n"], capture_output=True, check=True).stdout
    elapsed = time.perf_counter() - start
    listed = out.count(b"\n")
    if listed != entries + 1:  # + the root itself
        raise RuntimeError(f"find {root} listed {listed} entries, expected {entries + 1}")
    return elapsed


def resident_bytes(paths: list[Path]) -> int:
    """Bytes of ``paths`` in the page cache (``fincore``: mmap + mincore, which a FUSE file allows)."""
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, paths)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    return sum(int(v) for v in out.stdout.split()) if out.returncode == 0 else -1


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_PAGE = os.sysconf("SC_PAGE_SIZE")
_KPF_COMPOUND = (1 << 15) | (1 << 16)  # kernel Documentation/admin-guide/mm/pagemap.rst: head, tail


def large_folio_share(paths: list[Path]) -> float:
    """Share of the files' pages that the page cache holds in large folios (compound pages).

    Why it is measured: a read from the page cache costs per folio, and ext4 caches in folios of
    up to 2 MiB while a file system without large folios caches in 4 KiB pages, which caps a
    re-read at a fraction of ext4's. Each file is mapped and touched page by page (already
    cached after the re-read: minor faults, no I/O), each page's frame number is read from
    ``/proc/self/pagemap`` and its flags from ``/proc/kpageflags`` (root only). -1 when those
    cannot be read.
    """
    large = total = 0
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap, \
                open("/proc/kpageflags", "rb", buffering=0) as kpageflags:  # fmt: skip
            for path in paths:
                size = path.stat().st_size // _PAGE * _PAGE
                with open(path, "rb") as f:
                    addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    return -1.0
                try:
                    for off in range(0, size, _PAGE):
                        ctypes.string_at(addr + off, 1)
                    pagemap.seek(addr // _PAGE * 8)
                    entries = struct.unpack(f"{size // _PAGE}Q", pagemap.read(size // _PAGE * 8))
                finally:
                    _LIBC.munmap(addr, size)
                for entry in entries:
                    if entry >> 63:  # present
                        kpageflags.seek((entry & ((1 << 55) - 1)) * 8)
                        (flags,) = struct.unpack("Q", kpageflags.read(8))
                        large += bool(flags & _KPF_COMPOUND)
                        total += 1
    except OSError:
        return -1.0
    return large / total if total else -1.0


def measure_reads(root: Path, view: int | None, tree: ReadsTree, result: Reads) -> None:
    paths = [root / name for name in tree.large]
    cpu = bench.process_cpu if view else (lambda _pid: 0.0)
    drop_caches()
    used, cached = cpu(view), cached_bytes()
    result.cold.append(read_files(paths))
    result.cache_grown.append(cached_bytes() - cached)
    result.view_cpu_cold.append(cpu(view) - used)
    used = cpu(view)
    result.warm.append(read_files(paths))
    result.view_cpu_warm.append(cpu(view) - used)
    result.resident = resident_bytes(paths)
    result.large_folios = large_folio_share(paths)
    drop_caches()
    result.walk_cold.append(walk_tree(root, tree.entries))
    result.walk_warm.append(walk_tree(root, tree.entries))


def erofs_files(state: Path) -> tuple[Path, list[Path]]:
    """The one digest's image in the erofs driver's ``state`` dir, and the tars it names."""
    store = Store(state)
    (digest,) = store.committed_digests()
    files = erofs.image_path(state, digest), [state / source for source in erofsimage.sources(store.load_tree(digest))]
    del store
    gc.collect()  # the store's SQLite connections (held in a reference cycle) would keep the work ext4 busy
    return files


def mount_variant(files: tuple[Path, list[Path]], target: Path, backing: str, direct_io: bool, readahead_kb: int | None) -> str:
    """Mount ``files`` (``erofs_files``) on ``target`` as asked; what the mount's bdi then reads
    ahead (its ``read_ahead_kb``; a file-backed mount has no bdi)."""
    target.mkdir(parents=True)
    erofsmount.mount(*files, target, direct_io=direct_io, backing=backing)
    info = kernel.find_mount(str(target))
    assert info is not None
    bdi = Path(f"/sys/class/bdi/{info.device}/read_ahead_kb")
    if readahead_kb is not None:
        bdi.write_text(f"{readahead_kb}\n")
    return f"{bdi.read_text().strip()} KiB" if bdi.exists() else "no bdi"


def erofs_publish_both_ways(args: argparse.Namespace, registry: str, base: Path, files: tuple[Path, list[Path]],
                            reads_tree: str) -> list[str]:  # fmt: skip
    """What loop devices cost a publish: cold publishes (``bench_publish.cold_publish``) of a 64 MiB
    image (``bench_publish.make_layer``, one gzip layer) and of the reads tree (``reads_tree``) by a
    fresh erofs driver file-backed and over loop devices, alternated; and ``erofsmount.mount``
    alone of the reads tree's image both ways."""
    layer = bench.make_layer(64)
    pushed = push_layer_image(registry, "bench/scale-erofs-publish:v1", [layer.gz], bench.OCI_TAR_GZIP, base / "push-erofs")
    images = {f"64 MiB image ({layer.files} files, one gzip layer)": (pushed.reference, layer.files),
              f"the reads tree ({args.entries} entries, one plain tar)": (reads_tree, LARGE_FILES)}  # fmt: skip
    publish: dict[tuple[str, str], list[float]] = {(image, backing): [] for image in images for backing in ("file", "loop")}
    mount: dict[str, list[float]] = {"file": [], "loop": []}
    target = base / "mount-timed"
    target.mkdir()
    for _ in range(args.repeats):
        for image, backing in publish:
            os.environ[erofsmount.FORCE_BACKING] = backing  # run_driver passes our environment on
            try:
                publish[image, backing].append(bench.cold_publish(registry, images[image][0], "erofs", base, images[image][1]))
            finally:
                del os.environ[erofsmount.FORCE_BACKING]
        for backing in mount:
            start = time.perf_counter()
            erofsmount.mount(*files, target, direct_io=True, backing=backing)
            mount[backing].append(time.perf_counter() - start)
            kernel.unmount(str(target))
    median = lambda runs: bench.ms(statistics.median(runs))
    every = lambda runs: ", ".join(bench.ms(v) for v in runs)
    return [
        f"- what loop devices cost a publish ({args.repeats} of each, alternated, medians; all runs in brackets): "
        + "; ".join(f"cold publish of the {image} by a fresh erofs driver, file-backed {median(publish[image, 'file'])} ms "
                    f"({every(publish[image, 'file'])}), over loop devices {median(publish[image, 'loop'])} ms "
                    f"({every(publish[image, 'loop'])})" for image in images)
        + f"; `erofsmount.mount` alone of the reads tree's image (one tar): file-backed {median(mount['file'])} ms, "
        f"over two loop devices {median(mount['loop'])} ms",
    ]


def run_reads(args: argparse.Namespace, registry: str, modes: list[str], base: Path) -> list[str]:
    print(f"generating the {args.entries}-entry tree with {args.read_mib} MiB of large files ...", flush=True)
    tree = make_reads_tree(args.entries, args.read_mib)
    pushed = push_layer_image(registry, "bench/scale-reads:v1", [tree.tar], bench_image.OCI_TAR, base / "push-reads")
    native = base / "native"
    native.mkdir()
    subprocess.run(["tar", "x", "-C", str(native)], input=tree.tar, check=True)
    size = len(tree.tar)
    del tree.tar
    roots: dict[str, tuple[Path, int | None]] = {"disk (tar x on the ext4)": (native, None)}
    publish_s: dict[str, float] = {}
    readahead: dict[str, str] = {}
    costs: list[str] = []
    drivers = {mode: (mode, {}) for mode in modes}
    if args.erofs_variants and "erofs" in modes:
        drivers["erofs-loop"] = ("erofs", {erofsmount.FORCE_BACKING: "loop"})
    with contextlib.ExitStack() as stack:
        for name, (mode, env) in drivers.items():
            tmp = Path(tempfile.mkdtemp(prefix=f"reads-{name}-", dir=base))
            driver = stack.enter_context(run_driver(tmp, registry, mode, env=env))
            request = volume(tmp / "kubelet", "reads", 0, pushed.reference)
            start = time.perf_counter()
            driver.publish(request)
            publish_s[name] = time.perf_counter() - start
            stack.callback(driver.unpublish, unpublish_request(request))
            roots[f"{name} volume"] = (Path(request.target_path), view_pid(driver, mode))
            if name == "erofs" and args.erofs_variants:
                files = erofs_files(driver.state_dir)
                for variant, how in EROFS_VARIANTS.items():
                    target = base / "variants" / variant.replace(" ", "-").replace(",", "")
                    readahead[variant] = mount_variant(files, target, *how)
                    stack.callback(kernel.unmount, str(target))
                    roots[variant] = (target, None)
                costs = erofs_publish_both_ways(args, registry, base, files, pushed.reference)
        results = {name: Reads() for name in roots}
        names = list(roots)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:  # each goes first in turn
                measure_reads(*roots[name], tree, results[name])
            print(f"  repeat {r + 1}: " + ", ".join(
                f"{name.split()[0]} {bench.ms(res.cold[-1])}/{bench.ms(res.warm[-1])}/{bench.ms(res.walk_cold[-1])} ms"
                for name, res in results.items()), flush=True)  # fmt: skip
    shutil.rmtree(native)
    disk = results[next(iter(roots))]
    mbps = lambda seconds: f"{tree.large_bytes / seconds / MB:.0f}"
    lines = [
        f"### FUSE reads: a tree of {tree.entries} entries ({args.repeats} repeats, medians)",
        "",
        f"- tree: {tree.entries} entries: {LARGE_FILES} large "
        f"files of random bytes ({bench_image.mib(tree.large_bytes)}), the rest small files of random bytes "
        f"({bench_image.mib(tree.small_bytes)}) in two levels of directories; one plain `tar` layer of "
        f"{bench_image.mib(size)}; cold publish " + ", ".join(f"{m} {bench.ms(s)} ms" for m, s in publish_s.items()),
        *([f"- erofs variants, mounted by hand from the erofs driver's image and store (the erofs volume: file-backed "
           f"`directio`, as the driver mounts it; erofs-loop: loop devices with direct I/O, readahead 1 MiB, as the driver sets them); "
           f"their mount's readahead: " + ", ".join(f"{v}: {ra}" for v, ra in readahead.items()), *costs] if readahead else []),
        "- cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`. The ext4 is a loop device over a file in "
        "/dev/shm, so a cold read of it comes from RAM through the block layer: the \"disk\" here is faster "
        "than a real one, which makes the ratios harder to meet, not easier",
        f"- the targets in the header are the FUSE view's; an erofs volume's are {EROFS_TARGETS[0]}×, "
        f"{EROFS_TARGETS[1]}× and {EROFS_TARGETS[2]}× (the kernel serves it, as the disk)",
        "- read = the large files, 1 MiB `readinto` each; walk = `find DIR -printf '%s %m %U\\n'` "
        "(readdir + lstat of every entry)",
        "- page cache: `fincore` of the large files after the re-read, and the share of those pages held in "
        "large folios (`/proc/kpageflags`: compound pages; a re-read copies out one folio at a time); view CPU = "
        "user + system seconds of the FUSE view process during the read (0 = the kernel served the re-read from "
        "its page cache); page cache added = growth of `Cached` (/proc/meminfo) over the cold read, whoever "
        "holds it (an erofs mount's tars too), so other processes' I/O adds noise",
        "",
        f"| tree | cold read MB/s | ÷ disk (≥ {TARGET_COLD_READ}) | re-read MB/s | ÷ disk (≥ {TARGET_WARM_READ}) | "
        f"cold walk ms | ÷ disk (≤ {TARGET_WALK:g}) | warm walk ms | ÷ disk | in page cache after re-read | "
        "in large folios | "
        f"page cache the cold read added ÷ the files' bytes (≤ {TARGET_CACHE:g}) | view CPU s, cold read / re-read |",
        "| --- | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    base_cold, base_warm = statistics.median(disk.cold), statistics.median(disk.warm)
    base_walk, base_walk_warm = statistics.median(disk.walk_cold), statistics.median(disk.walk_warm)
    for name, res in results.items():
        cold_target, warm_target, walk_target = (
            EROFS_TARGETS if name.startswith("erofs") else (TARGET_COLD_READ, TARGET_WARM_READ, TARGET_WALK)
        )
        cold, warm = statistics.median(res.cold), statistics.median(res.warm)
        walk, walk_warm = statistics.median(res.walk_cold), statistics.median(res.walk_warm)
        judged = name != next(iter(roots))
        mark = (lambda ok: " " + bench.verdict(ok)) if judged else (lambda ok: "")
        cpu = (f"{statistics.median(res.view_cpu_cold):.2f} / {statistics.median(res.view_cpu_warm):.2f}"
               if roots[name][1] else "–")  # fmt: skip
        resident = "n/a (fincore failed)" if res.resident < 0 else bench_image.mib(res.resident)
        folios = "n/a" if res.large_folios < 0 else f"{res.large_folios:.0%}"
        grown = statistics.median(res.cache_grown) / tree.large_bytes
        lines.append(
            f"| {name} | {mbps(cold)} | {base_cold / cold:.2f}×{mark(base_cold / cold >= cold_target)} | "
            f"{mbps(warm)} | {base_warm / warm:.2f}×{mark(base_warm / warm >= warm_target)} | "
            f"{bench.ms(walk)} | {walk / base_walk:.2f}×{mark(walk / base_walk <= walk_target)} | "
            f"{bench.ms(walk_warm)} | {walk_warm / base_walk_warm:.2f}× | {resident} | {folios} | "
            f"{grown:.2f}×{mark(grown <= TARGET_CACHE)} | {cpu} |"
        )
    return lines + [""]


# -- scale ---------------------------------------------------------------------------------------

@dataclass
class Step:
    live: int
    publish: list[float]
    serve_rss: int | None
    view_rss: int | None
    pss: int  # serve + view
    slab: int  # the kernel's unreclaimable slab memory, /proc/meminfo (the whole machine's)


def kernel_slab() -> int:
    """``SUnreclaim`` of /proc/meminfo in bytes (after a drop of reclaimable dentries and inodes):
    the slab memory the kernel cannot give back, where live mounts' structs, superblocks and
    per-device state sit: the kernel's cost of the views, machine-wide, hence noisy."""
    drop_caches()
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("SUnreclaim:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no SUnreclaim line")


def scale_mode(args: argparse.Namespace, registry: str, references: list[str], mode: str,
               base: Path) -> tuple[Step, Step, list[Step], list[float], int]:  # fmt: skip
    """Grow live volumes through ``args.steps``; (fresh start, digests cached, steps, unpublish
    times, mounts left)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{mode}-", dir=base))
    with run_driver(tmp, registry, mode) as driver:
        view = view_pid(driver, mode)
        time.sleep(1)  # start-up settles
        start = Step(0, [], rss(driver.process.pid), rss(view), pss(driver.process.pid) + pss(view), kernel_slab())
        kubelet = tmp / "kubelet"
        for k, reference in enumerate(references):  # cache every digest (cold pulls, untimed)
            request = volume(kubelet, "cache", k, reference)
            driver.publish(request)
            driver.unpublish(unpublish_request(request))
        cached = Step(0, [], rss(driver.process.pid), rss(view), pss(driver.process.pid) + pss(view), kernel_slab())
        live: list[Request] = []
        probe = itertools.count()
        steps = []
        for count in args.steps:
            while len(live) < count:
                live.append(volume(kubelet, "pod", len(live), references[len(live) % len(references)]))
                driver.publish(live[-1])
            times = []
            for p in range(args.probes):
                request = volume(kubelet, "probe", next(probe), references[p % len(references)])
                began = time.perf_counter()
                driver.publish(request)
                times.append(time.perf_counter() - began)
                driver.unpublish(unpublish_request(request))
            steps.append(Step(len(live), times, rss(driver.process.pid), rss(view), pss(driver.process.pid) + pss(view),
                              kernel_slab()))  # fmt: skip
            print(f"  {mode}: {len(live)} live, publish p50 {bench.ms(bench.pct(times, 50))} ms, serve RSS "
                  f"{bench_image.mb(steps[-1].serve_rss)} MB, view RSS {bench_image.mb(steps[-1].view_rss)} MB", flush=True)  # fmt: skip
        unpublish = []
        for request in live:
            began = time.perf_counter()
            driver.unpublish(unpublish_request(request))
            unpublish.append(time.perf_counter() - began)
        left = mounts_under(kubelet)
    shutil.rmtree(tmp)
    return start, cached, steps, unpublish, left


def run_scale(args: argparse.Namespace, registry: str, modes: list[str], base: Path) -> list[str]:
    references = []
    for k in range(args.digests):
        layer = bench.make_layer(1, seed=bench.SEED + 1000 + k)
        references.append(push_layer_image(registry, f"bench/scale-{k}:v1", [layer.gz], bench.OCI_TAR_GZIP,
                                           base / "push-scale").reference)  # fmt: skip
    lines = [
        f"### Scale: live volumes of {args.digests} cached digests (1 MiB images, mixed round-robin)",
        "",
        f"At each step, {args.probes} publishes of a new volume (each unpublished again) give the p50; "
        "RSS = `VmRSS` after them (judged), PSS = `Pss` of `smaps_rollup` (shared pages split); MB = 10⁶ bytes. \"start\" = the driver just started, nothing pulled; "
        "\"cached\" = every digest pulled once and unpublished (in erofs, each digest's image stays mounted). Kernel slab = "
        "`SUnreclaim` of /proc/meminfo after `drop_caches`, its growth since start (machine-wide: other work moves it too).",
        "",
        f"| mode | live volumes | publish p50 ms | p99 ms | ÷ p50 at {args.steps[0]} (≤ {TARGET_P50_GROWTH} at "
        f"{args.steps[-1]}) | serve RSS MB | FUSE view RSS MB | serve + view MB (≤ {TARGET_IDLE_RSS_MB:g} idle, "
        f"≤ {TARGET_MAX_RSS_MB:g} at {args.steps[-1]}) | serve + view PSS MB | kernel slab Δ MB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    after = []
    for mode in modes:
        start, cached, steps, unpublish, left = scale_mode(args, registry, references, mode, base)
        first = bench.pct(steps[0].publish, 50)
        for step in [start, cached, *steps]:
            total = (step.serve_rss or 0) + (step.view_rss or 0)
            limit = TARGET_IDLE_RSS_MB if step.live <= 1 else TARGET_MAX_RSS_MB if step is steps[-1] else None
            memory = f"{bench_image.mb(total)}" + (f" {bench.verdict(total <= limit * MB)}" if limit else "")
            slab = bench_image.mb(step.slab - start.slab)
            if not step.publish:
                lines.append(f"| {mode} | {'start' if step is start else 'cached'} | – | – | – | {bench_image.mb(step.serve_rss)} | "
                             f"{bench_image.mb(step.view_rss)} | {memory} | {bench_image.mb(step.pss)} | {slab} |")  # fmt: skip
                continue
            p50 = bench.pct(step.publish, 50)
            growth = f"{p50 / first:.2f}×" + (f" {bench.verdict(p50 / first <= TARGET_P50_GROWTH)}" if step is steps[-1] else "")
            lines.append(f"| {mode} | {step.live} | {bench.ms(p50)} | {bench.ms(bench.pct(step.publish, 99))} | {growth} | "
                         f"{bench_image.mb(step.serve_rss)} | {bench_image.mb(step.view_rss)} | {memory} | "
                         f"{bench_image.mb(step.pss)} | {slab} |")  # fmt: skip
        after.append(f"{mode}: unpublish of the {len(unpublish)} volumes p50 {bench.ms(bench.pct(unpublish, 50))} ms, "
                     f"p99 {bench.ms(bench.pct(unpublish, 99))} ms; mounts left under the kubelet dir in "
                     f"`/proc/self/mountinfo` after it: {left} {bench.verdict(left == 0)}")  # fmt: skip
    return lines + [""] + [f"- {line}" for line in after] + [""]


# -- disk ----------------------------------------------------------------------------------------

def du(state: Path) -> int:
    """Allocated bytes under the state dir, the FUSE view (a mount of every tree) left out."""
    os.sync()  # ext4 allocates delayed blocks at writeback
    out = subprocess.run(["du", "-sxB1", "--exclude=view", str(state)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def usage_after(registry: str, mode: str, base: Path, batches: list[list[str]]) -> list[int]:
    """A fresh driver publishes each batch of references (one pod each) in turn; ``du`` after each."""
    tmp = Path(tempfile.mkdtemp(prefix=f"disk-{mode}-", dir=base))
    used = []
    with run_driver(tmp, registry, mode) as driver:
        requests = []
        for batch in batches:
            for reference in batch:
                requests.append(volume(tmp / "kubelet", "disk", len(requests), reference))
                driver.publish(requests[-1])
            used.append(du(driver.state_dir))
        for request in requests:
            driver.unpublish(unpublish_request(request))
    shutil.rmtree(tmp)
    return used


@dataclass
class Versions:
    label: str
    v1: Pushed
    v2: Pushed
    v1_blob_bytes: int
    shared_blob_bytes: int  # v2's layer blobs that v1 has too: stored once
    new_blob_bytes: int  # v2's layer blobs that v1 does not have: stored again, whole
    how: str


def push_versions(registry: str, base: Path, size_mib: int) -> list[Versions]:
    """A Klaus plugin with one file changed in v2, and a 3-layer image with its last layer changed."""
    tree = bench_compare.plugin_tree(PLUGIN_MIB << 20)
    changed = next(name for name, (content, _) in sorted(tree.items()) if isinstance(content, bytes) and name.endswith(".py"))
    content, mode = tree[changed]
    tree2 = {**tree, changed: (content + b"# v2\n", mode)}  # type: ignore[operator]
    plugins: list[tuple[Pushed, int]] = []  # (pushed, layer blob bytes)
    for tag, files in (("v1", tree), ("v2", tree2)):
        work = base / f"push-plugin-{tag}"
        plugins.append((push_klaus(registry, f"bench/scale-plugin:{tag}", files, work), (work / "plugin.tar.gz").stat().st_size))
        shutil.rmtree(work)
    per_layer = (size_mib << 20) // 3
    layers = [bench_image.compress("gzip", bench.make_tar(per_layer, bench.SEED + i, tag=f"-l{i}")[0]) for i in range(3)]
    new = bench_image.compress("gzip", bench.make_tar(per_layer, bench.SEED + 99, tag="-l2v2")[0])
    v1 = push_layer_image(registry, "bench/scale-image:v1", layers, bench.OCI_TAR_GZIP, base / "push-image")
    v2 = push_layer_image(registry, "bench/scale-image:v2", [*layers[:2], new], bench.OCI_TAR_GZIP, base / "push-image")
    return [
        Versions(f"Klaus plugin ({PLUGIN_MIB} MiB of files, one layer)", plugins[0][0], plugins[1][0], plugins[0][1], 0, plugins[1][1],
                 f"v2 = v1 with one file (`{changed.rsplit('/', 1)[-1]}`) 5 bytes longer: a new layer blob"),
        Versions(f"3-layer image ({size_mib} MiB of files, tar+gzip)", v1, v2, sum(map(len, layers)),
                 sum(map(len, layers[:2])), len(new),
                 "v2 = v1 with its last layer replaced (new files); the first two layers are the same blobs"),
    ]  # fmt: skip


def run_disk(args: argparse.Namespace, registry: str, image: Pushed, image_blob: int, image_tar: int,
             modes: list[str], base: Path) -> list[str]:  # fmt: skip
    versions = push_versions(registry, base, args.size_mib)
    lines = [
        "### Disk: bytes the store uses (`du -sxB1 --exclude=view` of the state dir: allocated bytes, "
        "SQLite databases included)",
        "",
        "The store keeps each layer once: a compressed layer that is only unpacked as its inflated tar (its blob "
        "is verified and inflated as it downloads, and not kept), a plain tar or a file as its blob; bind mode adds "
        "the extracted tree. `du` counts what is allocated on the ext4 (4 KiB blocks). \"÷ tar\" is the store "
        f"with one pod over the layer's uncompressed tar ({image_tar:,} bytes, what the image unpacks to).",
        "",
        f"| mode | one digest ({bench_image.mib(image_blob)} of blobs) | 1 pod | ÷ tar (≤ {TARGET_STORE}, erofs and fuse) "
        f"| {args.pods} pods | difference | same (target) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    per_pods = {mode: usage_after(registry, mode, base, [[image.reference], [image.reference] * (args.pods - 1)])
                for mode in modes}  # fmt: skip
    for mode, (one, many) in per_pods.items():
        # Each pod adds a row to publications.db, nothing to the store: a copy would add ≥ the tree.
        ratio = f"{one / image_tar:.2f}" + ("" if mode == "bind" else f" ({bench.verdict(one / image_tar <= TARGET_STORE)})")
        lines.append(f"| {mode} | {image.reference.split('/', 1)[1]} | {one:,} | {ratio} | {many:,} | {many - one:+,} | "
                     f"{bench.verdict(many - one < image_blob / 10)} (no per-pod copy: < 10 % of the blob) |")  # fmt: skip
    lines += [
        "",
        "| mode | artifact | how v2 differs | v1 layer blobs, bytes | v2's blobs v1 has (stored once) | v2's new blobs "
        "(stored again, whole) | store, v1 alone | store, v1 + v2 | v2 added | v2 added ÷ v1 alone |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in modes:
        for v in versions:
            alone, both = usage_after(registry, mode, base, [[v.v1.reference], [v.v2.reference]])
            added = both - alone
            lines.append(
                f"| {mode} | {v.label} | {v.how} | {v.v1_blob_bytes:,} | {v.shared_blob_bytes:,} | {v.new_blob_bytes:,} | "
                f"{alone:,} | {both:,} | {added:,} | {added / alone:.2f} |"
            )
    print("\n".join(lines[-len(modes) * len(versions):]), flush=True)
    return lines + [
        "",
        "Sharing is by layer digest: a layer that two versions have in common is stored once (as its inflated "
        "tar). A layer that differs by one file is a different blob and is stored again whole: a "
        "one-file change to a single-layer plugin costs as much disk as a new plugin. In bind mode each digest's "
        "tree is also extracted whole, so there shared layers save their inflated tar, not the files.",
        "",
    ]


# -- main ----------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--mode", nargs="+", choices=("erofs", "fuse", "bind"), default=["erofs", "fuse", "bind"])
    parser.add_argument("--size-mib", type=int, default=32, help="files in the concurrency/disk image (default 32)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200], help="publishes at once (default 50 200)")
    parser.add_argument("--repeats", type=int, default=3, help="cold publishes, read repeats (default 3)")
    parser.add_argument("--entries", type=int, default=10_000, help="entries of the reads tree (default 10000)")
    parser.add_argument("--read-mib", type=int, default=256, help="large files of the reads tree (default 256)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 100, 1000], help="live volumes (default 1 100 1000)")
    parser.add_argument("--digests", type=int, default=10, help="digests the live volumes mix (default 10)")
    parser.add_argument("--probes", type=int, default=30, help="timed publishes per step (default 30)")
    parser.add_argument("--pods", type=int, default=50, help="pods of one digest for the disk part (default 50)")
    parser.add_argument("--erofs-variants", action="store_true",
                        help="reads: also erofs over loop devices, and the image mounted in every backing and option")
    parser.add_argument("--workdir", help="as for bench_publish.py (default: a fresh ext4 on a RAM-backed loop device)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args, command = bench.prepare(parser, ("tar", "find", "du", "fincore", "pgrep"), "the driver makes real mounts, and the reads part drops the page cache")
    modes = args.mode
    parts = [part for part in PARTS if part in args.parts]
    with bench.work_filesystem(args.workdir) as (base, fs_note):
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
        lines = [
            BEGIN,
            "## Latest run: concurrency, FUSE reads, scale, disk (generated by `bench/bench_scale.py`)",
            "",
            "```",
            command,
            "```",
            "",
            *bench.machine(fs_note),
            f"- load average (1, 5, 15 min) as the run started: {load} (the test suite may share the 2 cores)",
            "",
        ]
        with run_registry(base / "registry") as registry:
            image, files, blob, tar = None, 0, 0, 0
            if {"concurrency", "disk"} & set(parts):
                print(f"generating the {args.size_mib} MiB image ...", flush=True)
                layer = bench.make_layer(args.size_mib)
                image = push_layer_image(registry, "bench/scale-burst:v1", [layer.gz], bench.OCI_TAR_GZIP, base / "push")
                files, blob, tar = layer.files, len(layer.gz), layer.tar_bytes
                lines.append(f"- concurrency/disk image: {layer.files} files, {bench_image.mib(layer.tar_bytes)} tar, "
                             f"{bench_image.mib(blob)} gzip, one untitled tar+gzip layer (`bench_publish.make_layer`)")  # fmt: skip
                lines.append("")
            for part in parts:
                print(f"part {part} ...", flush=True)
                if part == "concurrency":
                    lines += run_concurrency(args, registry, image, files, modes, base)  # type: ignore[arg-type]
                elif part == "reads":
                    lines += run_reads(args, registry, modes, base)
                elif part == "scale":
                    lines += run_scale(args, registry, modes, base)
                else:
                    lines += run_disk(args, registry, image, blob, tar, modes, base)  # type: ignore[arg-type]
    section = "\n".join([*lines, END]) + "\n"
    bench.show_and_record(section, not args.no_write, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

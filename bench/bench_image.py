"""A multi-layer image cold, against its layers' floor, and the driver's memory for a 1 GiB layer.

Two parts (issue 4, "Performance"), ``--part layers``, ``rss`` or ``both``:

``layers``: an image of three untitled layers of ``bench_publish.make_tar`` content (about 85 MiB
of files each, half code-like text, half incompressible; each layer's own file names, shared
directories): layer 1 ``tar+gzip`` (gzip -6), layer 2 ``tar+zstd`` (zstandard level 3, the
default of ``zstd`` and containerd), layer 3 plain ``tar``. Each repeat measures

* the floor of the three layers: fetch + inflate + sha256 of the three blobs, each pipeline
  checking the digest it computes, in five variants, the fastest median being the floor:
  a) three ``curl | python`` (sha256 in one thread, inflate in another; the plain tar is only
  hashed), all three started at once, so that the floor uses both cores as the driver may;
  b) three ``curl``s into fifos read by one Python process, as in (a) but with two threads per
  layer in one process (one interpreter start-up instead of three); b') (b) with gzip inflated by
  ISA-L (``isal``), as the driver does; c) the pipelines of (a) one layer after another; d) three
  ``curl | tee fifo | sha256sum`` with ``gzip -dc`` / ``zstd -dc`` on the fifo, all at once;
* ``curl | tar x`` of the three layers into one directory, in manifest order (a reference, no target);
* cold NodePublishVolume of the image in each mode: fresh driver and state dir, time of the
  RPC (as ``bench_publish.cold_publish``: the volume is then walked, untimed).

``rss``: one 1 GiB ``tar+gzip`` layer in three shapes: ``big``, 16 files of 64 MiB random bytes;
``many``, ``make_tar`` content (about 48,000 files, half text); ``zeros``, one 1 GiB file of zeros
(1 MiB of gzip, so every downloaded chunk inflates ~1000-fold). For each shape and mode, a
fresh driver; ``VmRSS`` of ``serve`` (and of the FUSE view process) before the publish, then its
peak is reset (``echo 5 > /proc/PID/clear_refs``) so that ``VmHWM`` after the publish is the peak
*during* it; then every file of the volume is read (``cat``), and the FUSE view's peak is read again.

Run as root, in a private mount namespace (the script also enters one itself):

    unshare -m --propagation private .venv/bin/python bench/bench_image.py \\
        [--part layers|rss|both] [--mode fuse|bind|both] [--size-mib 256] [--repeats 3]

Everything lands on a fresh ext4 as in ``bench_publish.py`` (``--workdir`` to override). It
refreshes the ``bench_image_layers`` / ``bench_image_rss`` sections of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import random
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_publish as bench  # noqa: E402  (puts the repo and tests/ on sys.path)
from artifacts import push_image  # noqa: E402
from driver import run_driver  # noqa: E402
from kubelet import publish_request, target_for, unpublish_request  # noqa: E402
from registry_server import run_registry  # noqa: E402

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_KINDS = (("gzip", bench.OCI_TAR_GZIP), ("zstd", OCI_TAR_ZSTD), ("tar", OCI_TAR))
ZSTD_LEVEL = 3
MARKERS = {
    part: (f"<!-- bench_image_{part}:begin -->", f"<!-- bench_image_{part}:end -->") for part in ("layers", "rss")
}
TARGET_RSS_GROWTH_MB = 50.0
MB = 1_000_000


# -- the image ---------------------------------------------------------------------------------

@dataclass
class Blob:
    kind: str  # "gzip", "zstd" or "tar"
    media_type: str
    data: bytes
    tar_bytes: int
    files: int

    @property
    def hex(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def compress(kind: str, raw: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw, compresslevel=6, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return raw


def make_image(size_mib: int, kinds: Sequence[tuple[str, str]] = LAYER_KINDS) -> list[Blob]:
    """Three layers of ``size_mib / 3`` MiB of files each: gzip, zstd, plain tar (or ``kinds``)."""
    blobs = []
    for i, (kind, media_type) in enumerate(kinds):
        raw, files = bench.make_tar((size_mib << 20) // len(kinds), bench.SEED + i, tag=f"-l{i + 1}")
        blobs.append(Blob(kind, media_type, compress(kind, raw), len(raw), files))
    return blobs


def make_big_files_tar(size_mib: int, file_mib: int = 64, seed: int = bench.SEED) -> tuple[bytes, int]:
    """A tar of ``size_mib / file_mib`` files of random bytes (incompressible); (tar, files)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    count = size_mib // file_mib
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tar.addfile(info)
        for k in range(count):
            info = tarfile.TarInfo(f"data/chunk-{k:03d}.bin")
            info.size, info.mode, info.mtime = file_mib << 20, 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(rng.randbytes(file_mib << 20)))
    return buf.getvalue(), count


class _Zeros:
    """A file object that reads as ``size`` zero bytes."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def make_zeros_layer(size_mib: int) -> tuple[bytes, int, int]:
    """A gzip tar of one file of ``size_mib`` MiB of zeros (a preallocated image or database file):
    1 GiB inflates from 1 MiB, so each downloaded chunk inflates ~1000-fold; (blob, tar bytes, files)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("var/lib/disk.img")
            info.size, info.mode, info.mtime = size_mib << 20, 0o644, 1_700_000_000
            tar.addfile(info, _Zeros(info.size))
        tar_bytes = gz.tell()  # uncompressed bytes written
    return out.getvalue(), tar_bytes, 1


def make_rss_layer(shape: str) -> tuple[bytes, int, int]:
    """The 1 GiB ``tar+gzip`` layer of a shape: (blob, tar bytes, regular files)."""
    if shape == "zeros":
        return make_zeros_layer(1024)
    raw, files = make_big_files_tar(1024) if shape == "big" else bench.make_tar(1 << 30, bench.SEED)
    return compress("gzip", raw), len(raw), files


# -- the floor of several layers ---------------------------------------------------------------

FLOOR_LAYER = (
    "import hashlib, queue, sys, threading, zlib\n"
    "import zstandard\n"
    "codec = sys.argv[1]; h = hashlib.sha256(); out = [(0, True)]\n"
    "q = queue.Queue(16)\n"
    "def inflate():\n"
    "    if codec == 'gzip':\n"
    "        d = zlib.decompressobj(wbits=31)\n"
    "    else:\n"
    "        d = zstandard.ZstdDecompressor().decompressobj()\n"
    "    n = 0\n"
    "    while (chunk := q.get()) is not None:\n"
    "        n += len(d.decompress(chunk))\n"
    "    out[0] = (n, d.eof)\n"
    "t = threading.Thread(target=inflate) if codec != 'tar' else None\n"
    "t and t.start()\n"
    "read = sys.stdin.buffer.read\n"
    "while chunk := read(1 << 20):\n"
    "    h.update(chunk)\n"
    "    t and q.put(chunk)\n"
    "if t:\n"
    "    q.put(None); t.join()\n"
    "assert out[0][1]\n"
    "print(h.hexdigest(), out[0][0])\n"
)
"""One layer's floor: sha256 in this thread, inflate (gzip or zstd; none for a plain tar) in another."""

FLOOR_LAYERS_ONE_PROCESS = (
    "import hashlib, importlib, queue, sys, threading\n"
    "import zstandard\n"
    "gz = importlib.import_module(sys.argv[1])  # zlib, or isal.isal_zlib as the driver uses\n"
    "def layer(codec, path, out):\n"
    "    h = hashlib.sha256(); q = queue.Queue(16); res = [0, True]\n"
    "    def inflate():\n"
    "        d = gz.decompressobj(wbits=31) if codec == 'gzip' else zstandard.ZstdDecompressor().decompressobj()\n"
    "        while (chunk := q.get()) is not None:\n"
    "            res[0] += len(d.decompress(chunk))\n"
    "        res[1] = d.eof\n"
    "    t = threading.Thread(target=inflate) if codec != 'tar' else None\n"
    "    t and t.start()\n"
    "    with open(path, 'rb') as f:  # buffered: read(1 MiB) waits for 1 MiB, as stdin's does\n"
    "        while chunk := f.read(1 << 20):\n"
    "            h.update(chunk)\n"
    "            t and q.put(chunk)\n"
    "    if t:\n"
    "        q.put(None); t.join()\n"
    "    assert res[1]\n"
    "    out.append(f'{h.hexdigest()} {res[0]}')\n"
    "out = []\n"
    "threads = [threading.Thread(target=layer, args=(*arg.split(':', 1), out)) for arg in sys.argv[2:]]\n"
    "[t.start() for t in threads]; [t.join() for t in threads]\n"
    "assert len(out) == len(threads)\n"
    "print('\\n'.join(out))\n"
)
"""All layers in one process, as the driver does: per layer a thread that reads and hashes, and one
that inflates (gzip by the module named first: ``zlib`` or ``isal.isal_zlib``); the blobs come from
``curl``s through fifos."""

_C_INFLATE = {"gzip": "gzip -dc", "zstd": "zstd -dcq", "tar": "cat"}


def floor_variants(urls: list[str], blobs: list[Blob], work: Path) -> dict[str, str]:
    """Shell scripts that fetch, inflate and hash every layer; each prints every layer's digest."""
    python = shlex.quote(sys.executable)  # the venv's: it has zstandard
    pipes = [f"curl -sf {url} | {python} -c {shlex.quote(FLOOR_LAYER)} {blob.kind}" for url, blob in zip(urls, blobs)]

    def at_once(jobs: list[str]) -> str:
        started = " ".join(f"( {job} ) & p{i}=$!;" for i, job in enumerate(jobs))
        return started + " " + " && ".join(f"wait $p{i}" for i in range(len(jobs)))

    c_jobs = []
    for i, (url, blob) in enumerate(zip(urls, blobs)):
        fifo = work / f"floor-{i}.fifo"
        c_jobs.append(
            f"rm -f {fifo}; mkfifo {fifo}; {_C_INFLATE[blob.kind]} < {fifo} > /dev/null & "
            f"curl -sf {url} | tee {fifo} | sha256sum; wait $!"
        )

    def one_process(gzip_module: str) -> str:
        fifos = [work / f"floor-one-{i}.fifo" for i in range(len(urls))]
        return (
            f"rm -f {' '.join(map(str, fifos))}; mkfifo {' '.join(map(str, fifos))}; "
            + " ".join(f"curl -sf {url} > {fifo} & c{i}=$!;" for i, (url, fifo) in enumerate(zip(urls, fifos)))
            + f" {python} -c {shlex.quote(FLOOR_LAYERS_ONE_PROCESS)} {gzip_module} "
            + " ".join(f"{blob.kind}:{fifo}" for blob, fifo in zip(blobs, fifos))
            # A failed python leaves a curl blocked on its fifo: stop them rather than hang.
            + f" || {{ kill {' '.join(f'$c{i}' for i in range(len(urls)))} 2>/dev/null; exit 1; }}; "
            + " && ".join(f"wait $c{i}" for i in range(len(urls)))
        )

    return {
        "3 × curl | python (sha256 ∥ inflate), the three at once": at_once(pipes),
        "3 × curl > fifo, one python: per layer a sha256 thread ∥ an inflate thread": one_process("zlib"),
        "3 × curl > fifo, one python: per layer a sha256 thread ∥ an inflate thread (gzip by ISA-L)":
            one_process("isal.isal_zlib"),
        "3 × curl | python (sha256 ∥ inflate), one after another": " && ".join(f"( {job} )" for job in pipes),
        "3 × curl | tee fifo | sha256sum, gzip -dc / zstd -dc < fifo, the three at once": at_once(c_jobs),
    }


_TAR_FLAGS = {"gzip": "xz", "zstd": "x --zstd", "tar": "x"}


def measure_tar(urls: list[str], blobs: list[Blob], work: Path) -> float:
    """``curl | tar x`` of each layer in order into one directory (later layers over earlier ones)."""
    dest = Path(tempfile.mkdtemp(prefix="tar-x-", dir=work))
    try:
        return bench._timed_shell(
            " && ".join(f"curl -sf {url} | tar {_TAR_FLAGS[blob.kind]} -C {dest}" for url, blob in zip(urls, blobs))
        )
    finally:
        shutil.rmtree(dest)


def timed_shell_cpu(script: str, expect: tuple[str, ...], cpu: list[float]) -> float:
    """``bench._timed_shell``, also appending the CPU seconds its processes used (curl included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = bench._timed_shell(script, expect)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed


# -- memory ------------------------------------------------------------------------------------

def memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> None:
    """Make ``VmHWM`` start again from the current RSS (Linux ≥ 4.0, proc(5) ``clear_refs``)."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


@dataclass
class RssResult:
    shape: str
    mode: str
    blob_bytes: int
    tar_bytes: int
    files: int
    publish_s: float
    serve_before: dict[str, int]
    serve_after: dict[str, int]
    fuse_before: dict[str, int] | None = None
    fuse_after_publish: dict[str, int] | None = None
    fuse_after_read: dict[str, int] | None = None
    read_s: float = 0.0

    def serve_growth(self) -> int:
        return self.serve_after["VmHWM"] - self.serve_before["VmRSS"]

    def fuse_growth(self, after: dict[str, int] | None) -> int | None:
        if self.fuse_before is None or after is None:
            return None
        return after["VmHWM"] - self.fuse_before["VmRSS"]


def rss_publish(registry: str, reference: str, mode: str, base: Path, result: RssResult) -> None:
    """One cold publish on a fresh driver, with the peak RSS of its processes during it."""
    tmp = Path(tempfile.mkdtemp(prefix=f"rss-{mode}-", dir=base))
    with run_driver(tmp, registry, mode) as driver:
        target = target_for(tmp / "kubelet", "pod-rss", "image")
        request = publish_request(target, {"reference": reference})
        fuse = bench.fuse_pid(driver.state_dir) if mode == "fuse" else None
        time.sleep(0.5)  # let the processes settle after start-up
        for pid in (driver.process.pid, fuse):
            if pid is not None:
                reset_peak(pid)
        result.serve_before = memory(driver.process.pid)
        result.fuse_before = memory(fuse) if fuse else None
        os.sync()
        start = time.perf_counter()
        driver.publish(request)
        result.publish_s = time.perf_counter() - start
        result.serve_after = memory(driver.process.pid)
        if fuse:
            result.fuse_after_publish = memory(fuse)
        start = time.perf_counter()
        found = sum(len(files) for _, _, files in os.walk(target))
        subprocess.run(f"find {shlex.quote(str(target))} -type f -print0 | xargs -0 cat > /dev/null",
                       shell=True, check=True)  # fmt: skip
        result.read_s = time.perf_counter() - start
        if fuse:
            result.fuse_after_read = memory(fuse)
        if found < result.files:
            raise RuntimeError(f"{mode}: the volume shows {found} files, expected at least {result.files}")
        driver.unpublish(unpublish_request(request))
    shutil.rmtree(tmp)


# -- reporting ---------------------------------------------------------------------------------

def _zstd_version() -> str:
    out = subprocess.run(["zstd", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v(\d[\d.]*)", out)
    return f"zstd {match.group(1) if match else '?'}"


def mb(value: int | None) -> str:
    return "–" if value is None else f"{value / MB:.1f}"


def mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def layers_report(args: argparse.Namespace, blobs: list[Blob], floors: dict[str, list[float]],
                  floor_cpu: dict[str, list[float]], tar: list[float], cold: dict[str, list[float]],
                  cold_cpu: dict[str, list[float]], command: str, about: list[str]) -> str:  # fmt: skip
    begin, end = MARKERS["layers"]
    floor_medians, floor_name = bench.fastest_floor(floors)
    floor = floor_medians[floor_name]
    lines = [
        begin,
        "## Latest run: a 3-layer image, cold (generated by `bench/bench_image.py --part layers`)",
        "",
        "```",
        command,
        "```",
        "",
        *about,
        (
            f"- zstandard {bench._version('zstandard')}, {_zstd_version()}; the Python floors run "
            f"`{Path(sys.executable).name}` {sys.version.split()[0]} (the venv's, for zstandard)"
        ),
        (
            f"- image: {sum(b.files for b in blobs)} files, {mib(sum(b.tar_bytes for b in blobs))} of tar in three "
            f"untitled layers, {mib(sum(len(b.data) for b in blobs))} of blobs; {args.repeats} repeats (medians)"
        ),
        "",
        "| layer | media type | files | tar | blob |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for i, blob in enumerate(blobs):
        level = {"gzip": " (gzip -6)", "zstd": f" (level {ZSTD_LEVEL})", "tar": ""}[blob.kind]
        lines.append(f"| {i + 1} | `{blob.media_type}`{level} | {blob.files} | {mib(blob.tar_bytes)} | {mib(len(blob.data))} |")
    lines += [
        "",
        "### Reference points (fetch + inflate + sha256 of the three blobs; medians of each repeat)",
        "",
        "CPU: user + system seconds of every process of the command (curl included; the registry not).",
        "",
        "| command | median ms | all ms | CPU s (median) |",
        "| --- | ---: | --- | ---: |",
    ]
    lines += bench.floor_rows(floors, floor_cpu)
    lines.append(
        f"| `curl \\| tar x -C dir` of each layer in order (reference) | {bench.ms(statistics.median(tar))} | "
        f"{', '.join(bench.ms(v) for v in tar)} | |"
    )
    lines += [
        "",
        "### Cold publish of the image (fresh driver and state dir per repeat; time of the NodePublishVolume RPC)",
        "",
        "CPU: user + system seconds of `serve` and, in fuse mode, the FUSE view during the RPC (the registry not).",
        "",
        f"| mode | median ms | all ms | ÷ floor (target ≤ {bench.TARGET_COLD_VS_FLOOR}) | ÷ curl\\|tar x | CPU s (median) |",
        "| --- | ---: | --- | --- | --- | ---: |",
    ]
    for mode, values in cold.items():
        median = statistics.median(values)
        ratio = median / floor
        lines.append(
            f"| {mode} | {bench.ms(median)} | {', '.join(bench.ms(v) for v in values)} | "
            f"{ratio:.2f}× {bench.verdict(ratio <= bench.TARGET_COLD_VS_FLOOR)} | {median / statistics.median(tar):.2f}× | "
            f"{statistics.median(cold_cpu[mode]):.2f} |"
        )
    lines += ["", end]
    return "\n".join(lines) + "\n"


def rss_report(results: list[RssResult], command: str, about: list[str]) -> str:
    begin, end = MARKERS["rss"]
    lines = [
        begin,
        "## Latest run: driver memory while publishing a 1 GiB layer (generated by `bench/bench_image.py --part rss`)",
        "",
        "```",
        command,
        "```",
        "",
        *about,
        "- one untitled `tar+gzip` layer (gzip -6) per shape: " + "; ".join(
            f"`{shape}`: {r.files} files, {mib(r.tar_bytes)} tar, {mib(r.blob_bytes)} gzip"
            for shape, r in {r.shape: r for r in results}.items()
        ),
        "- growth = peak RSS during the step (`VmHWM` after `clear_refs` 5) − `VmRSS` before the publish; MB = 10⁶ bytes",
        "",
        (
            f"| shape | mode | publish s | serve RSS before | serve peak | **serve growth** (target < "
            f"{TARGET_RSS_GROWTH_MB:g}) | serve RSS after | FUSE RSS before | FUSE growth, publish | "
            "FUSE growth, + reading every file |"
        ),
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        growth = r.serve_growth()
        lines.append(
            f"| {r.shape} | {r.mode} | {r.publish_s:.2f} | {mb(r.serve_before['VmRSS'])} | {mb(r.serve_after['VmHWM'])} | "
            f"{mb(growth)} {bench.verdict(growth < TARGET_RSS_GROWTH_MB * MB)} | {mb(r.serve_after['VmRSS'])} | "
            f"{mb(r.fuse_before['VmRSS'] if r.fuse_before else None)} | {mb(r.fuse_growth(r.fuse_after_publish))} | "
            f"{mb(r.fuse_growth(r.fuse_after_read))} |"
        )
    lines += ["", end]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------

def run_layers(args: argparse.Namespace, modes: list[str], base: Path, about: list[str], command: str) -> str:
    print(f"generating a 3-layer {args.size_mib} MiB image ...", flush=True)
    blobs = make_image(args.size_mib)
    for blob in blobs:
        print(f"  {blob.kind}: {blob.files} files, tar {mib(blob.tar_bytes)}, blob {mib(len(blob.data))}", flush=True)
    with run_registry(base / "registry") as registry:
        pushed = push_image(registry, "bench/layers:v1", [(b.data, b.media_type) for b in blobs], base / "push")
        shutil.rmtree(base / "push")
        urls = [f"http://{registry}/v2/bench/layers/blobs/sha256:{b.hex}" for b in blobs]
        expect = tuple(b.hex for b in blobs)
        variants = floor_variants(urls, blobs, base)
        for script in variants.values():  # warm the registry's page cache and the tools
            bench._timed_shell(script, expect)
        floors: dict[str, list[float]] = {name: [] for name in variants}
        floor_cpu: dict[str, list[float]] = {name: [] for name in variants}
        tar: list[float] = []
        cold: dict[str, list[float]] = {mode: [] for mode in modes}
        cold_cpu: dict[str, list[float]] = {mode: [] for mode in modes}
        files = sum(b.files for b in blobs)
        for r in range(args.repeats):
            for name, script in variants.items():
                floors[name].append(timed_shell_cpu(script, expect, floor_cpu[name]))
            tar.append(measure_tar(urls, blobs, base))
            for mode in modes:
                cold[mode].append(bench.cold_publish(registry, pushed.reference, mode, base, files, cold_cpu[mode]))
            print(
                f"  repeat {r + 1}: floor {' / '.join(bench.ms(v[-1]) for v in floors.values())} ms, "
                f"tar {bench.ms(tar[-1])} ms, " + ", ".join(f"cold {m} {bench.ms(cold[m][-1])} ms" for m in modes),
                flush=True,
            )
    return layers_report(args, blobs, floors, floor_cpu, tar, cold, cold_cpu, command, about)


def run_rss(args: argparse.Namespace, modes: list[str], base: Path, about: list[str], command: str) -> str:
    results = []
    with run_registry(base / "registry") as registry:
        for shape in args.shapes:
            print(f"generating the 1 GiB layer `{shape}` ...", flush=True)
            blob, tar_bytes, files = make_rss_layer(shape)
            pushed = push_image(registry, f"bench/rss-{shape}:v1", [(blob, bench.OCI_TAR_GZIP)], base / "push")
            shutil.rmtree(base / "push")
            print(f"  {files} files, tar {mib(tar_bytes)}, gzip {mib(len(blob))}", flush=True)
            for mode in modes:
                result = RssResult(shape, mode, len(blob), tar_bytes, files, 0.0, {}, {})
                rss_publish(registry, pushed.reference, mode, base, result)
                print(
                    f"  {mode}: publish {result.publish_s:.2f} s, serve growth {mb(result.serve_growth())} MB, "
                    f"FUSE growth {mb(result.fuse_growth(result.fuse_after_publish))} / "
                    f"{mb(result.fuse_growth(result.fuse_after_read))} MB",
                    flush=True,
                )
                results.append(result)
            del blob
    return rss_report(results, command, about)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("layers", "rss", "both"), default="both")
    parser.add_argument("--mode", choices=("fuse", "bind", "both"), default="both")
    parser.add_argument("--size-mib", type=int, default=256, help="files in the 3-layer image (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="cold runs of each kind (default 3)")
    parser.add_argument("--shapes", nargs="+", choices=("big", "many", "zeros"), default=["big", "many", "zeros"],
                        help="1 GiB layers for --part rss (default: all three)")  # fmt: skip
    parser.add_argument("--workdir", help="as for bench_publish.py (default: a fresh ext4 on a RAM-backed loop device)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args, command = bench.prepare(parser, ("curl", "tar", "gzip", "zstd", "sha256sum", "tee", "xargs"), "the driver makes real mounts")
    modes = ["fuse", "bind"] if args.mode == "both" else [args.mode]
    parts = ["layers", "rss"] if args.part == "both" else [args.part]
    sections = {}
    for part in parts:
        # A file system of its own per part, so that one part's files never slow the other's.
        with bench.work_filesystem(args.workdir) as (base, fs_note):
            load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
            about = [*bench.machine(fs_note), f"- load average (1, 5, 15 min) as the part started: {load}"]
            run = run_layers if part == "layers" else run_rss
            sections[part] = run(args, modes, base, about, command)
    for part, section in sections.items():
        bench.show_and_record(section, not args.no_write, *MARKERS[part])
    return 0


if __name__ == "__main__":
    sys.exit(main())

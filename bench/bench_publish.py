"""Publish latency, warm and cold, against the loopback registry (issue: bench/).

One run measures, for ``--mode erofs``, ``fuse`` or ``bind``, or ``all`` three (``both``: fuse and
bind), taking turns within each repeat:

* the physical floor for a cold pull: the layer blob fetched with ``curl`` and piped into
  processes that only inflate it and sha256 it (the work no verifying driver can skip), in
  three variants (``sha256sum`` and ``gzip -dc`` in parallel via a fifo; one Python process
  with zlib and hashlib in one thread; the same in two threads); each checks the digest it
  computes, and the fastest median is the floor;
* ``curl | tar xz -C dir``, what a shell script does;
* cold NodePublishVolume: a fresh driver with an empty state dir per repeat, time of the RPC
  (the volume is then walked to check that every file is there, untimed);
* warm NodePublishVolume: ``--volumes`` new volume ids/targets of one cached reference, each
  timed around the gRPC call from the client (``time.perf_counter``), while the mount table
  grows by one bind per volume; then NodeUnpublishVolume of each, timed too.

Everything lands on a fresh ext4 that the run formats and loop-mounts (see
``work_filesystem`` for why), unless ``--workdir`` names a directory.

Run as root, in a private mount namespace (the script also enters one itself):

    unshare -m --propagation private .venv/bin/python bench/bench_publish.py \\
        [--mode erofs|fuse|bind|both|all] [--volumes 200] [--size-mib 64] [--repeats 3]

It prints a table and refreshes the generated part of ``bench/RESULTS.md`` (between the
``bench_publish`` markers; hand-written notes outside them are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import hashlib
import io
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from artifacts import push_image  # noqa: E402
from csi_driver._pb import csi_pb2  # noqa: E402
from driver import run_driver  # noqa: E402
from kubelet import publish_request, target_for, unpublish_request  # noqa: E402
from namespace import enter_private_namespace  # noqa: E402
from registry_server import run_registry  # noqa: E402

OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- bench_publish:begin -->", "<!-- bench_publish:end -->"
SEED = 20240611

TARGET_WARM_P50_MS = 3.0
TARGET_WARM_P99_MS = 15.0
TARGET_COLD_VS_FLOOR = 1.2
TARGET_COLD_VS_TAR = 0.8


# -- the layer ---------------------------------------------------------------------------------

_KEYWORDS = ["def", "return", "if", "else", "for", "in", "while", "import", "from", "class", "with", "as",
             "try", "except", "raise", "None", "True", "False", "self", "and", "or", "not", "yield", "lambda"]


def _code_lines(rng: random.Random, count: int) -> list[str]:
    """A pool of source-code-like lines: identifiers, calls, literals, comments, indentation."""
    # Identifiers drawn Zipf-like from a small vocabulary, as in real code: a few names recur a lot.
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 14))) for _ in range(800)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    idents = rng.choices(vocabulary, weights=weights, k=20_000)
    words = idents + _KEYWORDS * 200

    def expr() -> str:
        kind = rng.random()
        if kind < 0.3:
            return f"{rng.choice(idents)}({', '.join(rng.choices(idents, k=rng.randint(0, 3)))})"
        if kind < 0.5:
            return str(rng.randint(0, 100000))
        if kind < 0.65:
            return repr(" ".join(rng.choices(words, k=rng.randint(1, 6))))
        return f"{rng.choice(idents)}.{rng.choice(idents)}"

    lines = []
    for _ in range(count):
        indent = "    " * rng.choice((0, 1, 1, 2, 2, 2, 3, 4))
        kind = rng.random()
        if kind < 0.1:
            line = f"# {' '.join(rng.choices(words, k=rng.randint(3, 12)))}"
        elif kind < 0.2:
            line = f"def {rng.choice(idents)}({', '.join(rng.choices(idents, k=rng.randint(0, 4)))}):"
        elif kind < 0.3:
            line = f"if {expr()} {rng.choice(('==', '!=', '<', 'is', 'in'))} {expr()}:"
        elif kind < 0.4:
            line = f"return {expr()}"
        elif kind < 0.45:
            line = ""
        else:
            line = f"{rng.choice(idents)} = {expr()}"
        lines.append(indent + line if line else "")
    return lines


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(low * (high / low) ** rng.random()))


@dataclass
class Layer:
    gz: bytes
    tar_bytes: int
    files: int
    text_bytes: int
    random_bytes: int


def make_layer(size_mib: int, seed: int = SEED) -> Layer:
    """A deterministic image layer: a tar of many files, half code-like text, half incompressible.

    Text files are 200 B to 64 KiB, binary files 4 KiB to 4 MiB (log-uniform), spread over a
    directory tree like an image's ``usr/`` (about a dozen files per directory); a few symlinks;
    gzip level 6, mtime 0.
    """
    raw, files = make_tar(size_mib << 20, seed)
    half = size_mib << 19
    return Layer(
        gz=gzip.compress(raw, compresslevel=6, mtime=0),
        tar_bytes=len(raw),
        files=files,
        text_bytes=half,
        random_bytes=half,
    )


def make_tar(content_bytes: int, seed: int = SEED, tag: str = "") -> tuple[bytes, int]:
    """The uncompressed tar of ``make_layer``, ``content_bytes`` of file data; (tar, regular files).

    ``tag`` goes into every file name, so that layers made with different tags add files to
    the same directories instead of replacing each other's (the symlinks are the same in all).
    """
    rng = random.Random(seed)
    pool = _code_lines(rng, 40_000)
    half = content_bytes >> 1
    files: list[tuple[str, bytes, int]] = []
    budget = half
    n = 0
    while budget > 0:
        size = min(budget, _log_uniform(rng, 200, 64 << 10))
        text = "\n".join(rng.choices(pool, k=size // 30 + 2)).encode()[:size]
        text += b"\n" * (size - len(text))
        files.append((f"usr/lib/python3/dist-packages/pkg{n % 60}/sub{n // 60 % 4}/mod_{n}{tag}.py", text, 0o644))
        budget -= size
        n += 1
    budget = half
    m = 0
    while budget > 0:
        size = min(budget, _log_uniform(rng, 4 << 10, 4 << 20))
        ext = ".so" if m % 3 else ".bin"
        mode = 0o755 if m % 5 == 0 else 0o644
        files.append((f"usr/lib/x86_64-linux-gnu/lib{m % 11}/obj_{m}{tag}{ext}", rng.randbytes(size), mode))
        budget -= size
        m += 1
    rng.shuffle(files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()

        def add_dir(path: str) -> None:
            if not path or path in dirs:
                return
            add_dir(path.rpartition("/")[0])
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
            dirs.add(path)

        for path, data, mode in files:
            add_dir(path.rpartition("/")[0])
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        for k in range(20):
            info = tarfile.TarInfo(f"usr/bin/tool{k}")
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, f"../lib/x86_64-linux-gnu/lib{k % 11}", 0o777, 1_700_000_000
            tar.addfile(info)
    return buf.getvalue(), len(files)


# -- measurements ------------------------------------------------------------------------------

def _timed_shell(script: str, expect: str | tuple[str, ...] | None = None) -> float:
    """Seconds ``script`` takes; it must succeed and print ``expect`` (each of them, for a tuple)."""
    os.sync()  # every cold measurement starts with no dirty pages waiting (see work_filesystem)
    start = time.perf_counter()
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{script!r} failed ({result.returncode}): {result.stderr}")
    for digest in (expect,) if isinstance(expect, str) else expect or ():
        if digest not in result.stdout:
            raise RuntimeError(f"{script!r} printed {result.stdout!r}, not the digest {digest}")
    return elapsed


FLOOR_PYTHON = (
    "import hashlib, sys, zlib\n"
    "h = hashlib.sha256(); d = zlib.decompressobj(wbits=31); n = 0\n"
    "read = sys.stdin.buffer.read\n"
    "while chunk := read(1 << 20):\n"
    "    h.update(chunk); n += len(d.decompress(chunk))\n"
    "assert d.eof\n"
    "print(h.hexdigest(), n)\n"
)


FLOOR_PYTHON_THREADS = (
    "import hashlib, importlib, queue, sys, threading\n"
    "gz = importlib.import_module(sys.argv[1])  # zlib, or isal.isal_zlib as the driver uses\n"
    "q = queue.Queue(16); h = hashlib.sha256(); out = []\n"
    "def inflate():\n"
    "    d = gz.decompressobj(wbits=31); n = 0\n"
    "    while (chunk := q.get()) is not None:\n"
    "        n += len(d.decompress(chunk))\n"
    "    out.append((n, d.eof))\n"
    "t = threading.Thread(target=inflate); t.start()\n"
    "read = sys.stdin.buffer.read\n"
    "while chunk := read(1 << 20):\n"
    "    h.update(chunk); q.put(chunk)\n"
    "q.put(None); t.join()\n"
    "assert out and out[0][1]\n"
    "print(h.hexdigest(), out[0][0])\n"
)


def floor_variants(url: str, work: Path) -> dict[str, str]:
    """Commands that only fetch, inflate and hash; each checks the digest it computes."""
    fifo = work / "floor.fifo"
    return {
        "curl | tee fifo | sha256sum, gzip -dc < fifo (C tools, parallel)": (
            f"rm -f {fifo}; mkfifo {fifo}; gzip -dc < {fifo} > /dev/null & "
            f"curl -sf {url} | tee {fifo} | sha256sum; wait $!"
        ),
        "curl | python3 (zlib inflate + hashlib sha256, one thread)": (
            f"curl -sf {url} | python3 -c {shlex.quote(FLOOR_PYTHON)}"
        ),
        "curl | python3 (sha256 in one thread, zlib inflate in another)": (
            f"curl -sf {url} | python3 -c {shlex.quote(FLOOR_PYTHON_THREADS)} zlib"
        ),
        "curl | python3 (sha256 in one thread, ISA-L inflate in another, as the driver)": (
            f"curl -sf {url} | {shlex.quote(sys.executable)} -c {shlex.quote(FLOOR_PYTHON_THREADS)} isal.isal_zlib"
        ),
    }


def measure_tar(url: str, work: Path) -> float:
    dest = Path(tempfile.mkdtemp(prefix="tar-xz-", dir=work))
    try:
        return _timed_shell(f"curl -sf {url} | tar xz -C {dest}")
    finally:
        shutil.rmtree(dest)


@dataclass
class ModeResult:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    unpublish: list[float] = field(default_factory=list)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/PID/stat``, clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fuse_pid(state: Path) -> int:
    """The FUSE view process that ``serve`` started for ``state``."""
    out = subprocess.run(["pgrep", "-f", f"csi_driver fuse --state-dir {state}"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def fastest_floor(floors: dict[str, list[float]]) -> tuple[dict[str, float], str]:
    """Each floor variant's median, and the name of the fastest: the floor."""
    medians = {name: statistics.median(values) for name, values in floors.items()}
    return medians, min(medians, key=medians.__getitem__)


def floor_rows(floors: dict[str, list[float]], cpu: dict[str, list[float]] | None = None) -> list[str]:
    """A table row per floor variant (command, median, all runs; CPU seconds when ``cpu`` is
    given), the floor marked."""
    medians, floor_name = fastest_floor(floors)
    rows = []
    for name, values in floors.items():
        mark = " (**floor**)" if name == floor_name else ""
        row = f"| `{name.replace('|', chr(92) + '|')}`{mark} | {ms(medians[name])} | {', '.join(ms(v) for v in values)} |"
        rows.append(row + (f" {statistics.median(cpu[name]):.2f} |" if cpu is not None else ""))
    return rows


def cold_publish(registry: str, reference: str, mode: str, base: Path, expect_files: int,
                 cpu: list[float] | None = None, after: str | None = None, source: Path | None = None) -> float:  # fmt: skip
    """One cold publish on a fresh driver and state dir; everything it wrote is deleted after.

    The driver is first registered, untimed, as on a node before any pod can reach it:
    node-driver-registrar asks GetPluginInfo, the kubelet NodeGetInfo, the liveness probe Probe.
    ``cpu`` gets the CPU seconds that ``serve`` (and the FUSE view) spent during the RPC.
    ``after``: another reference the driver publishes and unpublishes first, untimed, so that the
    timed publish meets a driver that has served before (gRPC threads, the registry connection,
    first-run code paths), as a driver running on a node for a while does.
    ``source``: run another version of the driver (``run_driver``).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"cold-{mode}-", dir=base))
    with run_driver(tmp, registry, mode, source=source) as driver:
        driver.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
        driver.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        driver.identity.Probe(csi_pb2.ProbeRequest())
        if after is not None:
            first = publish_request(target_for(tmp / "kubelet", "pod-before", "image"), {"reference": after})
            driver.publish(first)
            driver.unpublish(unpublish_request(first))
        target = target_for(tmp / "kubelet", "pod-cold", "image")
        request = publish_request(target, {"reference": reference})
        pids = [driver.process.pid] + ([fuse_pid(driver.state_dir)] if mode == "fuse" else [])
        os.sync()
        used = sum(map(process_cpu, pids))
        start = time.perf_counter()
        driver.publish(request)
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu.append(sum(map(process_cpu, pids)) - used)
        found = sum(len(files) for _, _, files in os.walk(target))
        if found < expect_files:
            raise RuntimeError(f"{mode}: the volume shows {found} files, expected at least {expect_files}")
        driver.unpublish(unpublish_request(request))
    shutil.rmtree(tmp)
    return elapsed


def warm_publishes(registry: str, reference: str, mode: str, base: Path, volumes: int, result: ModeResult) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"warm-{mode}-", dir=base))
    with run_driver(tmp, registry, mode) as driver:
        kubelet = tmp / "kubelet"
        first = publish_request(target_for(kubelet, "pod-first", "image"), {"reference": reference})
        driver.publish(first)
        requests = [
            publish_request(target_for(kubelet, f"pod-{i:05d}", "image"), {"reference": reference}, pod_name=f"agent-{i}")
            for i in range(volumes)
        ]
        # One untimed publish+unpublish so the measured calls do not pay for first-use setup.
        driver.publish(requests[0])
        driver.unpublish(unpublish_request(requests[0]))
        for request in requests:
            start = time.perf_counter()
            driver.publish(request)
            result.warm.append(time.perf_counter() - start)
        for request in requests:
            start = time.perf_counter()
            driver.unpublish(unpublish_request(request))
            result.unpublish.append(time.perf_counter() - start)
        driver.unpublish(unpublish_request(first))


# -- reporting ---------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def machine(fs_note: str) -> list[str]:
    mem = next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: `nproc` {os.cpu_count()} ({cpu}), memory {int(mem) / (1 << 20):.1f} GiB, kernel {platform.release()}",
        f"- Python {platform.python_version()}, grpcio {_version('grpcio')}; "
        f"{_tool_version(['curl', '--version'])}, {_tool_version(['tar', '--version'])}, "
        f"{_tool_version(['gzip', '--version'])}",
        f"- file system for the registry, the state dirs and `tar`'s output: {fs_note}",
    ]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _tool_version(cmd: list[str]) -> str:
    """The first line of ``--version``, without curl's long build description."""
    out = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
    if not out:
        return "?"
    return " ".join(out[0].split()[:2]) if cmd[0] == "curl" else out[0]


def report(args: argparse.Namespace, layer: Layer, floors: dict[str, list[float]], tar: list[float],
           modes: dict[str, ModeResult], command: str, fs_note: str) -> str:
    floor_medians, floor_name = fastest_floor(floors)
    floor = floor_medians[floor_name]
    tar_median = statistics.median(tar)
    lines = [
        BEGIN,
        "## Latest run (generated by `bench/bench_publish.py`)",
        "",
        "```",
        command,
        "```",
        "",
        *machine(fs_note),
        f"- layer: {layer.files} files, {layer.tar_bytes / (1 << 20):.1f} MiB tar "
        f"(half code-like text, half `random.Random({SEED}).randbytes`), "
        f"{len(layer.gz) / (1 << 20):.1f} MiB gzip -6, one untitled `{OCI_TAR_GZIP}` layer; "
        f"{args.repeats} repeats (medians), {args.volumes} warm volumes per mode",
        "",
        "### Cold: reference points (medians of each repeat)",
        "",
        "| command | median ms | all ms |",
        "| --- | ---: | --- |",
    ]
    lines += floor_rows(floors)
    lines.append(f"| `curl \\| tar xz -C dir` | {ms(tar_median)} | {', '.join(ms(v) for v in tar)} |")
    lines += [
        "",
        "### Cold publish (fresh driver and state dir per repeat; time of the NodePublishVolume RPC)",
        "",
        f"| mode | median ms | all ms | ÷ floor (target ≤ {TARGET_COLD_VS_FLOOR}) | ÷ curl\\|tar xz (target ≤ {TARGET_COLD_VS_TAR}) |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for mode, res in modes.items():
        cold = statistics.median(res.cold)
        r_floor, r_tar = cold / floor, cold / tar_median
        lines.append(
            f"| {mode} | {ms(cold)} | {', '.join(ms(v) for v in res.cold)} | "
            f"{r_floor:.2f}× {verdict(r_floor <= TARGET_COLD_VS_FLOOR)} | {r_tar:.2f}× {verdict(r_tar <= TARGET_COLD_VS_TAR)} |"
        )
    lines += [
        "",
        f"### Warm publish ({args.volumes} new volumes of one cached reference; client-side time of each RPC, ms)",
        "",
        f"| mode | publish p50 (≤ {TARGET_WARM_P50_MS:g}) | publish p99 (≤ {TARGET_WARM_P99_MS:g}) | publish max | "
        "unpublish p50 | unpublish p99 | unpublish max |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, res in modes.items():
        p50, p99 = pct(res.warm, 50), pct(res.warm, 99)
        lines.append(
            f"| {mode} | {p50 * 1000:.2f} {verdict(p50 * 1000 <= TARGET_WARM_P50_MS)} | "
            f"{p99 * 1000:.2f} {verdict(p99 * 1000 <= TARGET_WARM_P99_MS)} | {max(res.warm) * 1000:.2f} | "
            f"{pct(res.unpublish, 50) * 1000:.2f} | {pct(res.unpublish, 99) * 1000:.2f} | {max(res.unpublish) * 1000:.2f} |"
        )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_results(section: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the old one."""
    header = (
        "# Benchmark results\n\n"
        "Numbers from `bench/bench_publish.py`; the section between the markers is rewritten by each run,\n"
        "the notes below it are written by hand.\n\n"
    )
    old = RESULTS.read_text() if RESULTS.exists() else header
    if begin in old and end in old:
        before, rest = old.split(begin, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = old.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def show_and_record(section: str, write: bool, begin: str = BEGIN, end: str = END) -> None:
    """Print a generated section and, unless ``--no-write``, put it in RESULTS.md."""
    print()
    print(section.replace(begin + "\n", "").replace(end + "\n", ""))
    if write:
        write_results(section, begin, end)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


# -- where the bytes land -----------------------------------------------------------------------

@contextlib.contextmanager
def work_filesystem(workdir: str | None) -> Iterator[tuple[Path, str]]:
    """A directory for everything the run writes; by default on a fresh journaled ext4.

    The default is an 8 GiB sparse image in /dev/shm, formatted with ``mkfs.ext4`` defaults
    and loop-mounted inside this run's private mount namespace: the ext4 code a node runs,
    with no history, and no disk latency (64 MiB stays far below the dirty-page limits, so a
    node's disk would not be waited on either). Two traps of the VM these numbers were first
    taken on, which this avoids (bench/RESULTS.md has the evidence):

    * its root file system is ext4 *without* a journal, where inode allocation scans recently
      deleted inodes (``recently_deleted``) for minutes after a large delete: ``tar xz`` of
      the same layer took 0.3 s to 4 s of system time depending on what was deleted before;
    * its balloon device reports free pages to the host, so memory the guest has not touched
      lately faults in again at ~9x the cost: writing 100 MiB took 29 ms or 260 ms. Each
      measurement therefore deletes what it wrote before the next one starts, so the run's
      footprint stays small and every measurement meets the same, recently used memory.
    """
    if workdir is not None:
        base = Path(tempfile.mkdtemp(prefix="oci-volume-bench-", dir=workdir))
        fstype = subprocess.run(["df", "--output=fstype", str(base)], capture_output=True, text=True).stdout.split()
        try:
            yield base, f"`{workdir}` ({fstype[-1] if fstype else '?'}), as given by --workdir"
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    fd, name = tempfile.mkstemp(prefix="oci-volume-bench-", suffix=".ext4", dir="/dev/shm")
    os.close(fd)
    image = Path(name)
    mountpoint = Path(tempfile.mkdtemp(prefix="oci-volume-bench-"))
    try:
        subprocess.run(["truncate", "-s", "8G", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
        try:
            yield mountpoint, "a fresh ext4 (mkfs.ext4 defaults, journaled) on a loop device over a file in /dev/shm"
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False)
    finally:
        image.unlink(missing_ok=True)
        mountpoint.rmdir()


# -- main --------------------------------------------------------------------------------------

def prepare(parser: argparse.ArgumentParser, tools: Sequence[str], why_root: str) -> tuple[argparse.Namespace, str]:
    """What every bench script does first: parse its arguments, insist on root and the tools it
    runs, enter a private mount namespace (no mount outlives the run, even without ``unshare -m``),
    and return the command as run, for RESULTS.md."""
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error(f"run as root: {why_root}")
    for tool in tools:
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing")
    enter_private_namespace()
    script = f"bench/{Path(sys.argv[0]).name}"
    return args, " ".join(["unshare -m --propagation private .venv/bin/python", script, *map(shlex.quote, sys.argv[1:])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("erofs", "fuse", "bind", "both", "all"), default="all")
    parser.add_argument("--volumes", type=int, default=200, help="warm publishes per mode (default 200)")
    parser.add_argument("--size-mib", type=int, default=64, help="uncompressed layer content (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="cold runs of each kind (default 3)")
    parser.add_argument(
        "--workdir",
        help="run on this existing directory instead of a fresh journaled ext4 on a RAM-backed loop device",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args, command = prepare(parser, ("curl", "tar", "gzip", "sha256sum", "python3"), "the driver makes real mounts")
    modes = {"all": ["erofs", "fuse", "bind"], "both": ["fuse", "bind"]}.get(args.mode, [args.mode])

    print(f"generating a {args.size_mib} MiB layer ...", flush=True)
    layer = make_layer(args.size_mib)
    digest = "sha256:" + hashlib.sha256(layer.gz).hexdigest()
    print(f"  {layer.files} files, tar {layer.tar_bytes / (1 << 20):.1f} MiB, gzip {len(layer.gz) / (1 << 20):.1f} MiB, {digest}")

    with work_filesystem(args.workdir) as (base, fs_note):
        return run(args, layer, digest, base, fs_note, command, modes)


def run(args: argparse.Namespace, layer: Layer, digest: str, base: Path, fs_note: str, command: str,
        modes: list[str]) -> int:
    with run_registry(base / "registry") as registry:
        pushed = push_image(registry, "bench/image:v1", [(layer.gz, OCI_TAR_GZIP)], base / "push")
        url = f"http://{registry}/v2/bench/image/blobs/{digest}"
        hexdigest = digest.removeprefix("sha256:")
        variants = floor_variants(url, base)
        for script in variants.values():  # warm the registry's page cache and the tools
            _timed_shell(script, hexdigest)
        floors: dict[str, list[float]] = {name: [] for name in variants}
        tar: list[float] = []
        results = {mode: ModeResult() for mode in modes}
        for r in range(args.repeats):
            for name, script in variants.items():
                floors[name].append(_timed_shell(script, hexdigest))
            tar.append(measure_tar(url, base))
            for mode in modes:
                results[mode].cold.append(cold_publish(registry, pushed.reference, mode, base, layer.files))
            print(
                f"  repeat {r + 1}: floor {' / '.join(ms(v[-1]) for v in floors.values())} ms, "
                f"tar {ms(tar[-1])} ms, " + ", ".join(f"cold {m} {ms(results[m].cold[-1])} ms" for m in modes),
                flush=True,
            )
        for mode in modes:
            warm_publishes(registry, pushed.reference, mode, base, args.volumes, results[mode])
            print(f"  warm {mode}: p50 {pct(results[mode].warm, 50) * 1000:.2f} ms", flush=True)

    section = report(args, layer, floors, tar, results, command, fs_note)
    show_and_record(section, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cold (and warm) delivery of the same artifacts by every tool, side by side (issue 10).

One run, one loopback registry (Debian's ``docker-registry``), the same pushed artifacts:

* ``1``: a Klaus plugin, pushed as the Klaus tooling does (``tests/artifacts.push_klaus``: one
  titled ``klaus-plugin.content.v1.tar+gzip`` layer, a Klaus config): ``PLUGIN_TREE`` plus 1 MiB
  of ``bench_publish.make_tar`` files;
* ``64``, ``256``: ``bench_image.make_image`` (three untitled layers: tar+gzip, tar+zstd, tar);
* ``--no-zstd-sizes`` (default ``64``): the same with tar+gzip in place of tar+zstd, so that
  ``umoci`` 0.4, which reads no zstd, has an image it can unpack.

Each repeat delivers every artifact with every contender, each from an empty directory or
cache (the contenders take turns within a repeat, so drift hits them alike; medians are
reported):

1. the physical floor: fetch + inflate + sha256 of the blobs, nothing written
   (``bench_publish.floor_variants`` for one layer, ``bench_image.floor_variants`` for an
   image; the fastest median is the floor);
2. ``curl | tar x`` of each layer in order (``bench_image.measure_tar``);
3. the ``oras`` Python client, in this process as a program using the library would:
   ``OrasClient.pull`` (which only downloads, and checks no digest) then ``tarfile`` extraction
   of each layer in order (zstd through ``zstandard``);
4. ``skopeo copy docker://… oci:DIR:bench`` + ``umoci raw unpack``;
5. containerd 1.6 (Debian's): a daemon of this run's own (config, root, state, socket in the
   work dir; never the system one), fresh per repeat, started untimed; timed: ``ctr images pull
   --plain-http`` (fetch, then unpack into overlayfs snapshots) + ``ctr images mount`` (a
   read-only overlay view);
6. our driver: cold NodePublishVolume in erofs, fuse and bind mode (``bench_publish.cold_publish``), on
   a freshly started driver, and ("running") on one that has first published and unpublished
   another small plugin, untimed, as a driver that has run on a node for a while (its gRPC
   threads, registry connection and code paths warm; the artifact itself is as cold).

Every contender's result is then checked to hold the artifact's files (untimed, except for
``curl | tar``, which ``bench_image`` deletes at once). A tool that refuses an artifact is reported
as n/a with its own error message, not as a failure of the run.

``--baseline REV`` (repeatable) adds our driver as of git revision ``REV`` (its ``csi_driver``
exported with ``git archive`` into the work dir and run from there) as contenders of their own,
fresh and running, taking turns with the rest: a change measured side by side with the code
before it in one run. ``--ours-only`` leaves out the other tools (the floor stays).

Warm: ``--volumes`` publishes of an already-cached image in each mode
(``bench_publish.warm_publishes``), against ``ctr images mount`` of an already-pulled image into
new targets (and ``ctr images unmount --rm``), each timed from the client.

Run as root, in a private mount namespace (the script also enters one itself):

    unshare -m --propagation private .venv/bin/python bench/bench_compare.py \\
        [--sizes 1 64 256] [--no-zstd-sizes 64] [--repeats 3] [--volumes 50] [--no-write] \\
        [--baseline REV] [--ours-only]

It refreshes the ``bench_compare`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import itertools
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_image  # noqa: E402
import bench_publish as bench  # noqa: E402  (puts the repo and tests/ on sys.path)
from artifacts import (  # noqa: E402
    KLAUS_PLUGIN_CONTENT,
    PLUGIN_TREE,
    Tree,
    oras_client,
    push_image,
    push_klaus,
)
from processes import stop  # noqa: E402
from registry_server import run_registry  # noqa: E402

BEGIN, END = "<!-- bench_compare:begin -->", "<!-- bench_compare:end -->"
TARGET_VS_OTHERS = 0.8
TARGET_VS_CONTAINERD = 2.0
NAMESPACE = "bench"
FLOOR, OURS_EROFS, OURS_FUSE, OURS_BIND = "floor", "our driver, erofs", "our driver, fuse", "our driver, bind"
OURS_EROFS_RUNNING, OURS_FUSE_RUNNING, OURS_BIND_RUNNING = "our driver, erofs, running", "our driver, fuse, running", "our driver, bind, running"
OURS = {OURS_EROFS: "erofs", OURS_FUSE: "fuse", OURS_BIND: "bind",
        OURS_EROFS_RUNNING: "erofs, running", OURS_FUSE_RUNNING: "fuse, running", OURS_BIND_RUNNING: "bind, running"}  # fmt: skip
WARM_UP = "bench/warm-up:v1"
"""A small plugin a "running" driver publishes (and unpublishes) before the timed publish."""
Results = dict[str, list[float] | str]  # per contender: seconds per repeat, or why n/a


class NotApplicable(Exception):
    """The tool cannot deliver this artifact (the message says why, in the tool's words)."""


@dataclass
class Artifact:
    label: str
    reference: str
    blobs: list[bench_image.Blob]
    files: int  # regular files the delivered tree must show at least

    def urls(self, registry: str) -> list[str]:
        repository = self.reference.removeprefix(registry + "/").rsplit(":", 1)[0]
        return [f"http://{registry}/v2/{repository}/blobs/sha256:{blob.hex}" for blob in self.blobs]


# -- the artifacts -----------------------------------------------------------------------------

def plugin_tree(content_bytes: int) -> Tree:
    """``PLUGIN_TREE`` plus ``make_tar`` files: a plugin of realistic size and shape."""
    raw, _ = bench.make_tar(content_bytes, bench.SEED)
    tree: Tree = dict(PLUGIN_TREE)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            if member.isdir():
                tree[member.name] = (None, member.mode)
            elif member.issym():
                tree[member.name] = ("->" + member.linkname, 0o777)
            else:
                tree[member.name] = (tar.extractfile(member).read(), member.mode)  # type: ignore[union-attr]
    return tree


NO_ZSTD = (("gzip", bench.OCI_TAR_GZIP), ("gzip", bench.OCI_TAR_GZIP), ("tar", bench_image.OCI_TAR))
"""The layers of the images for tools that read no zstd (umoci 0.4): tar+gzip, tar+gzip, tar."""


def push_artifacts(registry: str, sizes: list[int], work: Path, no_zstd_sizes: list[int] = ()) -> list[Artifact]:
    """Generate and push each size: 1 = a Klaus plugin, anything else = a 3-layer image of that many
    MiB; then each of ``no_zstd_sizes`` as a 3-layer image without zstd."""
    artifacts = []
    for size, no_zstd in [(size, False) for size in sizes] + [(size, True) for size in no_zstd_sizes]:
        print(f"generating and pushing the {size} MiB artifact{' (no zstd)' if no_zstd else ''} ...", flush=True)
        push_dir = work / f"push-{size}{'-no-zstd' if no_zstd else ''}"
        if size == 1:
            tree = plugin_tree(1 << 20)
            pushed = push_klaus(registry, "bench/plugin:v1", tree, push_dir)
            data = (push_dir / "plugin.tar.gz").read_bytes()
            files = sum(isinstance(content, bytes) for content, _ in tree.values())
            blobs = [bench_image.Blob("gzip", KLAUS_PLUGIN_CONTENT, data, len(gzip.decompress(data)), files)]
            label = f"Klaus plugin: {files} files, one titled `{KLAUS_PLUGIN_CONTENT}` layer, Klaus config"
        elif no_zstd:
            blobs = bench_image.make_image(size, NO_ZSTD)
            pushed = push_image(registry, f"bench/image{size}-no-zstd:v1", [(b.data, b.media_type) for b in blobs], push_dir)
            files = sum(b.files for b in blobs)
            label = f"{size} MiB image, no zstd: {files} files, three untitled layers (tar+gzip, tar+gzip, tar)"
        else:
            blobs = bench_image.make_image(size)
            pushed = push_image(registry, f"bench/image{size}:v1", [(b.data, b.media_type) for b in blobs], push_dir)
            files = sum(b.files for b in blobs)
            label = f"{size} MiB image: {files} files, three untitled layers (tar+gzip, tar+zstd, tar)"
        shutil.rmtree(push_dir)
        label += (f", {bench_image.mib(sum(b.tar_bytes for b in blobs))} of tar, "
                  f"{bench_image.mib(sum(len(b.data) for b in blobs))} of blobs")  # fmt: skip
        artifacts.append(Artifact(label, pushed.reference, blobs, files))
    return artifacts


# -- the contenders ----------------------------------------------------------------------------

def count_files(root: Path) -> int:
    return sum(len(files) - sum((Path(d) / f).is_symlink() for f in files) for d, _, files in os.walk(root))


def check_files(tool: str, root: Path, artifact: Artifact) -> None:
    """A delivery that leaves files out is no delivery: fail the run rather than report its time."""
    found = count_files(root)
    if found < artifact.files:
        raise RuntimeError(f"{tool}: {root} shows {found} files, expected at least {artifact.files}")


def tool_error(error: RuntimeError) -> NotApplicable:
    """The tool's own last words (``_timed_shell`` puts its stderr in the message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return NotApplicable((lines[-1] if lines else str(error)).removeprefix("⨯ "))  # umoci's error mark


def floor_scripts(artifact: Artifact, registry: str, work: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """The floor variants that fit the artifact, and the digests each must print."""
    urls = artifact.urls(registry)
    expect = tuple(blob.hex for blob in artifact.blobs)
    if len(artifact.blobs) == 1 and artifact.blobs[0].kind == "gzip":
        return bench.floor_variants(urls[0], work), expect
    return bench_image.floor_variants(urls, artifact.blobs, work), expect


def measure_oras(artifact: Artifact, registry: str, work: Path) -> float:
    """oras-py as a program would use it: ``pull``, then extract what it left packed, layer by layer.

    ``pull`` extracts an OCI ``tar+gzip`` layer itself (its "directory" media type; through a
    temp file) and only downloads any other layer, under its title or digest; those are
    extracted here in order (zstd through ``zstandard``) and deleted. oras-py checks no digest.
    In this process, so that no interpreter start-up or import is counted against oras.
    """
    rootfs = Path(tempfile.mkdtemp(prefix="oras-", dir=work))
    try:
        os.sync()
        start = time.perf_counter()
        paths = oras_client(registry).pull(target=artifact.reference, outdir=str(rootfs))
        for path, blob in zip(paths, artifact.blobs, strict=True):
            if not os.path.exists(path):
                continue  # oras extracted it
            with open(path, "rb") as raw:
                stream = zstandard.ZstdDecompressor().stream_reader(raw) if blob.kind == "zstd" else raw
                with tarfile.open(fileobj=stream, mode="r|gz" if blob.kind == "gzip" else "r|") as tar:
                    tar.extractall(rootfs, filter="tar")
            os.unlink(path)
        elapsed = time.perf_counter() - start
        check_files("oras", rootfs, artifact)
        return elapsed
    finally:
        shutil.rmtree(rootfs)


def measure_skopeo(unpack: bool) -> Callable[[Artifact, str, Path], float]:
    """``skopeo copy`` into an OCI layout, then (``unpack``) ``umoci raw unpack`` of it (as root: owners kept).

    Without ``unpack`` it is a reference only, no delivery: the copy alone, a lower bound for
    skopeo + umoci that stays measurable where umoci refuses a layer type.
    """

    def measure(artifact: Artifact, registry: str, work: Path) -> float:
        out = Path(tempfile.mkdtemp(prefix="skopeo-", dir=work))
        layout, rootfs = out / "layout", out / "rootfs"
        script = f"skopeo --insecure-policy copy -q --src-tls-verify=false docker://{artifact.reference} oci:{layout}:bench"
        try:
            try:
                elapsed = bench._timed_shell(script + (f" && umoci raw unpack --image {layout}:bench {rootfs}" if unpack else ""))
            except RuntimeError as error:
                raise tool_error(error) from None
            if unpack:
                check_files("skopeo + umoci", rootfs, artifact)
            return elapsed
        finally:
            shutil.rmtree(out)

    return measure


CONTAINERD_CONFIG = """version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
"""


@dataclass
class Containerd:
    """A containerd daemon of this run; ``ctr`` commands talk to its socket and namespace only."""

    dir: Path

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "-a", str(self.dir / "containerd.sock"), "-n", NAMESPACE, *args]

    def shell(self, *args: str) -> str:
        return shlex.join(self.ctr(*args))


@contextlib.contextmanager
def run_containerd(work: Path) -> Iterator[Containerd]:
    """Start containerd with its own config, root, state and socket under ``work``; stop it after.

    It runs in this run's private mount namespace, so the overlay mounts of its unpacks and of
    ``ctr images mount`` never reach the host; its directory is deleted after.
    """
    directory = Path(tempfile.mkdtemp(prefix="ctrd-", dir=work))  # short: the socket path must fit 108 bytes
    (directory / "config.toml").write_text(CONTAINERD_CONFIG.format(dir=directory))
    daemon = Containerd(directory)
    with open(directory / "containerd.log", "wb") as log:
        process = subprocess.Popen(["containerd", "--config", str(directory / "config.toml")],
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(daemon.ctr("version"), check=False, capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{(directory / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield daemon
    finally:
        stop(process, timeout=15)
        subprocess.run(["umount", "-R", str(directory)], check=False, capture_output=True)  # anything left by a failure
        shutil.rmtree(directory, ignore_errors=True)


def measure_containerd(artifact: Artifact, registry: str, work: Path) -> float:
    """Cold: a fresh daemon (untimed), then ``ctr images pull`` + ``ctr images mount`` (timed)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        raise NotApplicable("containerd is not installed (apt-get install containerd)")
    with run_containerd(work) as daemon:
        target = daemon.dir / "mnt"
        target.mkdir()
        try:
            elapsed = bench._timed_shell(
                f"{daemon.shell('images', 'pull', '--plain-http', artifact.reference)} > /dev/null && "
                f"{daemon.shell('images', 'mount', artifact.reference, str(target))} > /dev/null"
            )
        except RuntimeError as error:
            raise tool_error(error) from None
        try:
            check_files("containerd", target, artifact)
        finally:
            subprocess.run(daemon.ctr("images", "unmount", "--rm", str(target)), check=True, capture_output=True)
        return elapsed


def measure_ours(mode: str, running: bool = False, source: Path | None = None) -> Callable[[Artifact, str, Path], float]:
    def measure(artifact: Artifact, registry: str, work: Path) -> float:
        after = f"{registry}/{WARM_UP}" if running else None
        return bench.cold_publish(registry, artifact.reference, mode, work, artifact.files, after=after, source=source)

    return measure


def measure_curl_tar(artifact: Artifact, registry: str, work: Path) -> float:
    return bench_image.measure_tar(artifact.urls(registry), artifact.blobs, work)


SKOPEO_ALONE = "`skopeo copy` alone, no unpack (reference, not a delivery)"
CONTAINERD = "containerd: `ctr images pull` + `ctr images mount`"
CONTENDERS: dict[str, Callable[[Artifact, str, Path], float]] = {
    "`curl | tar x`, each layer in order": measure_curl_tar,
    "oras-py `pull` + `tarfile` extract": measure_oras,
    "`skopeo copy` + `umoci raw unpack`": measure_skopeo(unpack=True),
    SKOPEO_ALONE: measure_skopeo(unpack=False),
    CONTAINERD: measure_containerd,
    OURS_EROFS: measure_ours("erofs"),
    OURS_FUSE: measure_ours("fuse"),
    OURS_BIND: measure_ours("bind"),
    OURS_EROFS_RUNNING: measure_ours("erofs", running=True),
    OURS_FUSE_RUNNING: measure_ours("fuse", running=True),
    OURS_BIND_RUNNING: measure_ours("bind", running=True),
}


Contenders = dict[str, Callable[[Artifact, str, Path], float]]


def export_revision(revision: str, work: Path) -> Path:
    """A directory holding the driver's code as of git ``revision`` (``run_driver``'s ``source``)."""
    out = work / f"baseline-{revision}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(bench.ROOT), "archive", revision, "csi_driver"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "x", "-C", str(out)], input=archive, check=True)
    return out


def contenders(args: argparse.Namespace, work: Path) -> tuple[Contenders, dict[str, str]]:
    """The contenders of this run, and which of them are our driver (name → its mode, as labelled)."""
    chosen = {n: m for n, m in CONTENDERS.items() if n in OURS or not args.ours_only}
    ours = dict(OURS)
    for revision in args.baseline:
        source = export_revision(revision, work)
        for mode, running in itertools.product(("erofs", "fuse", "bind"), (False, True)):
            label = f"{mode}{', running' if running else ''} @{revision}"
            chosen[f"our driver, {label}"] = measure_ours(mode, running, source)
            ours[f"our driver, {label}"] = label
    return chosen, ours


def measure_all(artifact: Artifact, registry: str, work: Path, results: Results, floors: dict[str, list[float]],
                chosen: Contenders) -> None:  # fmt: skip
    """One repeat of every contender on ``artifact``; a tool found n/a once is not asked again."""
    scripts, expect = floor_scripts(artifact, registry, work)
    for name, script in scripts.items():
        floors.setdefault(name, []).append(bench._timed_shell(script, expect))
    for name, measure in chosen.items():
        previous = results.setdefault(name, [])
        if isinstance(previous, str):
            continue
        try:
            previous.append(measure(artifact, registry, work))
        except NotApplicable as reason:
            results[name] = str(reason)
            print(f"    {name}: n/a ({reason})", flush=True)


# -- warm --------------------------------------------------------------------------------------

@dataclass
class Warm:
    publish: list[float]
    unpublish: list[float]


def warm_containerd(artifact: Artifact, work: Path, volumes: int) -> Warm | str:
    """``ctr images mount`` of a pulled image into ``volumes`` new targets, then unmount each."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        return "containerd is not installed"
    result = Warm([], [])
    with run_containerd(work) as daemon:
        pull = subprocess.run(daemon.ctr("images", "pull", "--plain-http", artifact.reference), check=False, capture_output=True, text=True)
        if pull.returncode != 0:
            return pull.stderr.strip().splitlines()[-1]
        targets = [daemon.dir / f"mnt-{i:04d}" for i in range(volumes + 1)]
        for target in targets:
            target.mkdir()
        for steps, times in ((("images", "mount", artifact.reference), result.publish),
                             (("images", "unmount", "--rm"), result.unpublish)):  # fmt: skip
            for i, target in enumerate(targets):
                command = daemon.ctr(*steps, str(target))
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                if i:  # the first of each is an untimed warm-up, as in warm_publishes
                    times.append(time.perf_counter() - start)
    return result


def warm_ours(artifact: Artifact, registry: str, work: Path, mode: str, volumes: int) -> Warm:
    result = bench.ModeResult()
    bench.warm_publishes(registry, artifact.reference, mode, work, volumes, result)
    return Warm(result.warm, result.unpublish)


# -- reporting ---------------------------------------------------------------------------------

def median(values: list[float] | str) -> float | None:
    return None if isinstance(values, str) else statistics.median(values)


def ratio(value: float | None, base: float | None) -> str:
    return "–" if value is None or base is None else f"{value / base:.2f}×"


def versions() -> str:
    ctr = subprocess.run(["containerd", "--version"], check=False, capture_output=True, text=True).stdout.split() if shutil.which("containerd") else []
    return (
        f"- tools: {bench._tool_version(['skopeo', '--version'])}, {bench._tool_version(['umoci', '--version'])}, "
        f"containerd {ctr[2] if len(ctr) > 2 else 'not installed'} (overlayfs snapshotter), "
        f"oras-py {bench._version('oras')}, zstandard {bench._version('zstandard')}"
    )


def artifact_table(artifact: Artifact, floors: dict[str, list[float]], results: Results) -> tuple[list[str], dict[str, float | None]]:
    """The rows of one artifact's table, and the medians they show (the floor's under ``FLOOR``)."""
    floor_medians, floor_name = bench.fastest_floor(floors)
    medians: dict[str, float | None] = {FLOOR: floor_medians[floor_name]}
    medians.update({name: median(values) for name, values in results.items()})
    fuse = medians[OURS_FUSE]
    lines = [
        f"### {artifact.label}",
        "",
        "| tool | median ms | all ms | ÷ floor | ÷ our fuse |",
        "| --- | ---: | --- | ---: | ---: |",
        (
            f"| floor: `{floor_name.replace('|', chr(92) + '|')}` | {bench.ms(medians[FLOOR])} | "
            f"{', '.join(bench.ms(v) for v in floors[floor_name])} | 1.00× | {ratio(medians[FLOOR], fuse)} |"
        ),
    ]
    for name, values in results.items():
        cell = name.replace("|", "\\|")
        if isinstance(values, str):
            lines.append(f"| {cell} | n/a | {values.replace('|', chr(92) + '|')} | – | – |")
            continue
        value = medians[name]
        lines.append(f"| {cell} | {bench.ms(value)} | {', '.join(bench.ms(v) for v in values)} | "
                     f"{ratio(value, medians[FLOOR])} | {ratio(value, fuse)} |")  # fmt: skip
    others = ", ".join(f"{bench.ms(v)}" for n, v in floor_medians.items() if n != floor_name)
    lines += ["", f"Other floor variants (median ms): {others}.", ""]
    return lines, medians


def targets_table(all_medians: dict[str, dict[str, float | None]], labels: dict[str, str]) -> list[str]:
    """A row per artifact and contender of ours (``labels``: name → its mode as shown)."""
    lines = [
        "### Targets (issue 10), cold",
        "",
        (
            f"| artifact | our mode | ÷ floor (≤ {bench.TARGET_COLD_VS_FLOOR}) | ÷ fastest other tool "
            f"(≤ {TARGET_VS_OTHERS}) | containerd ÷ ours (≥ {TARGET_VS_CONTAINERD:g}) |"
        ),
        "| --- | --- | --- | --- | --- |",
    ]
    for label, medians in all_medians.items():
        others = {n: v for n, v in medians.items() if n not in (FLOOR, SKOPEO_ALONE, *labels) and v is not None}
        fastest = min(others, key=others.__getitem__) if others else None
        for mode in labels:
            ours = medians[mode]
            if ours is None:
                continue
            vs_floor = ours / medians[FLOOR]  # type: ignore[operator]
            vs_other = "–"
            if fastest:
                name = fastest.split(":")[0].replace("|", "\\|")
                vs_other = f"{ours / others[fastest]:.2f}× ({name}) {bench.verdict(ours / others[fastest] <= TARGET_VS_OTHERS)}"
            ctrd = medians.get(CONTAINERD)
            vs_ctrd = f"{ctrd / ours:.2f}× {bench.verdict(ctrd / ours >= TARGET_VS_CONTAINERD)}" if ctrd else "n/a"
            lines.append(f"| {label.split(':')[0]} | {labels[mode]} | "
                         f"{vs_floor:.2f}× {bench.verdict(vs_floor <= bench.TARGET_COLD_VS_FLOOR)} | {vs_other} | {vs_ctrd} |")  # fmt: skip
    return lines + [""]


def warm_table(label: str, volumes: int, warm: dict[str, Warm | str]) -> list[str]:
    lines = [
        f"### Warm: {volumes} new volumes / mounts of the cached {label.split(':')[0]} (client-side time of each call, ms)",
        "",
        (
            f"| tool | mount p50 (≤ {bench.TARGET_WARM_P50_MS:g}) | mount p99 (≤ {bench.TARGET_WARM_P99_MS:g}) | "
            "mount max | unmount p50 | unmount p99 |"
        ),
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for name, res in warm.items():
        if isinstance(res, str):
            lines.append(f"| {name} | n/a: {res} | | | | |")
            continue
        p50, p99 = bench.pct(res.publish, 50) * 1000, bench.pct(res.publish, 99) * 1000
        mark = name.startswith("our")
        lines.append(
            f"| {name} | {p50:.2f}{' ' + bench.verdict(p50 <= bench.TARGET_WARM_P50_MS) if mark else ''} | "
            f"{p99:.2f}{' ' + bench.verdict(p99 <= bench.TARGET_WARM_P99_MS) if mark else ''} | "
            f"{max(res.publish) * 1000:.2f} | {bench.pct(res.unpublish, 50) * 1000:.2f} | {bench.pct(res.unpublish, 99) * 1000:.2f} |"
        )
    return lines + [""]


def report(args: argparse.Namespace, command: str, about: list[str], artifacts: list[Artifact],
           floors: dict[str, dict[str, list[float]]], results: dict[str, Results],
           warm_label: str, warm: dict[str, Warm | str], labels: dict[str, str]) -> str:  # fmt: skip
    lines = [
        BEGIN,
        "## Latest run: cold delivery side by side with the other tools (generated by `bench/bench_compare.py`)",
        "",
        "```",
        command,
        "```",
        "",
        *about,
        versions(),
        (
            f"- {args.repeats} repeats (medians); every contender starts from an empty directory or cache each "
            "repeat; the contenders take turns within a repeat; each is timed from its start to a complete, "
            "readable tree (ours: the NodePublishVolume RPC; containerd: a fresh daemon, started untimed, then "
            "pull + mount; oras-py: in this process, no start-up); every `ctr` call is a process start (~5 ms), "
            "as on a node without CRI"
        ),
        "",
    ]
    all_medians = {}
    for artifact in artifacts:
        rows, medians = artifact_table(artifact, floors[artifact.reference], results[artifact.reference])
        lines += rows
        all_medians[artifact.label] = medians
    lines += targets_table(all_medians, labels)
    if warm:
        lines += warm_table(warm_label, args.volumes, warm)
    lines.append(END)
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 256],
                        help="artifacts: 1 = a ~1 MiB Klaus plugin, N = an N MiB 3-layer image (default 1 64 256)")  # fmt: skip
    parser.add_argument("--no-zstd-sizes", type=int, nargs="*", default=[64],
                        help="N MiB 3-layer images without zstd (tar+gzip twice, tar), which umoci 0.4 "
                             "can unpack (default 64; none: --no-zstd-sizes)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="cold runs of each contender (default 3)")
    parser.add_argument("--volumes", type=int, default=50, help="warm mounts per tool (default 50; 0 skips warm)")
    parser.add_argument("--workdir", help="as for bench_publish.py (default: a fresh ext4 on a RAM-backed loop device)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--baseline", action="append", default=[], metavar="REV",
                        help="also run our driver as of this git revision, side by side (repeatable)")  # fmt: skip
    parser.add_argument("--ours-only", action="store_true", help="leave out the other tools (the floor stays)")
    args, command = bench.prepare(parser, ("curl", "tar", "gzip", "zstd", "sha256sum", "tee", "skopeo", "umoci"), "the driver, umoci and containerd make real mounts and owners")
    with bench.work_filesystem(args.workdir) as (base, fs_note):
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
        about = [*bench.machine(fs_note), f"- load average (1, 5, 15 min) as the run started: {load}"]
        section = run(args, base, about, command)
    bench.show_and_record(section, not args.no_write, BEGIN, END)
    return 0


def run(args: argparse.Namespace, base: Path, about: list[str], command: str) -> str:
    # Temp files of the tools (oras-py's, skopeo's) land on the run's file system too.
    (base / "tmp").mkdir()
    os.environ["TMPDIR"] = tempfile.tempdir = str(base / "tmp")
    with run_registry(base / "registry") as registry:
        artifacts = push_artifacts(registry, args.sizes, base, args.no_zstd_sizes)
        push_klaus(registry, WARM_UP, {"README.md": (b"warm-up\n", 0o644)}, base / "push-warm-up")
        chosen, labels = contenders(args, base)
        # One untimed round on the smallest artifact: the tools' binaries and the registry warm up.
        measure_all(artifacts[0], registry, base, {}, {}, chosen)
        floors: dict[str, dict[str, list[float]]] = {a.reference: {} for a in artifacts}
        results: dict[str, Results] = {a.reference: {} for a in artifacts}
        for r in range(args.repeats):
            for artifact in artifacts:
                measure_all(artifact, registry, base, results[artifact.reference], floors[artifact.reference], chosen)
                done = results[artifact.reference]
                print(f"  repeat {r + 1}, {artifact.label.split(':')[0]}: floor "
                      f"{bench.ms(min(v[-1] for v in floors[artifact.reference].values()))} ms, " + ", ".join(
                          f"{name.split(':')[0]} {bench.ms(v[-1]) if isinstance(v, list) else 'n/a'}" for name, v in done.items()),
                      flush=True)  # fmt: skip
        warm: dict[str, Warm | str] = {}
        # Warm on the smallest image containerd can mount (the plugin is an artifact, not an image).
        images = [a for a in artifacts if isinstance(results[a.reference].get(CONTAINERD), list)] or artifacts
        warm_artifact = images[0]
        if args.volumes:
            for mode, name in (("erofs", OURS_EROFS), ("fuse", OURS_FUSE), ("bind", OURS_BIND)):
                warm[name] = warm_ours(warm_artifact, registry, base, mode, args.volumes)
            warm["containerd: `ctr images mount` / `unmount --rm`"] = warm_containerd(warm_artifact, base, args.volumes)
            for name, res in warm.items():
                shown = res if isinstance(res, str) else f"p50 {bench.pct(res.publish, 50) * 1000:.2f} ms"
                print(f"  warm {name}: {shown}", flush=True)
    return report(args, command, about, artifacts, floors, results, warm_artifact.label, warm, labels)


if __name__ == "__main__":
    sys.exit(main())

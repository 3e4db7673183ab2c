"""Power loss (issue 18): nothing is named or recorded complete before its bytes are on the disk.

A rename is a metadata operation: after a power loss, ext4 and xfs may keep a renamed file's
name and lose its data, leaving an empty or short file under a real name. So the store flushes
each file before renaming it into place and the directory after, as containerd commits, before
store.db records a tree as complete; bind mode flushes an extracted tree before renaming it
into ``trees/``. These tests watch a real ``serve`` do it, with ``strace`` attached, rather
than reading the code: the order of the system calls is the property.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from artifacts import push_image
from csi_driver.views import bind
from driver import run_driver
from kubelet import publish_request, target_for, unpublish_request

MARKER = "durability-marker-7f3a9c.txt"
"""A file name only this test's layer holds: the store.db write that carries it is the tree's commit."""
TRACED = "fsync,fdatasync,rename,renameat,renameat2,syncfs,write,pwrite64,copy_file_range,mount,open_tree"
WRITES = ("write", "pwrite64", "copy_file_range")


@dataclass
class Call:
    """One system call of the trace: the thread, the call, its arguments as strace prints them,
    and the lines of the trace where it began and where it returned."""

    tid: int
    name: str
    args: str
    start: int
    end: int

    def fd_path(self, index: int = 0) -> str:
        """The path of the ``index``-th fd argument (``strace -y`` prints ``7</path>``)."""
        found = re.findall(r"\d+<(/[^>]*)>", self.args)
        return found[index] if len(found) > index else ""

    def written(self) -> str:
        """The path a write writes to (copy_file_range's second fd), "" for any other call."""
        return self.fd_path(1 if self.name == "copy_file_range" else 0) if self.name in WRITES else ""

    def paths(self) -> list[str]:
        """The string arguments (rename's, mount's and open_tree's paths)."""
        return [p.encode().decode("unicode_escape") for p in re.findall(r'"((?:[^"\\]|\\.)*)"', self.args)]


def parse_trace(text: str) -> list[Call]:
    """The calls of an ``strace -f -y`` trace in the order they began; a call that another
    thread's cut in two (``<unfinished ...>``, then ``<... resumed>``) is put back together."""
    calls: list[Call] = []
    pending: dict[int, Call] = {}
    for line_no, line in enumerate(text.splitlines()):
        if resumed := re.match(r"(\d+)\s+<\.\.\. (\w+) resumed>(.*)", line):
            call = pending.pop(int(resumed.group(1)))
            call.args = call.args.removesuffix("<unfinished ...>") + resumed.group(3)
            call.end = line_no
        elif started := re.match(r"(\d+)\s+(\w+)\((.*)", line):
            call = Call(int(started.group(1)), started.group(2), started.group(3), line_no, line_no)
            calls.append(call)
            if call.args.endswith("<unfinished ...>"):
                pending[call.tid] = call
    return calls


def all_threads_traced(pid: int) -> bool:
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    return bool(tasks) and all(
        int(next(line for line in (task / "status").read_text().splitlines() if line.startswith("TracerPid:")).split()[1])
        for task in tasks
    )


@contextlib.contextmanager
def traced(pid: int, out: Path) -> Iterator[None]:
    """``strace`` attached to every thread of ``pid`` (and to what it starts) while the block runs."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-y", "-qq", "-s", "65536", "-e", f"trace={TRACED}", "-o", str(out), "-p", str(pid)]
    )
    try:
        deadline = time.monotonic() + 15
        while not all_threads_traced(pid):
            assert tracer.poll() is None and time.monotonic() < deadline, "strace did not attach to serve"
            time.sleep(0.05)
        yield
    finally:
        tracer.send_signal(signal.SIGINT)  # strace detaches and leaves serve running
        tracer.wait(timeout=30)


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Trace:
    calls: list[Call]
    state: Path
    compressed: str = ""  # the hex digest of the traced publish's gzip layer


@pytest.fixture(scope="module")
def cold_bind_publish(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Trace:
    """The trace of a real ``serve --mode bind`` publishing an image it has never pulled: a
    gzip layer (kept only as its inflated tar) and a plain tar layer (stored as it is)."""
    tmp = tmp_path_factory.mktemp("durability")
    layers = [
        (gzip.compress(layer_tar({f"docs/{MARKER}": b"flushed before named\n", "bin/tool": b"#!/bin/sh\n"})),
         "application/vnd.oci.image.layer.v1.tar+gzip"),
        (layer_tar({"etc/config": b"key=value\n"}), "application/vnd.oci.image.layer.v1.tar"),
    ]  # fmt: skip
    pushed = push_image(registry, "durability/image:v1", layers, tmp / "push")
    request = publish_request(target_for(tmp / "kubelet", "pod-1", "image"), {"reference": pushed.reference})
    with run_driver(tmp, registry, "bind") as driver:
        with traced(driver.process.pid, tmp / "strace.txt"):
            driver.publish(request)
        assert (Path(request.target_path) / "docs" / MARKER).read_bytes() == b"flushed before named\n"
        driver.unpublish(unpublish_request(request))
    return Trace(parse_trace((tmp / "strace.txt").read_text()), driver.state_dir, hashlib.sha256(layers[0][0]).hexdigest())


def renames_into(trace: Trace, directory: str) -> list[tuple[Call, str, str]]:
    """Every rename whose destination is in ``directory`` (relative to the state dir): (call, from, to)."""
    found = []
    for call in trace.calls:
        if call.name.startswith("rename"):
            paths = call.paths()
            if len(paths) >= 2 and os.path.dirname(paths[1]) == str(trace.state / directory):
                found.append((call, paths[0], paths[1]))
    return found


def is_store_db_write(call: Call) -> bool:
    return call.name == "pwrite64" and call.fd_path().endswith("/store.db-wal")


def test_every_blob_and_layer_tar_is_flushed_before_its_rename_and_its_directory_right_after(
    cold_bind_publish: Trace,
) -> None:
    trace = cold_bind_publish
    blobs, tars = renames_into(trace, "blobs/sha256"), renames_into(trace, "layers/sha256")
    # Since each layer is kept once, the gzip layer's compressed bytes are hashed and inflated, never
    # written: 2 renames into blobs/ (3 before), and none of tmp/blob-<its hex>. The config is read, never stored.
    assert len(blobs) == 2, "the manifest and the plain tar layer are stored as served"
    assert len(tars) == 1, "the gzip layer is inflated once"
    assert not [c for c in trace.calls if f"/blob-{trace.compressed}." in c.written()], "the gzip blob was written"
    for rename, source, destination in blobs + tars:
        writes = [c for c in trace.calls if c.written() == source]
        fsyncs = [c for c in trace.calls if c.name == "fsync" and c.fd_path() == source and c.end < rename.start]
        assert writes and fsyncs, f"{destination} was renamed into place without an fsync of {source} first"
        assert max(w.end for w in writes) < fsyncs[-1].start, f"{source} was written to after its fsync"
        own = [c for c in trace.calls if c.tid == rename.tid and c.start > rename.end]
        row = next(c for c in own if is_store_db_write(c))
        flushed = [c for c in own if c.name == "fsync" and c.fd_path() == os.path.dirname(destination) and c.end < row.start]
        assert flushed, f"store.db recorded {destination} before its directory was flushed"


def test_the_row_that_marks_the_tree_complete_is_written_only_after_all_its_content_is_flushed(
    cold_bind_publish: Trace,
) -> None:
    trace = cold_bind_publish
    commit = next(c for c in trace.calls if is_store_db_write(c) and MARKER in c.args)
    flushes = [
        c for c in trace.calls
        if c.name == "fsync" and (c.fd_path().startswith(f"{trace.state}/tmp/") or c.fd_path() in
                                  (f"{trace.state}/blobs/sha256", f"{trace.state}/layers/sha256"))
    ]  # fmt: skip
    assert len(flushes) >= 2 + 1 + 2, "each stored file (two blobs, a tar) and the two directories are flushed"
    late = [c.fd_path() for c in flushes if c.end > commit.start]
    assert not late, f"store.db recorded the tree complete before these were flushed: {late}"


def test_an_extracted_tree_is_flushed_before_its_rename_into_trees_and_its_directory_before_it_is_mounted(
    cold_bind_publish: Trace,
) -> None:
    trace = cold_bind_publish
    trees = bind.tree_dir(trace.state, "sha256:" + "0" * 64).parent.relative_to(trace.state)  # trees/v<N>/sha256
    [(rename, source, destination)] = renames_into(trace, str(trees))
    writes = [c for c in trace.calls if c.written().startswith(source + "/")]
    syncs = [c for c in trace.calls if c.name == "syncfs" and c.fd_path() == source and c.end < rename.start]
    assert writes and syncs, f"{destination} was renamed into place without a syncfs of {source} first"
    assert max(w.end for w in writes) < syncs[-1].start, "the tree was written to after it was flushed"
    # the bind clones the tree with open_tree (mount(2) on kernels before 5.12) before attaching it
    mount = next(c for c in trace.calls if c.name in ("open_tree", "mount") and c.paths()[:1] == [destination])
    flushed = [c for c in trace.calls if c.name == "fsync" and c.fd_path() == os.path.dirname(destination)
               and rename.end < c.start and c.end < mount.start]  # fmt: skip
    assert flushed, f"{destination} was bound onto a volume before its directory was flushed"


def test_gc_forgets_a_tree_on_the_disk_before_its_files_go_and_never_leaves_part_of_it_under_its_name(
    registry: str, tmp_path: Path
) -> None:
    """``cache gc`` removes the rows, flushed, before the files they name: a power loss in
    between may keep files no row needs (the next collection removes them), never a row whose
    files are gone. An extracted tree leaves its name in one rename before it is deleted, so
    neither a kill nor a power loss halfway through leaves part of a tree that looks whole."""
    layers = [(gzip.compress(layer_tar({f"docs/{MARKER}": b"soon gone\n"})), "application/vnd.oci.image.layer.v1.tar+gzip")]
    pushed = push_image(registry, "durability/gc:v1", layers, tmp_path / "push")
    request = publish_request(target_for(tmp_path / "kubelet", "pod-1", "image"), {"reference": pushed.reference})
    with run_driver(tmp_path, registry, "bind") as driver:
        driver.publish(request)
        driver.unpublish(unpublish_request(request))
    state = driver.state_dir
    out = tmp_path / "strace.txt"
    subprocess.run(
        ["strace", "-f", "-y", "-qq", "-s", "0", "-e", "trace=fsync,fdatasync,pwrite64,rename,renameat,renameat2,unlink,unlinkat",
         "-o", str(out), sys.executable, "-m", "csi_driver", "cache", "gc", "--state-dir", str(state), "--grace", "0",
         "--cache-max-bytes", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    calls = parse_trace(out.read_text())
    assert not list((state / "blobs" / "sha256").iterdir()) and not list(bind.tree_dir(state, pushed.digest).parent.iterdir())

    def unlinks_below(directory: Path) -> list[Call]:
        return [c for c in calls if c.name.startswith("unlink") and any(p.startswith(f"{directory}/") for p in c.paths())
                or c.name == "unlinkat" and c.fd_path().startswith(str(directory))]  # fmt: skip

    removed = [c for c in unlinks_below(state / "blobs") + unlinks_below(state / "layers") if "ENOENT" not in c.args]
    assert len(removed) >= 2, "the manifest and the layer's tar are deleted (its gzip blob was never kept)"
    first = min(c.start for c in removed)
    wal = [c for c in calls if c.fd_path().endswith("/store.db-wal") and c.start < first]
    last_write = max(c.end for c in wal if c.name == "pwrite64")
    assert any(c.name in ("fsync", "fdatasync") and c.start > last_write for c in wal), (
        "blobs were deleted before store.db's removal of their tree was on the disk"
    )
    tree = str(bind.tree_dir(state, pushed.digest))
    [away] = [c for c in calls if c.name.startswith("rename") and c.paths()[:1] == [tree]]
    assert away.paths()[1].startswith(f"{state}/tmp/")
    assert not unlinks_below(Path(tree)), "files were deleted under the tree's own name"
    assert min(c.start for c in unlinks_below(Path(away.paths()[1]))) > away.end

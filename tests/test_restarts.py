"""Restarts and deaths (issue 6): real processes killed with SIGKILL, real mounts checked.

A driver upgrade or crash must never break a running pod's volume (docs/processes.md
"Processes and restarts").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import gzip
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from artifacts import PLUGIN_TREE, push_image, push_klaus
from csi_driver._pb import csi_pb2
from csi_driver.content.store import Store
from csi_driver.layout.tree import blob_relpath, decoded_relpath
from csi_driver.mounts import kernel
from csi_driver.views import erofs, erofsmount, fuse
from driver import Driver, cleanup_mounts_under, run_driver, walk
from kubelet import publish_request, target_for, unpublish_request
from test_erofs_mount import loops_serving
from test_publish import expected_walk

PLUGIN_FILE = ".claude-plugin/plugin.json"


@pytest.fixture
def plugin(registry: str, tmp_path_factory: pytest.TempPathFactory):
    return push_klaus(registry, "restarts/plugin:v1", PLUGIN_TREE, tmp_path_factory.mktemp("push"))


def fuse_pids(driver: Driver) -> list[int]:
    pattern = f"csi_driver fuse --state-dir {driver.state_dir}$"
    return [int(pid) for pid in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]


def fuse_pid(driver: Driver) -> int:
    pids = fuse_pids(driver)
    assert len(pids) == 1, f"expected one FUSE server for {driver.state_dir}, found {pids}"
    return pids[0]


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def readable(path: Path) -> bool:
    try:
        return bool(path.read_bytes())
    except OSError:
        return False


def mounts_at(target: Path) -> int:
    return sum(1 for m in kernel.mount_table() if m.mount_point == str(target))


def stats(driver: Driver, request) -> csi_pb2.NodeGetVolumeStatsResponse:
    return driver.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=request.volume_id, volume_path=request.target_path)
    )


@contextlib.contextmanager
def killed_after_publishing(
    mode: str, registry: str, plugin, tmp_path: Path, kubelet_root: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[Driver, csi_pb2.NodePublishVolumeRequest]]:
    """A driver that published the plugin for pod-1 and was then SIGKILLed; the driver and the request."""
    request = publish_request(target_for(kubelet_root, "pod-1", "plugin"), {"reference": plugin.reference})
    with run_driver(tmp_path, registry, mode, env=env) as driver:
        driver.publish(request)
        driver.process.send_signal(signal.SIGKILL)
        driver.process.wait()
        yield driver, request


@pytest.mark.parametrize("mode", ["bind", "fuse", "erofs"])
def test_volumes_stay_readable_while_serve_is_killed_and_restarted(
    mode: str, registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    with killed_after_publishing(mode, registry, plugin, tmp_path, kubelet_root) as (_, request):
        assert walk(Path(request.target_path)) == expected_walk(PLUGIN_TREE)
        restart_serve_and_unpublish(tmp_path, registry, mode, request)


def restart_serve_and_unpublish(tmp_path: Path, registry: str, mode: str, request, env: dict[str, str] | None = None) -> None:
    """A new ``serve``: the volume reads as published, through exactly one mount; unpublish removes it."""
    target = Path(request.target_path)
    with run_driver(tmp_path, registry, mode, env=env) as second:
        assert walk(target) == expected_walk(PLUGIN_TREE)
        assert mounts_at(target) == 1
        second.unpublish(unpublish_request(request))
        assert mounts_at(target) == 0
        assert not target.exists()


@contextlib.contextmanager
def published_plugin(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> Iterator[tuple[Driver, csi_pb2.NodePublishVolumeRequest]]:
    """A fuse-mode driver that has published the plugin for pod-1; the driver and the request."""
    request = publish_request(target_for(kubelet_root, "pod-1", "plugin"), {"reference": plugin.reference})
    with run_driver(tmp_path, registry, "fuse") as driver:
        driver.publish(request)
        yield driver, request


def test_sigterm_stops_serving_and_keeps_mounts(registry: str, plugin, tmp_path: Path, kubelet_root: Path) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        d.process.send_signal(signal.SIGTERM)
        assert d.process.wait(timeout=15) == 0
        assert walk(Path(request.target_path)) == expected_walk(PLUGIN_TREE)


def kill_the_view_and_wait_for_its_repair(driver: Driver, target: Path) -> None:
    """SIGKILL the FUSE server; return once serve has started another and ``target`` reads again."""
    old = fuse_pid(driver)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: fuse_pids(driver) not in ([], [old]) and readable(target / PLUGIN_FILE))


def test_killed_fuse_server_is_replaced_and_targets_rebound(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        target = Path(request.target_path)
        kill_the_view_and_wait_for_its_repair(d, target)
        assert walk(target) == expected_walk(PLUGIN_TREE)
        assert d.identity.Probe(csi_pb2.ProbeRequest()).ready.value is True
        assert stats(d, request).volume_condition.abnormal is False
        d.unpublish(unpublish_request(request))


def view_readahead_kb(driver: Driver) -> int:
    info = kernel.find_mount(str(driver.state_dir / "view"))
    assert info is not None, "the FUSE view is not mounted"
    return int(Path(f"/sys/class/bdi/{info.device}/read_ahead_kb").read_text())


def test_the_views_readahead_is_raised_so_large_files_arrive_in_1_mib_requests_also_after_a_restart(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        target = Path(request.target_path)
        assert view_readahead_kb(d) == fuse.READAHEAD_KB == 1024
        kill_the_view_and_wait_for_its_repair(d, target)
        assert view_readahead_kb(d) == fuse.READAHEAD_KB
        d.unpublish(unpublish_request(request))


def test_a_read_only_sys_leaves_the_views_readahead_as_it_is_and_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    view = fuse.FuseView(Store(tmp_path))
    info = kernel.MountInfo(view.mountpoint, "/", fuse.FUSE_FS_TYPE, "oci-volume-csi", frozenset({"ro"}), "0:999")
    monkeypatch.setattr(kernel, "find_mount", lambda path: info if path == view.mountpoint else None)

    def read_only(self: Path, text: str) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    view._raise_readahead()
    assert "could not raise the readahead of the FUSE view" in caplog.text
    assert "/sys/class/bdi/0:999/read_ahead_kb" in caplog.text


def test_restarted_fuse_container_stands_by_and_takes_over_instead_of_crash_looping(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    """The DaemonSet's fuse container crashed, serve started its own view; the container's
    restart must wait, not exit, and when serve's view dies it is the one that replaces it."""
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        target = Path(request.target_path)
        serves = fuse_pid(d)
        container = subprocess.Popen(
            [sys.executable, "-m", "csi_driver", "fuse", "--state-dir", str(d.state_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2)
        assert container.poll() is None, "a second fuse server must stand by, not exit"
        assert len([m for m in kernel.mount_table() if m.mount_point == str(d.state_dir / "view")]) == 1
        os.kill(serves, signal.SIGKILL)
        wait_until(lambda: readable(target / PLUGIN_FILE))
        assert fuse_pids(d) == [container.pid], "serve must not start a server while one takes over"
        assert walk(target) == expected_walk(PLUGIN_TREE)
        d.unpublish(unpublish_request(request))
    container.wait(timeout=10)


@pytest.fixture
def shared_kubelet_root(kubelet_root: Path) -> Iterator[Path]:
    """The kubelet dir as on a node, where ``/var/lib/kubelet`` is a shared mount: every target
    mounted below it is then shared too, the master of a container's copy of it."""
    subprocess.run(["mount", "--bind", str(kubelet_root), str(kubelet_root)], check=True)
    subprocess.run(["mount", "--make-shared", str(kubelet_root)], check=True)
    yield kubelet_root
    subprocess.run(["umount", "-l", str(kubelet_root)], check=False)


def propagation(path: Path, pid: str = "self") -> list[str]:
    """The propagation of each mount at ``path``, bottom first: ``shared:N``, ``master:N`` or ``private``."""
    found = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.partition(" - ")[0].split()
        if kernel._unescape(fields[4]) == str(path):
            found.append(" ".join(fields[6:]) or "private")
    return found


@dataclass
class Container:
    """A process holding a volume as a container does; ``read`` and ``mounts`` look from inside."""

    process: subprocess.Popen
    path: Path

    def read(self, name: str) -> bytes | None:
        inside = ["nsenter", "-t", str(self.process.pid), "-m", "cat", str(self.path / name)]
        done = subprocess.run(inside, capture_output=True)
        return done.stdout if done.returncode == 0 else None

    def mounts(self) -> list[kernel.MountInfo]:
        table = kernel.mount_table(f"/proc/{self.process.pid}/mountinfo")
        return [m for m in table if m.mount_point == str(self.path)]


@contextlib.contextmanager
def container_with_volume(target: Path, kubelet_root: Path, path: Path) -> Iterator[Container]:
    """``target`` as runc hands it to a container whose volume mount says ``readOnly`` and
    ``mountPropagation: HostToContainer``: a new mount namespace made ``rslave``, the target bound
    at a path of the container's own (``--rbind``, remounted read-only, ``rslave``), and the host's
    kubelet dir gone from its sight (runc's pivot_root drops it). The container's copy is a slave
    of the target mount itself, not of the kubelet dir: only mounts made on top of the target reach it.
    """
    path.mkdir(parents=True)
    script = (
        f"mount --make-rslave / && mount --rbind {target} {path} && mount -o remount,bind,ro {path}"
        f" && mount --make-rslave {path} && umount -l {kubelet_root} && echo ready && exec sleep 300"
    )
    process = subprocess.Popen(
        ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", script], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n", "the container did not start"
        yield Container(process, path)
    finally:
        process.kill()
        process.wait()


def stop_the_driver_pod(driver: Driver) -> None:
    """What deleting the DaemonSet's pod does (a rolling update): SIGTERM to ``serve`` and to the
    FUSE server, which unmounts its view on the way out; the volumes' mounts stay, dead."""
    view = fuse_pid(driver)
    driver.process.send_signal(signal.SIGTERM)
    assert driver.process.wait(timeout=15) == 0
    os.kill(view, signal.SIGTERM)
    wait_until(lambda: fuse_pids(driver) == [])


def sees_the_repair(container: Container) -> None:
    """The container reads its volume again, through a mount as read-only as the first one."""
    wait_until(lambda: container.read(PLUGIN_FILE) == PLUGIN_TREE[PLUGIN_FILE][0])
    assert {"ro", "nosuid", "nodev"} <= container.mounts()[-1].options


@pytest.mark.parametrize("how", ["the view is killed", "the driver pod is replaced"])
def test_a_container_with_host_to_container_propagation_sees_the_repair(
    how: str, registry: str, plugin, tmp_path: Path, shared_kubelet_root: Path
) -> None:
    with published_plugin(registry, plugin, tmp_path, shared_kubelet_root) as (d, request):
        target = Path(request.target_path)
        [shared] = propagation(target)
        assert shared.startswith("shared:"), "a target below the kubelet dir is shared, as on a node"
        with container_with_volume(target, shared_kubelet_root, tmp_path / "container" / "plugin") as container:
            assert propagation(container.path, str(container.process.pid)) == [shared.replace("shared", "master")]
            assert container.read(PLUGIN_FILE) == PLUGIN_TREE[PLUGIN_FILE][0]
            if how == "the view is killed":
                os.kill(fuse_pid(d), signal.SIGKILL)  # serve's watchdog repairs
                sees_the_repair(container)
            else:
                stop_the_driver_pod(d)
                assert container.read(PLUGIN_FILE) is None
                with run_driver(tmp_path, registry, "fuse"):  # the new pod's serve repairs at start
                    sees_the_repair(container)


def test_unpublish_succeeds_when_the_view_is_dead(registry: str, plugin, tmp_path: Path, kubelet_root: Path) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        os.kill(fuse_pid(d), signal.SIGKILL)
        time.sleep(0.05)
        d.unpublish(unpublish_request(request))
        assert kernel.find_mount(request.target_path) is None
        assert not Path(request.target_path).exists()


def test_a_repair_stacks_one_mount_on_the_dead_one_and_a_second_look_stacks_none(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        target = Path(request.target_path)
        kill_the_view_and_wait_for_its_repair(d, target)
        assert mounts_at(target) == 2  # the dead bind stays beneath the new one
        d.process.send_signal(signal.SIGKILL)
        d.process.wait()
        with run_driver(tmp_path, registry, "fuse"):  # reconciles a healthy target: leaves it alone
            assert walk(target) == expected_walk(PLUGIN_TREE)
            assert mounts_at(target) == 2


def test_unpublish_removes_every_stacked_mount_the_dead_and_busy_ones_too(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        target = Path(request.target_path)
        with open(target / PLUGIN_FILE, "rb"):  # keeps the bottom mount busy: it goes lazily
            kill_the_view_and_wait_for_its_repair(d, target)
            kill_the_view_and_wait_for_its_repair(d, target)
            assert mounts_at(target) == 3
            os.kill(fuse_pid(d), signal.SIGKILL)  # and the top one dead too, unless the watchdog is quick
            time.sleep(0.05)
            d.unpublish(unpublish_request(request))
            assert mounts_at(target) == 0
            assert not target.exists()


@pytest.mark.parametrize("mode", ["bind", "fuse", "erofs"])
def test_after_a_reboot_serve_binds_every_recorded_target_again(
    mode: str, registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    """A reboot leaves the records and the empty target directories, and no mount at all."""
    with killed_after_publishing(mode, registry, plugin, tmp_path, kubelet_root) as (first, request):
        for pid in fuse_pids(first):
            os.kill(pid, signal.SIGKILL)
        cleanup_mounts_under(tmp_path)
        target = Path(request.target_path)
        assert mounts_at(target) == 0 and target.is_dir()
        restart_serve_and_unpublish(tmp_path, registry, mode, request)


def serves_image(info: kernel.MountInfo | None, image: Path) -> bool:
    """An erofs mount of ``image``: its source is the image, or a loop device serving it."""
    if info is None or info.fs_type != "erofs":
        return False
    return info.source == str(image) or erofsmount.loop_backing_file(info.source) == str(image)


def test_after_a_reboot_serve_mounts_a_loop_backed_image_again_and_binds_the_volume(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    """Reconcile re-mounts the digest's image over new loop devices before it re-binds the record;
    the old ones went with the mounts (autoclear)."""
    env = {erofsmount.FORCE_BACKING: "loop"}
    with killed_after_publishing("erofs", registry, plugin, tmp_path, kubelet_root, env) as (first, request):
        (digest,) = Store(first.state_dir).committed_digests()
        image = erofs.image_path(first.state_dir, digest)
        assert serves_image(kernel.find_mount(str(erofs.mount_dir(first.state_dir, digest))), image)
        cleanup_mounts_under(tmp_path)
        assert mounts_at(Path(request.target_path)) == 0
        assert not loops_serving(first.state_dir)
        target = Path(request.target_path)
        with run_driver(tmp_path, registry, "erofs", env=env) as second:
            assert walk(target) == expected_walk(PLUGIN_TREE) and mounts_at(target) == 1
            assert serves_image(kernel.find_mount(str(erofs.mount_dir(second.state_dir, digest))), image)
            assert len(loops_serving(second.state_dir)) == 2  # the image and the plugin's one layer
            second.unpublish(unpublish_request(request))


@pytest.mark.parametrize("backing", erofsmount.BACKINGS)
def test_an_erofs_image_an_admin_unmounted_is_mounted_again_for_the_next_volume(
    backing: str, registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    """The volume's bind keeps the file system alive without the per-digest mount; the next
    publish of the digest finds it missing in the mount table and mounts the image again, and
    the one after that finds it there (a loop device serving the image is the image's mount)."""
    first = publish_request(target_for(kubelet_root, "pod-1", "plugin"), {"reference": plugin.reference})
    with run_driver(tmp_path, registry, "erofs", env={erofsmount.FORCE_BACKING: backing}) as d:
        d.publish(first)
        (digest,) = Store(d.state_dir).committed_digests()
        view = erofs.mount_dir(d.state_dir, digest)
        kernel.unmount(str(view))
        assert kernel.find_mount(str(view)) is None
        assert walk(Path(first.target_path)) == expected_walk(PLUGIN_TREE)
        second = publish_request(target_for(kubelet_root, "pod-2", "plugin"), {"reference": plugin.reference})
        d.publish(second)
        assert serves_image(kernel.find_mount(str(view)), erofs.image_path(d.state_dir, digest))
        assert walk(Path(second.target_path)) == expected_walk(PLUGIN_TREE)
        third = publish_request(target_for(kubelet_root, "pod-3", "plugin"), {"reference": plugin.reference})
        d.publish(third)
        assert mounts_at(view) == 1
        for request in (first, second, third):
            d.unpublish(unpublish_request(request))


def test_volume_stats_report_bytes_inodes_and_a_dead_view(
    registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    with published_plugin(registry, plugin, tmp_path, kubelet_root) as (d, request):
        healthy = stats(d, request)
        files = [c for c, _ in PLUGIN_TREE.values() if isinstance(c, bytes)]
        by_unit = {u.unit: u for u in healthy.usage}
        assert by_unit[csi_pb2.VolumeUsage.BYTES].used == sum(len(c) for c in files)
        assert by_unit[csi_pb2.VolumeUsage.INODES].used == len(PLUGIN_TREE) + 1
        assert healthy.volume_condition.abnormal is False
        os.kill(fuse_pid(d), signal.SIGKILL)
        time.sleep(0.05)
        assert stats(d, request).volume_condition.abnormal is True
        with pytest.raises(grpc.RpcError) as excinfo:
            d.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id="csi-unknown", volume_path="/x"))
        assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


def big_layer(size: int, seed: int = 6) -> bytes:
    """An uncompressed tar of incompressible 1 MiB files: slow enough to kill a pull in the middle."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(size // (1 << 20)):
            info = tarfile.TarInfo(f"data/{i:04d}.bin")
            info.size = 1 << 20
            tar.addfile(info, io.BytesIO(rng.randbytes(1 << 20)))
    return buf.getvalue()


@pytest.mark.parametrize("media_type", ["application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip"])
def test_pull_killed_midway_leaves_nothing_and_the_next_publish_is_exact(
    registry: str, tmp_path: Path, kubelet_root: Path, media_type: str
) -> None:
    """Also for a gzip layer, which is inflated as it downloads and kept only as its tar: the kill
    mid-inflate leaves a partial tar in tmp/ only, never a tar or a blob under the layer's name."""
    layer = big_layer(160 << 20)
    blob = gzip.compress(layer, compresslevel=1) if media_type.endswith("+gzip") else layer
    pushed = push_image(registry, f"restarts/big-{len(blob)}:v1", [(blob, media_type)], tmp_path / "push")
    request = publish_request(target_for(kubelet_root, "pod-1", "image"), {"reference": pushed.reference})
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    named = [blob_relpath(digest), decoded_relpath(digest)]  # the blob as served, its inflated tar
    # A slow registry read budget is not needed: the kill lands while bytes stream to tmp/.
    with run_driver(tmp_path, registry, "bind") as first:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            call = pool.submit(first.publish, request)
            tmp = first.state_dir / "tmp"
            wait_until(lambda: any(p.stat().st_size > 0 for p in tmp.iterdir()), timeout=30)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
            with pytest.raises(grpc.RpcError):
                call.result()
        assert list(tmp.iterdir()), "the kill should have left a partial temp file"
        assert not [rel for rel in named if (first.state_dir / rel).exists()], "a half-stored layer has its name"
        with run_driver(tmp_path, registry, "bind") as second:
            assert list(tmp.iterdir()) == []
            second.publish(request)
            target = Path(request.target_path)
            assert (target / "data/0007.bin").read_bytes() == layer[
                layer.index(b"data/0007.bin") + 512 : layer.index(b"data/0007.bin") + 512 + (1 << 20)
            ]
            assert len(os.listdir(target / "data")) == 160
            assert [(second.state_dir / rel).exists() for rel in named] == ([True, False] if blob is layer else [False, True])
            second.unpublish(unpublish_request(request))

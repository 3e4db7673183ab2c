"""Cache budget and garbage collection, and a full disk, against the real driver and registry."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from artifacts import PLUGIN_TREE, push_image, push_klaus
from csi_driver.content.cache import cache_bytes
from csi_driver.content.store import Store
from csi_driver.mounts import kernel
from csi_driver.views import bind, erofs, erofsmount
from csi_driver.views.choose import Copies
from driver import run_driver, walk
from kubelet import publish_request, target_for, unpublish_request
from test_erofs_mount import loops_serving
from test_publish import expected_walk
from test_restarts import big_layer

TAR = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cache_gc(state: Path, *flags: str, grace: str = "0") -> str:
    cmd = [sys.executable, "-m", "csi_driver", "cache", "gc", "--state-dir", str(state), "--grace", grace, *flags]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def view_copy_exists(mode: str, state: Path, digest: str) -> bool:
    """Whether the view of ``mode`` still keeps a copy of ``digest``: bind's extracted tree, or
    erofs's image (and its mount, which must never outlive the image)."""
    if mode == "bind":
        return bind.tree_dir(state, digest).exists()
    mounted = kernel.find_mount(str(erofs.mount_dir(state, digest))) is not None
    assert mounted == erofs.image_path(state, digest).exists(), f"{digest}: the image and its mount disagree"
    return mounted


@pytest.mark.parametrize("mode", ["bind", "erofs"])
def test_gc_removes_unused_content_oldest_first_and_keeps_what_is_in_use(
    mode: str, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    shared = big_layer(1 << 20, seed=1)
    own = [big_layer(1 << 20, seed=10 + i) for i in range(3)]
    images = [
        push_image(registry, f"cache/image-{i}:v1", [(shared, TAR), (own[i], TAR)], tmp_path / f"p{i}") for i in range(3)
    ]
    requests = [
        publish_request(target_for(kubelet_root, f"pod-{i}", "image"), {"reference": image.reference})
        for i, image in enumerate(images)
    ]
    with run_driver(tmp_path, registry, mode) as d:
        for request in requests:
            d.publish(request)
        for request in requests[:2]:
            d.unpublish(unpublish_request(request))
        store = Store(d.state_dir)
        oldest, middle, in_use = (digest for digest, _ in store.trees_by_age())
        assert all(view_copy_exists(mode, d.state_dir, digest) for digest in (oldest, middle, in_use))
        in_use_copy = (bind.tree_dir if mode == "bind" else erofs.image_path)(d.state_dir, in_use).stat()

        out = cache_gc(d.state_dir, "--cache-max-bytes", str(cache_bytes(store, Copies(store)) - 1))
        assert re.search(rf"^removed +{oldest} ", out, re.MULTILINE) and middle not in out
        assert store.committed_digests() == sorted([middle, in_use])
        assert not store.has_blob(sha256(own[0])) and store.has_blob(sha256(shared))
        assert not view_copy_exists(mode, d.state_dir, oldest) and view_copy_exists(mode, d.state_dir, middle)

        out = cache_gc(d.state_dir, "--cache-max-bytes", "1")
        assert re.search(rf"^removed +{middle} ", out, re.MULTILINE) and "over budget: kept 1 in use" in out
        assert re.search(rf"^kept +{in_use} .* in use by 1 volume$", out, re.MULTILINE)
        assert store.committed_digests() == [in_use]
        assert not view_copy_exists(mode, d.state_dir, middle) and view_copy_exists(mode, d.state_dir, in_use)
        untouched = (bind.tree_dir if mode == "bind" else erofs.image_path)(d.state_dir, in_use).stat()
        assert (untouched.st_ino, untouched.st_mtime_ns) == (in_use_copy.st_ino, in_use_copy.st_mtime_ns)
        assert store.has_blob(sha256(shared)) and store.has_blob(sha256(own[2]))
        assert (Path(requests[2].target_path) / "data/0000.bin").read_bytes() == own[2][512 : 512 + (1 << 20)]

        again = publish_request(target_for(kubelet_root, "pod-again", "image"), {"reference": images[0].reference})
        d.publish(again)
        assert (Path(again.target_path) / "data/0000.bin").read_bytes() == own[0][512 : 512 + (1 << 20)]


def test_gc_of_a_loop_backed_erofs_digest_frees_its_loop_devices(registry: str, tmp_path: Path, kubelet_root: Path) -> None:
    """Unmounting the image is what detaches its loop devices (autoclear): none is left serving
    the digest's image or tars once gc removed it."""
    image = push_image(registry, "cache/loop:v1", [(big_layer(1 << 20, seed=7), TAR)], tmp_path / "p")
    request = publish_request(target_for(kubelet_root, "pod-loop", "image"), {"reference": image.reference})
    with run_driver(tmp_path, registry, "erofs", env={erofsmount.FORCE_BACKING: "loop"}) as d:
        d.publish(request)
        (digest,) = Store(d.state_dir).committed_digests()
        assert len(loops_serving(d.state_dir)) == 2  # the image and its tar
        d.unpublish(unpublish_request(request))
        assert len(loops_serving(d.state_dir)) == 2  # unpublish leaves the digest's mount
        out = cache_gc(d.state_dir, "--cache-max-bytes", "1")
        assert re.search(rf"^removed +{digest} ", out, re.MULTILINE)
        assert loops_serving(d.state_dir) == {}
        assert not view_copy_exists("erofs", d.state_dir, digest)


def test_gc_says_why_it_kept_what_it_kept_in_human_units(registry: str, tmp_path: Path, kubelet_root: Path) -> None:
    shared = push_klaus(registry, "cache/shared:v1", PLUGIN_TREE, tmp_path / "shared")
    recent = push_image(registry, "cache/recent:v1", [(big_layer(1 << 20, seed=4), TAR)], tmp_path / "recent")
    pods = [publish_request(target_for(kubelet_root, f"pod-{i}", "p"), {"reference": shared.reference}) for i in (1, 2)]
    gone = publish_request(target_for(kubelet_root, "pod-gone", "p"), {"reference": recent.reference})
    with run_driver(tmp_path, registry, "bind") as d:
        for request in [*pods, gone]:
            d.publish(request)
        d.unpublish(unpublish_request(gone))

        out = cache_gc(d.state_dir, "--cache-max-bytes", "1", grace="300")
        assert "removed" not in out
        assert re.search(rf"^kept +{shared.digest} +\d+ B .* in use by 2 volumes$", out, re.MULTILINE), out
        assert re.search(rf"^kept +{recent.digest} +1\.0 MiB .* used in the last 300 s \(--grace\)$", out, re.MULTILINE)
        assert out.splitlines()[-1].startswith("freed 0 B; ")
        assert "over budget: kept 1 in use and 1 used in the last 300 s (--grace)" in out
        assert " bytes" not in out

        report = json.loads(cache_gc(d.state_dir, "--cache-max-bytes", "1", "--output", "json"))
        assert [t["digest"] for t in report["removed"]] == [recent.digest]
        assert [(t["digest"], t["reason"], t["volumes"]) for t in report["kept"]] == [(shared.digest, "in use", 2)]

        for request in pods:
            d.unpublish(unpublish_request(request))
        out = cache_gc(d.state_dir, "--cache-min-free", "99%")  # more than this file system can ever have free
        assert re.search(rf"^removed +{shared.digest} ", out, re.MULTILINE)
        assert "over budget: no complete artifact is left that may be removed; the file system has" in out
        assert "in use" not in out
        assert cache_gc(d.state_dir).startswith("within budget, nothing to remove; ")


def test_full_disk_is_resource_exhausted_cleans_up_and_keeps_serving(
    registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    plugin = push_klaus(registry, "cache/small:v1", PLUGIN_TREE, tmp_path / "small")
    huge = push_image(registry, "cache/huge:v1", [(big_layer(24 << 20, seed=3), TAR)], tmp_path / "huge")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(state)], check=True)
    try:
        with run_driver(tmp_path, registry, "bind") as d:
            first = publish_request(target_for(kubelet_root, "pod-1", "plugin"), {"reference": plugin.reference})
            d.publish(first)
            failing = publish_request(target_for(kubelet_root, "pod-2", "image"), {"reference": huge.reference})
            with pytest.raises(grpc.RpcError) as excinfo:
                d.publish(failing)
            assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "state dir" in excinfo.value.details()
            assert list((state / "tmp").iterdir()) == []
            assert not Store(state).committed(huge.digest)
            assert kernel.find_mount(failing.target_path) is None
            again = publish_request(target_for(kubelet_root, "pod-3", "plugin"), {"reference": plugin.reference})
            d.publish(again)
            assert walk(Path(again.target_path)) == expected_walk(PLUGIN_TREE)
            assert walk(Path(first.target_path)) == expected_walk(PLUGIN_TREE)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)

"""End to end: kubelet-shaped NodePublishVolume/NodeUnpublishVolume against the real
``serve`` process, a real registry, real FUSE and bind mounts (issue 3)."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import time
from pathlib import Path

import grpc
import pytest

from artifacts import PERSONALITY_TREE, PLUGIN_TREE, Tree, push_klaus
from csi_driver.mounts import kernel
from driver import Driver, run_driver, walk
from kubelet import publish_request, target_for, unpublish_request

MODES = ["bind", "fuse", "erofs"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def driver(tmp_path: Path, registry: str, mode: str):
    with run_driver(tmp_path, registry, mode) as d:
        yield d


@pytest.fixture
def plugin(registry: str, tmp_path_factory: pytest.TempPathFactory):
    return push_klaus(registry, "klaus-plugins/gs-base:v0.6.0", PLUGIN_TREE, tmp_path_factory.mktemp("push"))


def expected_walk(tree: Tree) -> dict[str, tuple]:
    """What a mount of ``tree`` must show, in the shape of ``driver.walk``."""
    out: dict[str, tuple] = {}
    for rel, (content, mode) in tree.items():
        if content is None:
            out[rel] = ("dir", mode, 0, 0, b"")
        elif isinstance(content, str):
            out[rel] = ("symlink", 0, 0, 0, content.removeprefix("->"))
        else:
            out[rel] = ("file", mode, 0, 0, content)
    return out


def assert_read_only_mount(target: Path) -> None:
    info = kernel.find_mount(str(target))
    assert info is not None, f"{target} is not a mount point"
    assert {"ro", "nosuid", "nodev"} <= info.options, info.options


def test_klaus_plugin_mounts_exact_tree_read_only(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-1", "plugin-gs-base")
    request = publish_request(target, {"reference": plugin.reference})
    driver.publish(request)

    assert_read_only_mount(target)
    assert walk(target) == expected_walk(PLUGIN_TREE)
    manifest = json.loads((target / ".claude-plugin/plugin.json").read_text())
    assert manifest["name"] == "gs-base"
    with pytest.raises(OSError) as excinfo:
        (target / "new-file").write_text("x")
    assert excinfo.value.errno == errno.EROFS

    driver.unpublish(unpublish_request(request))
    assert kernel.find_mount(str(target)) is None
    assert not target.exists()
    assert target.parent.is_dir()


def test_personality_mounts_like_a_plugin(driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path) -> None:
    pushed = push_klaus(registry, "klaus-personalities/sre:v1", PERSONALITY_TREE, tmp_path / "push", kind="personality")
    target = target_for(kubelet_root, "pod-2", "personality")
    request = publish_request(target, {"reference": pushed.reference})
    driver.publish(request)
    assert walk(target) == expected_walk(PERSONALITY_TREE)
    driver.unpublish(unpublish_request(request))
    assert not target.exists()


def test_readonly_false_still_mounts_read_only(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-3", "plugin")
    request = publish_request(target, {"reference": plugin.reference}, readonly=False)
    driver.publish(request)
    assert_read_only_mount(target)
    driver.unpublish(unpublish_request(request))


def test_publish_and_unpublish_are_idempotent(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-4", "plugin")
    request = publish_request(target, {"reference": plugin.reference})
    driver.publish(request)
    driver.publish(request)
    assert sum(1 for m in kernel.mount_table() if m.mount_point == str(target)) == 1
    driver.unpublish(unpublish_request(request))
    driver.unpublish(unpublish_request(request))
    assert kernel.find_mount(str(target)) is None


def test_unpublish_of_unknown_target_is_ok(driver: Driver, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-never", "plugin")
    request = publish_request(target, {"reference": "127.0.0.1:1/none:v1"})
    driver.unpublish(unpublish_request(request))


def test_other_reference_on_published_target_is_already_exists(
    driver: Driver, plugin, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    other = push_klaus(registry, "klaus-personalities/other:v1", PERSONALITY_TREE, tmp_path / "push", kind="personality")
    target = target_for(kubelet_root, "pod-5", "plugin")
    request = publish_request(target, {"reference": plugin.reference})
    driver.publish(request)
    clash = publish_request(target, {"reference": other.reference}, vol_id=request.volume_id)
    with pytest.raises(grpc.RpcError) as excinfo:
        driver.publish(clash)
    assert excinfo.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert plugin.reference in excinfo.value.details()
    driver.unpublish(unpublish_request(request))


def publish_error(driver: Driver, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as excinfo:
        driver.publish(request)
    return excinfo.value


@pytest.mark.parametrize("mode", ["bind"], indirect=True)
def test_unknown_attribute_is_invalid_argument_naming_it(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-6", "plugin")
    err = publish_error(driver, publish_request(target, {"reference": plugin.reference, "pullpolicy": "Always"}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pullpolicy" in err.details()
    assert kernel.find_mount(str(target)) is None


@pytest.mark.parametrize("mode", ["bind"], indirect=True)
def test_bad_reference_is_invalid_argument(driver: Driver, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-7", "plugin")
    err = publish_error(driver, publish_request(target, {"reference": "Not A//Reference"}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not A//Reference" in err.details()


@pytest.mark.parametrize("mode", ["bind"], indirect=True)
def test_missing_tag_is_not_found(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-8", "plugin")
    missing = plugin.reference.replace(":v0.6.0", ":v9.9.9")
    err = publish_error(driver, publish_request(target, {"reference": missing}))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "v9.9.9" in err.details()
    assert kernel.find_mount(str(target)) is None


@pytest.mark.parametrize("mode", ["bind"], indirect=True)
def test_pull_policy_never_when_absent_is_failed_precondition(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-9", "plugin")
    err = publish_error(driver, publish_request(target, {"reference": plugin.reference, "pullPolicy": "Never"}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert plugin.reference in err.details()


def test_pull_policy_never_uses_content_already_on_the_node(driver: Driver, plugin, kubelet_root: Path) -> None:
    first = publish_request(target_for(kubelet_root, "pod-10", "plugin"), {"reference": plugin.reference})
    driver.publish(first)
    second = publish_request(
        target_for(kubelet_root, "pod-11", "plugin"), {"reference": plugin.reference, "pullPolicy": "Never"}
    )
    driver.publish(second)
    assert walk(Path(second.target_path)) == expected_walk(PLUGIN_TREE)
    for request in (first, second):
        driver.unpublish(unpublish_request(request))


def test_every_view_presents_identical_trees(registry: str, plugin, tmp_path: Path) -> None:
    seen = {}
    for mode in MODES:
        root = tmp_path / mode
        root.mkdir()
        with run_driver(root, registry, mode) as d:
            target = target_for(root / "kubelet", "pod", "plugin")
            request = publish_request(target, {"reference": plugin.reference})
            d.publish(request)
            seen[mode] = walk(target)
            d.unpublish(unpublish_request(request))
    assert seen["bind"] == seen["fuse"] == seen["erofs"]


def test_concurrent_publishes_of_one_new_reference_fetch_each_blob_once(
    driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    from registry_server import blob_fetches

    pushed = push_klaus(registry, "klaus-plugins/concurrent:v1", PLUGIN_TREE, tmp_path / "push")
    requests = [
        publish_request(target_for(kubelet_root, f"pod-c{i}", "plugin"), {"reference": pushed.reference})
        for i in range(20)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(driver.publish, requests))
    for request in requests:
        assert walk(Path(request.target_path)) == expected_walk(PLUGIN_TREE)
    fetches = blob_fetches(registry, "klaus-plugins/concurrent")
    assert fetches and all(count == 1 for count in fetches.values()), fetches
    for request in requests:
        driver.unpublish(unpublish_request(request))


@pytest.fixture
def stalled_registry():
    """A registry address that accepts connections and never answers."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield "127.0.0.1:%d" % listener.getsockname()[1]
    listener.close()


def test_second_call_on_a_volume_in_flight_is_aborted(
    registry: str, stalled_registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    extra = ["--insecure-registry", stalled_registry, "--registry-timeout", "5"]
    with run_driver(tmp_path, registry, "bind", extra) as d:
        target = target_for(kubelet_root, "pod-slow", "plugin")
        request = publish_request(target, {"reference": f"{stalled_registry}/slow/plugin:v1"})
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(d.publish, request)
            time.sleep(1)  # the first call now waits on the registry for 5 s
            assert not first.done()
            err = publish_error(d, request)
            assert err.code() == grpc.StatusCode.ABORTED
            assert request.volume_id in err.details()
            with pytest.raises(grpc.RpcError) as excinfo:
                first.result()
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stalled_registry in excinfo.value.details()
        assert not target.exists()


@pytest.mark.parametrize("mode", ["bind"], indirect=True)
def test_secrets_never_reach_the_log(driver: Driver, plugin, kubelet_root: Path) -> None:
    target = target_for(kubelet_root, "pod-secret", "plugin")
    secret = "s3cret-value-that-must-not-leak"
    request = publish_request(
        target, {"reference": plugin.reference}, secrets={"username": "robot", "password": secret}
    )
    driver.publish(request)
    driver.unpublish(unpublish_request(request))
    log = driver.log.read_text()
    assert "NodePublishVolume" in log
    assert secret not in log


def test_a_stalled_registry_does_not_hold_up_other_volumes(
    registry: str, stalled_registry: str, plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    extra = ["--insecure-registry", stalled_registry, "--registry-timeout", "5"]
    with run_driver(tmp_path, registry, "bind", extra) as d:
        stuck = publish_request(target_for(kubelet_root, "pod-stuck", "plugin"), {"reference": f"{stalled_registry}/x:v1"})
        good = publish_request(target_for(kubelet_root, "pod-good", "plugin"), {"reference": plugin.reference})
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(d.publish, stuck)
            time.sleep(0.5)
            start = time.monotonic()
            d.publish(good)
            assert time.monotonic() - start < 4
            assert not waiting.done()
            with pytest.raises(grpc.RpcError) as excinfo:
                waiting.result()
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        assert walk(Path(good.target_path)) == expected_walk(PLUGIN_TREE)

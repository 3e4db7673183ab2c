"""Pull policies with KEP-4639 semantics, against a real registry whose tags move."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest
import requests

import fixtures_tools as ft
from artifacts import PERSONALITY_TREE, PLUGIN_TREE, push_klaus
from csi_driver.content.store import Store
from csi_driver.layout.tree import LAYOUT_VERSION, ROOT, Entry, Kind, blob_relpath, decoded_relpath
from csi_driver.views import bind
from driver import Driver, run_driver, walk
from kubelet import publish_request, target_for, unpublish_request
from registry_server import access_log, blob_fetches, run_registry
from test_publish import expected_walk


@pytest.fixture
def driver(tmp_path: Path, registry: str):
    with run_driver(tmp_path, registry, "bind") as d:
        yield d


def publish(driver: Driver, kubelet_root: Path, pod: str, attributes: dict[str, str]) -> Path:
    target = target_for(kubelet_root, pod, "plugin")
    driver.publish(publish_request(target, attributes))
    return target


def manifest_requests(registry: str, repository: str, tag: str) -> int:
    return sum(1 for line in access_log(registry) if f"/v2/{repository}/manifests/{tag} " in line)


def test_if_not_present_keeps_the_node_resolution_when_the_tag_moves(
    driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    first = push_klaus(registry, "policies/moving:v1", PLUGIN_TREE, tmp_path / "a")
    before = publish(driver, kubelet_root, "pod-1", {"reference": first.reference})
    push_klaus(registry, "policies/moving:v1", PERSONALITY_TREE, tmp_path / "b", kind="personality")
    asked = manifest_requests(registry, "policies/moving", "v1")
    after = publish(driver, kubelet_root, "pod-2", {"reference": first.reference, "pullPolicy": "IfNotPresent"})
    assert walk(before) == walk(after) == expected_walk(PLUGIN_TREE)
    assert manifest_requests(registry, "policies/moving", "v1") == asked


def test_always_follows_a_moved_tag_and_reuses_stored_blobs(
    driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    push_klaus(registry, "policies/always:v1", PLUGIN_TREE, tmp_path / "a")
    reference = f"{registry}/policies/always:v1"
    publish(driver, kubelet_root, "pod-1", {"reference": reference, "pullPolicy": "Always"})
    again = publish(driver, kubelet_root, "pod-2", {"reference": reference, "pullPolicy": "Always"})
    assert walk(again) == expected_walk(PLUGIN_TREE)
    assert all(count == 1 for count in blob_fetches(registry, "policies/always").values())
    push_klaus(registry, "policies/always:v1", PERSONALITY_TREE, tmp_path / "b", kind="personality")
    moved = publish(driver, kubelet_root, "pod-3", {"reference": reference, "pullPolicy": "Always"})
    assert walk(moved) == expected_walk(PERSONALITY_TREE)
    assert all(count == 1 for count in blob_fetches(registry, "policies/always").values())


def test_a_first_pull_by_tag_gets_the_manifest_in_one_request_and_later_ones_ask_with_head(
    driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    push_klaus(registry, "policies/once:v1", PLUGIN_TREE, tmp_path / "a")
    start = len(access_log(registry))
    publish(driver, kubelet_root, "pod-1", {"reference": f"{registry}/policies/once:v1", "pullPolicy": "Always"})
    first = [line.split(" ")[0] + " " + line.split("/")[4] for line in access_log(registry)[start:]]
    assert first == ["GET manifests", "GET blobs"], "one round trip for the manifest, none for it by digest"
    start = len(access_log(registry))
    publish(driver, kubelet_root, "pod-2", {"reference": f"{registry}/policies/once:v1", "pullPolicy": "Always"})
    assert [line.split(" ")[0] for line in access_log(registry)[start:]] == ["HEAD"]


def test_latest_defaults_to_always(driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path) -> None:
    push_klaus(registry, "policies/latest:latest", PLUGIN_TREE, tmp_path / "a")
    reference = f"{registry}/policies/latest"
    publish(driver, kubelet_root, "pod-1", {"reference": reference})
    push_klaus(registry, "policies/latest:latest", PERSONALITY_TREE, tmp_path / "b", kind="personality")
    assert walk(publish(driver, kubelet_root, "pod-2", {"reference": reference})) == expected_walk(PERSONALITY_TREE)


def test_digest_reference_needs_no_registry_once_on_the_node(tmp_path: Path, kubelet_root: Path) -> None:
    with run_registry(tmp_path / "registry") as own:
        pushed = push_klaus(own, "policies/pinned:v1", PLUGIN_TREE, tmp_path / "a")
        pinned = f"{own}/policies/pinned@{pushed.digest}"
        with run_driver(tmp_path / "driver", own, "bind") as driver:
            first = publish(driver, kubelet_root, "pod-1", {"reference": pinned})
    # The registry is gone now; a restarted driver on the same state dir still publishes it.
    with run_driver(tmp_path / "driver", own, "bind") as driver:
        again = publish(driver, kubelet_root, "pod-2", {"reference": pinned})
        assert walk(again) == expected_walk(PLUGIN_TREE)
        for target in (first, again):
            driver.unpublish(unpublish_request(publish_request(target, {})))


def test_never_refuses_what_the_node_does_not_have(driver: Driver, registry: str, tmp_path: Path, kubelet_root: Path) -> None:
    pushed = push_klaus(registry, "policies/never:v1", PLUGIN_TREE, tmp_path / "a")
    with pytest.raises(grpc.RpcError) as excinfo:
        publish(driver, kubelet_root, "pod-1", {"reference": pushed.reference, "pullPolicy": "Never"})
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert blob_fetches(registry, "policies/never") == {}


@pytest.mark.parametrize("mode", ["bind", "fuse"])
def test_a_tree_committed_by_older_layout_rules_is_rebuilt_from_stored_layers_for_if_not_present_and_never(
    tmp_path: Path, kubelet_root: Path, mode: str
) -> None:
    """A node upgraded from a release that placed a ToolHive plugin's titled layer as the file
    ``plugin.tar.gz`` (and so stored its blob and never inflated it) shows the plugin directory at
    the next publish, with the registry gone: the tree is rebuilt from the stored blobs. The old
    release's extraction, which a running volume may still show, is left as it is, and so is the
    blob its tree reads. (Today's pull keeps that layer as its tar alone, so the old release's
    store is made here by storing the blob as it stored it, from the registry.)"""
    with run_registry(tmp_path / "registry") as own:
        plugin = ft.build_toolhive(own)
        with run_driver(tmp_path / "driver", own, "bind") as driver:
            driver.unpublish(unpublish_request(publish_request(publish(driver, kubelet_root, "pod-0", {"reference": plugin.reference}), {})))
        state = tmp_path / "driver" / "state"
        store = Store(state)
        [digest] = store.committed_digests()
        [layer] = {entry.source for entry in store.load_tree(digest) if entry.kind is Kind.FILE}
        layer_digest = "sha256:" + Path(layer).name.removesuffix(".tar")
        repository = plugin.reference.partition("/")[2].rpartition(":")[0]
        served = requests.get(f"http://{own}/v2/{repository}/blobs/{layer_digest}", timeout=30).content
        store.put_blob(layer_digest, [served], expected_size=len(served))
    old_entries = [ROOT, Entry("plugin.tar.gz", Kind.FILE, 0o644, size=len(served), source=blob_relpath(layer_digest))]
    store.commit_tree(digest, old_entries, layout=1)
    (state / decoded_relpath(layer_digest)).unlink()
    shutil.rmtree(state / "trees")
    old_extraction = bind.materialize(state, digest, old_entries, layout=1)
    with run_driver(tmp_path / "driver", own, mode) as driver:  # the registry is gone
        for pod, policy in (("pod-1", "IfNotPresent"), ("pod-2", "Never")):
            target = publish(driver, kubelet_root, pod, {"reference": plugin.reference, "pullPolicy": policy})
            assert walk(target) == plugin.expected, policy
            driver.unpublish(unpublish_request(publish_request(target, {})))
    assert Store(state).layout(digest) == LAYOUT_VERSION
    assert os.listdir(old_extraction) == ["plugin.tar.gz"]
    assert (state / blob_relpath(layer_digest)).read_bytes() == served


def test_a_rebuild_that_needs_a_blob_kept_only_as_its_tar_pulls_it_or_refuses_under_never(
    registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    """The store keeps an image's gzip layer as its inflated tar alone. When a tree recorded under
    older layout rules is rebuilt and its current rules show that very blob as a file (another
    artifact names the digest as an ORAS file), the node cannot make the blob from its tar: the
    rebuild gives way to a pull, which IfNotPresent makes (fetching the blob) and Never refuses."""
    image, as_file, blob = ft.push_one_blob_twice(registry, "policies/shared", {"etc/shared": (b"once\n", 0o644)})
    with run_driver(tmp_path, registry, "bind") as driver:
        target = publish(driver, kubelet_root, "pod-0", {"reference": image.reference})
        driver.unpublish(unpublish_request(publish_request(target, {})))
        store = Store(driver.state_dir)
        assert not store.has_blob(ft.sha256(blob)) and store.has_blob(ft.sha256(blob), decoded=True)
        # An older release committed the file artifact's tree, placing the layer as rule 2 would.
        manifest = requests.get(f"http://{registry}/v2/policies/shared/manifests/file", timeout=30,
                                headers={"Accept": ft.OCI_MANIFEST}).content  # fmt: skip
        store.put_bytes(as_file.digest, manifest)
        store.commit_tree(as_file.digest, store.load_tree(image.digest), blobs=[as_file.digest, ft.sha256(blob)], layout=1)
        store.record_resolution(as_file.reference, ft.node_platform(), as_file.digest)
        with pytest.raises(grpc.RpcError) as refused:
            publish(driver, kubelet_root, "pod-1", {"reference": as_file.reference, "pullPolicy": "Never"})
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert blob_fetches(registry, "policies/shared")[ft.sha256(blob)] == 1
        for pod, policy in (("pod-2", "IfNotPresent"), ("pod-3", "Never")):
            target = publish(driver, kubelet_root, pod, {"reference": as_file.reference, "pullPolicy": policy})
            assert walk(target) == as_file.expected, policy
            driver.unpublish(unpublish_request(publish_request(target, {})))
        assert blob_fetches(registry, "policies/shared")[ft.sha256(blob)] == 2
        assert store.layout(as_file.digest) == LAYOUT_VERSION and store.has_blob(ft.sha256(blob))

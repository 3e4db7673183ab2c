"""Bad requests (issue 7): malformed references, attributes, targets and capabilities, sent as
gRPC calls to the real ``serve``.

Each must be refused with INVALID_ARGUMENT (NOT_FOUND for a target whose parent is missing)
naming what was wrong, before anything is pulled, created or mounted (``hostile.Watch``; a
relative target would land in the driver's working dir, which the watch searches), and the
driver must still publish a good plugin afterwards. The pod author controls the reference,
the attributes and the Secret; the rest is the kubelet's, checked all the same.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from artifacts import PLUGIN_TREE, push_klaus
from csi_driver._pb import csi_pb2
from driver import Driver, run_driver
from hostile import MARKER, Canary, Watch, assert_still_serves, expect
from kubelet import publish_request, target_for, unpublish_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
HEX = "0123456789abcdef" * 4

Request = csi_pb2.NodePublishVolumeRequest


@dataclass(frozen=True)
class Bad:
    """A publish request made from a good one by ``spoil(request, good_reference, canary)``."""

    name: str
    spoil: Callable[[Request, str, Canary], None]
    says: tuple[str, ...]
    code: grpc.StatusCode = INVALID


def attribute(key: str, value: str) -> Callable[[Request, str, Canary], None]:
    def spoil(request: Request, good: str, canary: Canary) -> None:
        request.volume_context[key] = value

    return spoil


def reference(text: str) -> Callable[[Request, str, Canary], None]:
    return attribute("reference", text)


def target(make: Callable[[Canary], str]) -> Callable[[Request, str, Canary], None]:
    def spoil(request: Request, good: str, canary: Canary) -> None:
        request.target_path = make(canary)

    return spoil


def without(field: str) -> Callable[[Request, str, Canary], None]:
    def spoil(request: Request, good: str, canary: Canary) -> None:
        if field == "reference":
            del request.volume_context["reference"]
        else:
            request.ClearField(field)

    return spoil


def block(request: Request, good: str, canary: Canary) -> None:
    request.volume_capability.block.SetInParent()


def secret(key: str, value: str) -> Callable[[Request, str, Canary], None]:
    def spoil(request: Request, good: str, canary: Canary) -> None:
        request.secrets[key] = value

    return spoil


BADS = [
    Bad("reference_missing", without("reference"), ("'reference' is required",)),
    Bad("reference_empty", reference(""), ("'reference' is required",)),
    Bad("reference_only_blanks", reference("   "), ("'reference' is required",)),
    Bad("reference_with_an_upper_case_repository", reference("registry.example/Klaus/Plugin:v1"), ("must be lower case",)),
    Bad("reference_with_a_tag_starting_with_a_dash", reference("registry.example/a:-v1"), ("tag '-v1'",)),
    Bad("reference_with_an_md5_digest", reference(f"registry.example/a@md5:{HEX[:32]}"), ("'md5' is not supported",)),
    Bad("reference_with_a_short_digest", reference(f"registry.example/a@sha256:{HEX[:10]}"), ("64 lower-case hex",)),
    Bad("reference_with_dotdot_in_the_repository", reference(f"registry.example/../../{MARKER}:v1"), ("repository",)),
    Bad("reference_with_a_newline", reference("registry.example/a:v1\nregistry.evil/b:v1"), ("is not valid",)),
    Bad("reference_that_is_a_bare_image_id", reference(HEX), ("image id",)),
    Bad("reference_longer_than_255", reference("registry.example/" + "a" * 250), ("longer than 255",)),
    Bad("reference_with_a_url_scheme", reference("https://registry.example/a:v1"), ("invalid image reference",)),
    Bad("unknown_attribute_is_named", attribute("pullpolicy", "Never"), ("pullpolicy",)),
    Bad("pull_policy_not_one_of_the_three", attribute("pullPolicy", "Sometimes"), ("'Sometimes'", "Always")),
    Bad("platform_without_an_architecture", attribute("platform", "linux"), ("platform 'linux'",)),
    Bad("platform_with_a_path", attribute("platform", "linux/../../amd64"), ("platform",)),
    Bad("target_relative", target(lambda c: f"{MARKER}-relative/mount"), (f"{MARKER}-relative/mount", "absolute")),
    Bad("target_with_dotdot", target(lambda c: f"{c.dir}/../{c.dir.name}/{MARKER}-dotdot"), ("'..'",)),
    Bad("target_with_a_nul_byte", target(lambda c: f"{c.dir}/{MARKER}\0x"), ("absolute path",)),
    Bad("target_missing", without("target_path"), ("target_path is missing",)),
    Bad("target_whose_parent_does_not_exist", target(lambda c: f"{c.dir}/{MARKER}-no-parent/mount"),
        ("does not exist",), grpc.StatusCode.NOT_FOUND),
    Bad("volume_id_missing", without("volume_id"), ("volume_id is missing",)),
    Bad("volume_capability_missing", without("volume_capability"), ("volume_capability is missing",)),
    Bad("block_capability", block, ("not block",)),
    Bad("pull_secret_that_is_not_json", secret(".dockerconfigjson", "{not json"), (".dockerconfigjson", "not valid JSON")),
    Bad("pull_secret_nested_too_deeply", secret(".dockerconfigjson", "[" * 100_000 + "]" * 100_000), (".dockerconfigjson",)),
    Bad("pull_secret_with_auths_of_the_wrong_shape", secret(".dockerconfigjson", json.dumps({"auths": ["x"]})),
        (".dockerconfigjson",)),
]


@pytest.fixture(scope="module")
def good(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_klaus(registry, "bad-requests/good:v1", PLUGIN_TREE, tmp_path_factory.mktemp("good")).reference


@pytest.fixture(scope="module")
def driver(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    with run_driver(tmp_path_factory.mktemp("bad-requests"), registry, "bind") as d:
        yield d


def test_the_bad_requests_are_named_once() -> None:
    names = [bad.name for bad in BADS]
    assert len(names) == len(set(names)) >= 20


@pytest.mark.parametrize("bad", BADS, ids=[bad.name for bad in BADS])
def test_bad_request(bad: Bad, driver: Driver, good: str, canary: Canary, kubelet_root: Path) -> None:
    request = publish_request(target_for(kubelet_root, "pod-bad", "volume"), {"reference": good})
    bad.spoil(request, good, canary)
    watch = Watch(canary, driver.state_dir, kubelet_root)
    before = watch.snapshot()
    expect(driver, request, bad.code, bad.says)
    watch.assert_unchanged(before)
    assert_still_serves(driver, good, kubelet_root)


@pytest.mark.parametrize("path", [f"{MARKER}/mount", "/var/lib/kubelet/../../../etc", "/a/\0/b", ""])
def test_unpublish_of_a_bad_target_is_refused_and_touches_nothing(path: str, driver: Driver, canary: Canary,
                                                                  kubelet_root: Path) -> None:  # fmt: skip
    watch = Watch(canary, driver.state_dir, kubelet_root)
    before = watch.snapshot()
    with pytest.raises(grpc.RpcError) as caught:
        driver.unpublish(csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-" + HEX, target_path=path))
    assert caught.value.code() == INVALID
    assert "target_path" in (caught.value.details() or "")
    watch.assert_unchanged(before)


def sanity_volume_id() -> str:
    """A volume id as csi-sanity's default ``IDGenerator.GenerateUniqueValidVolumeID`` makes them."""
    return f"fake-vol-id-{str(uuid.uuid4())[:10]}"


STATS_SPECS = [  # csi-sanity's NodeGetVolumeStats specs (pkg/sanity/node.go): the request each sends, its code
    ("should_fail_when_no_volume_id_is_provided", lambda: {"volume_path": "some/path"}, INVALID, "volume_id is missing"),
    ("should_fail_when_no_volume_path_is_provided", lambda: {"volume_id": sanity_volume_id()}, INVALID,
     "volume_path is missing"),
    ("should_fail_when_volume_is_not_found", lambda: {"volume_id": sanity_volume_id(), "volume_path": "some/path"},
     NOT_FOUND, "not published on this node"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "fields", "code", "says"), STATS_SPECS, ids=[s[0] for s in STATS_SPECS])
def test_volume_stats_answers_csi_sanitys_requests(spec: str, fields: Callable[[], dict[str, str]],
                                                   code: grpc.StatusCode, says: str, driver: Driver) -> None:  # fmt: skip
    request = csi_pb2.NodeGetVolumeStatsRequest(**fields())
    with pytest.raises(grpc.RpcError) as caught:
        driver.node.NodeGetVolumeStats(request)
    details = caught.value.details() or ""
    assert caught.value.code() == code, f"{caught.value.code()}: {details}"
    assert says in details and "target_path" not in details, details
    if code == NOT_FOUND:
        assert request.volume_id in details


def test_volume_stats_of_a_published_volume_at_another_path_is_not_found(driver: Driver, good: str,
                                                                         kubelet_root: Path) -> None:  # fmt: skip
    """csi-sanity's "should fail when volume does not exist on the specified path"; the right path answers."""
    request = publish_request(target_for(kubelet_root, "pod-stats", "volume"), {"reference": good})
    driver.publish(request)
    try:
        for path in ("some/path", f"{request.target_path}-other", "/"):
            with pytest.raises(grpc.RpcError) as caught:
                driver.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=request.volume_id,
                                                                                 volume_path=path))  # fmt: skip
            assert caught.value.code() == NOT_FOUND, caught.value.details()
            assert request.target_path in (caught.value.details() or "")
        stats = driver.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=request.volume_id, volume_path=request.target_path)
        )
        assert stats.volume_condition.abnormal is False
    finally:
        driver.unpublish(unpublish_request(request))

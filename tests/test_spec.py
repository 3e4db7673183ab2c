"""Request validation: what a pod author or kubelet can get wrong, refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_driver import errors
from csi_driver._pb import csi_pb2
from csi_driver.csi.spec import from_publish_request
from kubelet import publish_request

TARGET = Path("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/p/mount")


def spec_of(request):
    return from_publish_request(request)


def test_kubelet_request_gives_spec_with_pod_info() -> None:
    spec = spec_of(publish_request(TARGET, {"reference": "r.example/a/b:v1"}, pod_name="p", namespace="ns"))
    assert str(spec.reference) == "r.example/a/b:v1"
    assert spec.pull_policy == "IfNotPresent"
    assert (spec.pod.namespace, spec.pod.name) == ("ns", "p")


@pytest.mark.parametrize(
    ("reference", "policy"),
    [("r.example/a", "Always"), ("r.example/a:latest", "Always"), ("r.example/a:v1", "IfNotPresent"),
     ("r.example/a@sha256:" + "a" * 64, "IfNotPresent")],
)  # fmt: skip
def test_pull_policy_defaults_as_kep_4639(reference: str, policy: str) -> None:
    assert spec_of(publish_request(TARGET, {"reference": reference})).pull_policy == policy


def test_unknown_attribute_is_named() -> None:
    with pytest.raises(errors.InvalidArgument, match="platfrom"):
        spec_of(publish_request(TARGET, {"reference": "r.example/a:v1", "platfrom": "linux/arm64"}))


def test_missing_reference_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="'reference' is required"):
        spec_of(publish_request(TARGET, {}))


def test_bad_pull_policy_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="sometimes"):
        spec_of(publish_request(TARGET, {"reference": "r.example/a:v1", "pullPolicy": "sometimes"}))


@pytest.mark.parametrize("target", ["relative/mount", "/var/lib/../../etc/mount", ""])
def test_bad_target_path_is_invalid(target: str) -> None:
    request = publish_request(TARGET, {"reference": "r.example/a:v1"})
    request.target_path = target
    with pytest.raises(errors.InvalidArgument, match="target_path"):
        spec_of(request)


def test_missing_volume_capability_is_invalid() -> None:
    request = publish_request(TARGET, {"reference": "r.example/a:v1"})
    request.ClearField("volume_capability")
    with pytest.raises(errors.InvalidArgument, match="volume_capability"):
        spec_of(request)


def test_block_capability_is_invalid() -> None:
    request = publish_request(TARGET, {"reference": "r.example/a:v1"})
    request.volume_capability.block.CopyFrom(csi_pb2.VolumeCapability.BlockVolume())
    with pytest.raises(errors.InvalidArgument, match="block"):
        spec_of(request)


def test_any_access_mode_is_accepted() -> None:
    mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
    assert spec_of(publish_request(TARGET, {"reference": "r.example/a:v1"}, access_mode=mode))


def test_platform_attribute_overrides_the_node() -> None:
    spec = spec_of(publish_request(TARGET, {"reference": "r.example/a:v1", "platform": "linux/arm/v7"}))
    assert spec.platform == "linux/arm/v7"


@pytest.mark.parametrize("platform", ["linux", "linux/", "linux/arm/v7/x", "../amd64"])
def test_malformed_platform_is_invalid(platform: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="os/architecture"):
        spec_of(publish_request(TARGET, {"reference": "r.example/a:v1", "platform": platform}))

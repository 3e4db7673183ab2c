"""Manifests and indexes: OCI and Docker alike, recognised by content, platform choice."""

from __future__ import annotations

import json

import pytest

from csi_driver import errors
from csi_driver.layout import manifest

D = "sha256:" + "a" * 64


def doc(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_oci_manifest_without_media_type_is_recognised_by_layers() -> None:
    parsed = manifest.parse(doc(config={"digest": D, "size": 2}, layers=[{"digest": D, "size": 3, "mediaType": "x"}]), "", "r")
    assert isinstance(parsed, manifest.ImageManifest)
    assert parsed.layers[0].media_type == "x"


def test_docker_manifest_list_reads_as_index_with_platforms() -> None:
    data = doc(
        mediaType="application/vnd.docker.distribution.manifest.list.v2+json",
        manifests=[{"digest": D, "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}],
    )
    parsed = manifest.parse(data, "", "r")
    assert isinstance(parsed, manifest.Index)
    assert parsed.manifests[0].platform == "linux/arm/v7"


def test_variant_is_compared_only_when_wanted() -> None:
    assert manifest.platform_matches("linux/arm/v7", "linux/arm")
    assert not manifest.platform_matches("linux/arm/v6", "linux/arm/v7")
    assert not manifest.platform_matches("linux/arm64", "linux/amd64")


def test_missing_platform_is_not_found_listing_what_exists() -> None:
    index = manifest.Index([manifest.Descriptor("m", D, 1, platform="linux/arm64"), manifest.Descriptor("m", D, 1, platform="linux/s390x")])
    with pytest.raises(errors.NotFound, match="linux/arm64, linux/s390x"):
        manifest.select_platform(index, "linux/amd64", "r")


def test_only_manifest_without_platform_is_chosen() -> None:
    index = manifest.Index([manifest.Descriptor("m", D, 1)])
    assert manifest.select_platform(index, "linux/amd64", "r").digest == D


@pytest.mark.parametrize("data", [b"not json", b"[1,2]", doc(schemaVersion=1, fsLayers=[])])
def test_garbage_manifest_is_invalid_argument(data: bytes) -> None:
    with pytest.raises(errors.InvalidArgument):
        manifest.parse(data, "", "r")

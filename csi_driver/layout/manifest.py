"""Manifests and indexes: parse the JSON, choose the node's platform.

OCI and Docker schema 2 documents are read alike: an index (or Docker manifest
list) names per-platform manifests; an image manifest names a config and layers.
A document without ``mediaType`` is recognised by its content, as docs/layout-rules.md says
(``manifests`` → index, ``layers`` → manifest), because ORAS and older tools omit it.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field

from csi_driver import errors
from csi_driver.reference import valid_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPES = {
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: str = ""  # "os/arch[/variant]" for index entries that carry one


@dataclass(frozen=True)
class ImageManifest:
    config: Descriptor
    layers: list[Descriptor]


@dataclass(frozen=True)
class Index:
    manifests: list[Descriptor]


def node_platform() -> str:
    """The node's own platform as Go names it (GOOS/GOARCH[/variant])."""
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm/v7",
        "armv6l": "arm/v6",
        "i686": "386",
        "i386": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)
    return f"linux/{arch}"


def _descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str) or not isinstance(raw.get("size"), int):
        raise errors.InvalidArgument(f"{where}: malformed descriptor (needs digest and size)")
    if not valid_digest(raw["digest"]):  # it becomes a URL and a path in the store
        raise errors.InvalidArgument(
            f"{where}: descriptor digest {raw['digest']!r} is not sha256:<64 lower-case hex digits>"
        )
    if isinstance(raw["size"], bool) or raw["size"] < 0:
        raise errors.InvalidArgument(f"{where}: descriptor {raw['digest']} has size {raw['size']!r}, not a byte count")
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise errors.InvalidArgument(f"{where}: annotations of {raw['digest']} are not a string map")
    plat = raw.get("platform")
    platform = ""
    if isinstance(plat, dict) and plat.get("os") and plat.get("architecture"):
        platform = f"{plat['os']}/{plat['architecture']}" + (f"/{plat['variant']}" if plat.get("variant") else "")
    return Descriptor(
        media_type=str(raw.get("mediaType", "")),
        digest=raw["digest"],
        size=raw["size"],
        annotations={str(k): str(v) for k, v in annotations.items()},
        platform=platform,
    )


def parse(data: bytes, media_type: str, where: str) -> ImageManifest | Index:
    """Parse a manifest or index; ``where`` (reference@digest) names it in errors."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument(f"{where}: the registry returned a manifest that is not JSON") from None
    except RecursionError:
        raise errors.InvalidArgument(f"{where}: the manifest's JSON is nested too deeply to read") from None
    if not isinstance(doc, dict):
        raise errors.InvalidArgument(f"{where}: the manifest is not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise errors.InvalidArgument(f"{where}: the manifest's mediaType is not a string")
    # The digest covers the bytes, not the Content-Type header: a document that names no type
    # is read by its shape first, so the same bytes mean the same thing fetched or cached.
    if not declared and ("manifests" in doc) != ("layers" in doc):
        declared = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    kind = declared or media_type
    if kind in INDEX_TYPES or (kind not in MANIFEST_TYPES and "manifests" in doc):
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise errors.InvalidArgument(f"{where}: the index has no manifests list")
        return Index([_descriptor(m, where) for m in entries])
    if kind in MANIFEST_TYPES or "layers" in doc:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise errors.InvalidArgument(f"{where}: the manifest has no layers list")
        return ImageManifest(_descriptor(doc.get("config"), where), [_descriptor(x, where) for x in layers])
    raise errors.InvalidArgument(
        f"{where}: unsupported manifest type {kind or '(none)'}; expected an OCI or Docker schema 2 manifest or index"
    )


def platform_matches(have: str, want: str) -> bool:
    """Compare os/arch, and the variant only when ``want`` names one."""
    have_parts, want_parts = have.split("/"), want.split("/")
    return have_parts[:2] == want_parts[:2] and (len(want_parts) < 3 or have_parts[2:3] == want_parts[2:3])


def select_platform(index: Index, want: str, where: str) -> Descriptor:
    """The index entry for ``want``; else the only entry if it has no platform."""
    for entry in index.manifests:
        if entry.platform and platform_matches(entry.platform, want):
            return entry
    if len(index.manifests) == 1 and not index.manifests[0].platform:
        return index.manifests[0]
    have = ", ".join(sorted({m.platform or "(none)" for m in index.manifests})) or "none"
    raise errors.NotFound(
        f"{where}: no manifest for platform {want} in the index (it has: {have}); "
        "set the platform volume attribute or --platform to one of those"
    )

"""Shared machinery of the hostile-input corpus (issue 7): archives built byte by byte, pushed
as they are, and a watch that proves a refused (or neutralised) artifact changed nothing.

Every corpus case asserts four things, and this module holds the means:

* the gRPC code, with a message that names what was wrong (``expect``);
* nothing created outside the state dir and the target (``Watch``): hostile entries aim at a
  canary directory under ``/tmp`` with absolute paths, ``..`` and symlinks, and every name
  they would create carries the marker ``PWNED``; the watch also compares the top-level names
  of ``/``, the mtime of ``/etc``, the canary's listing and its victim file, and finds no
  ``PWNED`` name in ``/``, ``/tmp``, ``/etc``, the working dir, the kubelet root or the state
  dir; the state dir's ``tmp/`` is empty again;
* no mount left behind (the mount table is compared whole);
* the driver still publishes a good volume afterwards (``assert_still_serves``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import requests
import zstandard

from artifacts import PLUGIN_TREE
from csi_driver.mounts import kernel
from driver import Driver, walk
from kubelet import publish_request, target_for, unpublish_request
from test_publish import expected_walk

MARKER = "PWNED"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
ORAS_CONFIG = "application/vnd.oci.empty.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TZST = "application/vnd.oci.image.layer.v1.tar+zstd"
KLAUS = "application/vnd.giantswarm.klaus-plugin.content.v1.tar+gzip"
TITLE = "org.opencontainers.image.title"
UNPACK = "io.deis.oras.content.unpack"
VICTIM = b"the canary's victim file: a hostile artifact must never change or remove it\n"

Member = tuple[tarfile.TarInfo, bytes]


# -- archives ------------------------------------------------------------------------------


def f(name: str, data: bytes = b"", mode: int = 0o644, **meta: object) -> Member:
    """A regular file; ``meta`` sets TarInfo attributes (uid, gid, mtime, pax_headers, ...)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    for key, value in meta.items():
        setattr(info, key, value)
    return info, data


def d(name: str, mode: int = 0o755, **meta: object) -> Member:
    info, _ = f(name, mode=mode, **meta)
    info.type = tarfile.DIRTYPE
    return info, b""


def sym(name: str, target: str) -> Member:
    info, _ = f(name, mode=0o777)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, b""


def hard(name: str, target: str) -> Member:
    info, _ = f(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, b""


def special(name: str, kind: bytes, major: int = 0, minor: int = 0) -> Member:
    info, _ = f(name, mode=0o666)
    info.type, info.devmajor, info.devminor = kind, major, minor
    return info, b""


def pax(name: str, data: bytes = b"", **headers: str) -> Member:
    """A file whose PAX extended header says ``headers`` (path, size, uid, mtime, ...)."""
    return f(name, data, pax_headers=dict(headers))


def tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One layer as pushed: its bytes, media type and annotations."""

    data: bytes
    media_type: str = TGZ
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256(self.data)


def layer(
    *members: Member, media_type: str = TGZ, fmt: int = tarfile.PAX_FORMAT, annotations: dict[str, str] | None = None
) -> Blob:
    """A tar-family layer of ``members``, compressed as its media type says."""
    raw = tar(*members, fmt=fmt)
    encode = gz if media_type.endswith("gzip") else zst if media_type.endswith("zstd") else bytes
    return Blob(encode(raw), media_type, dict(annotations or {}))


def titled(data: bytes, title: str, media_type: str = "text/plain", **annotations: str) -> Blob:
    return Blob(data, media_type, {TITLE: title, **annotations})


def manifest_of(blobs: list[Blob], config: bytes = b"{}", config_type: str | None = None) -> bytes:
    """An OCI manifest of ``blobs``. Without ``config_type``, one with a titled layer is an ORAS
    artifact (``oras push``'s empty config), any other an image (an image config): the config
    decides whether titles count at all (rule 0)."""
    if config_type is None:
        config_type = ORAS_CONFIG if any(TITLE in b.annotations for b in blobs) else OCI_CONFIG
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": b.media_type, "digest": b.digest, "size": len(b.data),
             **({"annotations": b.annotations} if b.annotations else {})}
            for b in blobs
        ],
    }).encode()  # fmt: skip


# -- the real registry -----------------------------------------------------------------------


def push_blob(registry: str, repository: str, data: bytes) -> None:
    base = f"http://{registry}/v2/{repository}/blobs"
    started = requests.post(f"{base}/uploads/", timeout=30)
    started.raise_for_status()
    location = started.headers["Location"]
    location = location if location.startswith("http") else f"http://{registry}{location}"
    joiner = "&" if "?" in location else "?"
    done = requests.put(f"{location}{joiner}digest={sha256(data)}", data=data, timeout=60,
                        headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    done.raise_for_status()


def push_manifest(
    registry: str, repo_tag: str, blobs: list[Blob], config: bytes = b"{}", config_type: str | None = None
) -> str:
    """Push ``blobs`` (as they are) and a manifest naming them in order; return the reference."""
    repository, _, tag = repo_tag.rpartition(":")
    for data in {config, *(b.data for b in blobs)}:
        push_blob(registry, repository, data)
    response = requests.put(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        data=manifest_of(blobs, config, config_type),
        headers={"Content-Type": OCI_MANIFEST},
        timeout=30,
    )
    response.raise_for_status()
    return f"{registry}/{repo_tag}"


# -- the watch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """A directory hostile artifacts aim at, with a victim file that must survive."""

    dir: Path

    @property
    def victim(self) -> Path:
        return self.dir / "victim"

    @classmethod
    def make(cls, base: Path = Path("/tmp")) -> Canary:
        canary = cls(base / f"oci-volume-csi-canary-{uuid.uuid4().hex[:8]}")
        canary.dir.mkdir()
        canary.victim.write_bytes(VICTIM)
        return canary

    def remove(self) -> None:
        for path in sorted(self.dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        self.dir.rmdir()


def _marked(roots: Iterable[Path], deep: Iterable[Path]) -> list[str]:
    found = []
    for root in roots:
        with os.scandir(root) as listing:
            found += [entry.path for entry in listing if MARKER in entry.name]
    for root in deep:
        for dirpath, dirnames, filenames in os.walk(root):
            found += [os.path.join(dirpath, n) for n in dirnames + filenames if MARKER in n]
    return found


@dataclass
class Watch:
    """What a case must leave as it found it."""

    canary: Canary
    state: Path
    kubelet_root: Path

    def snapshot(self) -> dict[str, object]:
        canary = self.canary.dir
        return {
            "/": sorted(os.listdir("/")),
            "/etc mtime": os.stat("/etc").st_mtime_ns,
            "canary": sorted((p.name, p.lstat().st_mtime_ns, p.lstat().st_size) for p in canary.iterdir()),
            "canary mtime": canary.stat().st_mtime_ns,
            "victim": self.canary.victim.read_bytes(),
            # An erofs digest's own mount under the state dir is the view, as bind's trees/ is.
            "mounts": sorted(m.mount_point for m in kernel.mount_table() if not m.mount_point.startswith(f"{self.state}/erofs/")),
            "marked": _marked(
                [Path("/"), Path("/tmp"), Path("/etc"), Path.cwd(), self.state.parent],
                [self.kubelet_root, *(self.state / sub for sub in ("tmp", "trees", "erofs") if (self.state / sub).exists())],
            ),
        }

    def assert_unchanged(self, before: dict[str, object]) -> None:
        after = self.snapshot()
        for key in before:
            assert after[key] == before[key], f"{key} changed: {before[key]!r} -> {after[key]!r}"
        assert not after["marked"], f"hostile names appeared: {after['marked']}"
        leftovers = list((self.state / "tmp").iterdir())
        assert not leftovers, f"the state dir's tmp/ holds leftovers: {leftovers}"
        below = [m.mount_point for m in kernel.mount_table() if m.mount_point.startswith(f"{self.kubelet_root}/")]
        assert not below, f"mounts left under the kubelet root: {below}"


# -- expectations ----------------------------------------------------------------------------


def expect(driver: Driver, request, code: grpc.StatusCode | None, says: Iterable[str]) -> None:  # type: ignore[no-untyped-def]
    """Publish ``request``: refused with ``code`` and a message containing each of ``says``,
    or (``code`` None) published, in which case the caller checks the tree and unpublishes."""
    if code is None:
        driver.publish(request)
        return
    with pytest.raises(grpc.RpcError) as caught:
        driver.publish(request)
    details = caught.value.details() or ""
    assert caught.value.code() == code, f"{caught.value.code()}: {details}"
    for text in says:
        assert text in details, f"{text!r} not in {details!r}"
    assert "internal driver error" not in details
    assert not os.path.lexists(request.target_path) or not kernel.find_mount(request.target_path)


def assert_still_serves(driver: Driver, good_reference: str, kubelet_root: Path) -> None:
    """The driver is alive and publishes (and unpublishes) a good plugin exactly."""
    assert driver.process.poll() is None, driver.log.read_text()[-4000:]
    target = target_for(kubelet_root, f"pod-good-{uuid.uuid4().hex[:8]}", "plugin")
    request = publish_request(target, {"reference": good_reference})
    driver.publish(request)
    try:
        assert walk(target) == expected_walk(PLUGIN_TREE)
    finally:
        driver.unpublish(unpublish_request(request))
    assert not target.exists()


@dataclass(frozen=True)
class Case:
    """One corpus entry: the layers (built once the canary path is known), the expected code
    (None: published), what the message must name (``{l0}``, ``{l1}``… are the layer digests,
    ``{canary}`` the canary dir), for published cases a check of the mounted tree, and the
    config media type when ``manifest_of``'s choice is not the one the case needs."""

    name: str
    build: Callable[[str], list[Blob]]
    code: grpc.StatusCode | None
    says: tuple[str, ...] = ()
    check: Callable[[Path, str], None] | None = None
    config_type: str | None = None

    def words(self, blobs: list[Blob], canary: str) -> list[str]:
        digests = {f"l{i}": b.digest for i, b in enumerate(blobs)}
        return [text.format(canary=canary, **digests) for text in self.says]

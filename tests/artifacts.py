"""Sample agent artifacts, pushed to the test registry with the real ``oras`` client.

A Klaus plugin is one ``application/vnd.giantswarm.klaus-plugin.content.v1.tar+gzip``
layer (``tar czf plugin.tar.gz -C dir .``) under a Klaus config media type, as the
Klaus tooling publishes it; a personality is the same shape with its own types.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import oras.client

KLAUS_PLUGIN_CONFIG = "application/vnd.giantswarm.klaus-plugin.config.v1+json"
KLAUS_PLUGIN_CONTENT = "application/vnd.giantswarm.klaus-plugin.content.v1.tar+gzip"
KLAUS_PERSONALITY_CONFIG = "application/vnd.giantswarm.klaus-personality.config.v1+json"
KLAUS_PERSONALITY_CONTENT = "application/vnd.giantswarm.klaus-personality.content.v1.tar+gzip"

# path -> (content or None for a dir or "->target" for a symlink, mode)
Tree = dict[str, tuple[bytes | str | None, int]]

PLUGIN_TREE: Tree = {
    ".claude-plugin": (None, 0o755),
    ".claude-plugin/plugin.json": (
        json.dumps({"name": "gs-base", "version": "0.6.0", "description": "Giant Swarm base plugin"}).encode(),
        0o644,
    ),
    "skills": (None, 0o755),
    "skills/kubernetes": (None, 0o755),
    "skills/kubernetes/SKILL.md": (b"---\nname: kubernetes\ndescription: operate clusters\n---\nUse kubectl.\n", 0o644),
    "agents": (None, 0o755),
    "agents/reviewer.md": (b"# Reviewer\nReview pull requests carefully.\n", 0o644),
    "hooks": (None, 0o755),
    "hooks/pre-tool.sh": (b"#!/bin/sh\necho checking \"$1\"\n", 0o755),
    "hooks/private.env": (b"LEVEL=debug\n", 0o600),
    ".mcp.json": (json.dumps({"mcpServers": {"github": {"command": "github-mcp"}}}).encode(), 0o644),
    "skills/current": ("->kubernetes", 0o777),
    "README": ("->/usr/share/doc/gs-base/README", 0o777),
}

PERSONALITY_TREE: Tree = {
    "personality.yaml": (b"name: sre\ntone: calm\nplugins: [gs-base]\n", 0o644),
    "SOUL.md": (b"# Soul\nYou are a careful site reliability engineer.\n", 0o644),
}


@dataclass(frozen=True)
class Pushed:
    reference: str
    digest: str


def write_tree(root: Path, tree: Tree) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in sorted(tree.items()):
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, str):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(content.removeprefix("->"), path)
            continue
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        os.chmod(path, mode)


def tar_gz_of(root: Path, out: Path) -> Path:
    """What ``tar czf out -C root .`` makes: entries with a leading ``./``."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root, arcname=".")
    return out


def oras_client(registry: str, credentials: tuple[str, str] | None = None) -> oras.client.OrasClient:
    """The oras client for the test registry, with basic auth when it needs it.

    ``set_basic_auth`` rather than ``login``: login would write ~/.docker/config.json.
    """
    if credentials is None:
        return oras.client.OrasClient(hostname=registry, insecure=True)
    client = oras.client.OrasClient(hostname=registry, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(*credentials)
    return client


def push(
    registry: str,
    repo_tag: str,
    files: list[str],
    config: tuple[Path, str],
    workdir: Path,
    credentials: tuple[str, str] | None = None,
) -> Pushed:
    """Push with the oras client from ``workdir`` (it wants relative paths)."""
    client = oras_client(registry, credentials)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        response = client.push(
            target=f"{registry}/{repo_tag}", files=files, manifest_config=f"{config[0]}:{config[1]}", quiet=True
        )
    finally:
        os.chdir(cwd)
    return Pushed(reference=f"{registry}/{repo_tag}", digest=response.headers["Docker-Content-Digest"])


def push_klaus(
    registry: str,
    repo_tag: str,
    tree: Tree,
    workdir: Path,
    kind: str = "plugin",
    credentials: tuple[str, str] | None = None,
) -> Pushed:
    """Push a Klaus plugin or personality: one Klaus tar+gzip layer, a Klaus config."""
    content_type = KLAUS_PLUGIN_CONTENT if kind == "plugin" else KLAUS_PERSONALITY_CONTENT
    config_type = KLAUS_PLUGIN_CONFIG if kind == "plugin" else KLAUS_PERSONALITY_CONFIG
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "src"
    write_tree(src, tree)
    tar_gz_of(src, workdir / f"{kind}.tar.gz")
    (workdir / "config.json").write_text(json.dumps({"name": repo_tag.split(":")[0].rsplit("/", 1)[-1]}))
    files = [f"{kind}.tar.gz:{content_type}"]
    return push(registry, repo_tag, files, (Path("config.json"), config_type), workdir, credentials)


OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _diff_id(data: bytes, media_type: str) -> str:
    """The digest of a layer's uncompressed tar, as an image config's ``rootfs.diff_ids`` lists it."""
    import gzip
    import hashlib

    if media_type.endswith(("+gzip", ".gzip", ".gz")):
        data = gzip.decompress(data)
    elif media_type.endswith("+zstd"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(registry: str, repo_tag: str, layers: list[tuple[bytes, str]], workdir: Path) -> Pushed:
    """Push an image: UNTITLED layers ``(bytes, media type)`` in order, plus an OCI image config.

    ``OrasClient.push`` titles every layer, which images do not; so the blobs go up one by one
    with the real oras client's ``upload_blob`` and the manifest is built here and sent with
    ``upload_manifest``.
    """
    import hashlib

    client = oras_client(registry)
    container = client.get_container(f"{registry}/{repo_tag}")
    workdir.mkdir(parents=True, exist_ok=True)

    def upload(data: bytes, media_type: str, name: str) -> dict:
        path = workdir / name
        path.write_bytes(data)
        descriptor = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
        response = client.upload_blob(str(path), container, descriptor)
        response.raise_for_status()
        return descriptor

    descriptors = [upload(data, media_type, f"layer-{i}") for i, (data, media_type) in enumerate(layers)]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [_diff_id(data, media_type) for data, media_type in layers]},
    }
    config_descriptor = upload(json.dumps(config).encode(), OCI_IMAGE_CONFIG, "config.json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MANIFEST,
        "config": config_descriptor,
        "layers": descriptors,
    }
    response = client.upload_manifest(manifest, container)
    response.raise_for_status()
    return Pushed(reference=f"{registry}/{repo_tag}", digest=response.headers["Docker-Content-Digest"])

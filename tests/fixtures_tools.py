"""Builders for ``test_artifact_kinds.py``: every artifact kind our users publish, made by
the tools they use (issue 4, "Fixtures made by the real tools").

- the ``oras`` Python client pushes ORAS files, directories, skills and Klaus plugins;
- GNU ``tar`` packs the Klaus plugin as the ``oras`` CLI users do (``tar czf … -C dir .``);
- ``umoci`` builds container images from real directory trees (init, new, unpack, edit the
  rootfs, repack; ``insert --opaque``/``--whiteout``), and ``umoci raw unpack`` of the same
  image is the reference extraction a mounted image is compared with;
- ``skopeo copy`` pushes those images (``--format v2s2`` for Docker schema 2, ``--all`` for an
  OCI index and a Docker manifest list, ``--dest-compress-format zstd`` for zstd layers).

Only shapes no tool here produces are built by hand (ToolHive plugins and skills, Klaus media types
with and without a title, mixed layer media types, an unknown media type) and uploaded with
plain registry API calls. A missing tool raises with the reason and the fix: nothing skips.

Every ``Fixture`` carries the tree its mount must show, in the shape of ``driver.walk``,
computed from the sources (the directory that was pushed, or umoci's own extraction),
never from the driver.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import oras.client
import oras.utils
import requests
import zstandard

from csi_driver.layout.manifest import node_platform

Walk = dict[str, tuple[str, int, int, int, bytes | str]]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
UNKNOWN_CONFIG = "application/vnd.unknown.config.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
KLAUS_PLUGIN_CONFIG = "application/vnd.giantswarm.klaus-plugin.config.v1+json"
KLAUS_PLUGIN_CONTENT = "application/vnd.giantswarm.klaus-plugin.content.v1.tar+gzip"
TITLE = "org.opencontainers.image.title"
UNPACK = "io.deis.oras.content.unpack"
TOOLHIVE_PLUGIN = "dev.toolhive.plugins.v1"

# The Debian package that ships each tool (scripts/setup.sh installs them).
TOOLS = {"umoci": "umoci", "skopeo": "skopeo", "tar": "tar"}


@dataclass(frozen=True)
class Fixture:
    """One pushed artifact: its reference, the tree a mount must show, and how it was made."""

    name: str
    reference: str
    expected: Walk
    made_with: str
    digest: str = ""
    details: Mapping[str, str] = field(default_factory=dict)


# -- tools and trees -----------------------------------------------------------------------


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is missing: install Debian's {TOOLS.get(name, name)} package "
            f"(apt-get install {TOOLS.get(name, name)}; scripts/setup.sh does it); "
            "the artifact-kind fixtures are made with the real tool"
        )
    return path


def run(cmd: list[str], cwd: Path | None = None) -> str:
    require_tool(cmd[0])
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


# path -> content (bytes: a file; None: a directory; "->target": a symlink), mode, uid, gid
Spec = dict[str, tuple[bytes | str | None, int, int, int]]


def make_tree(root: Path, spec: Spec) -> Path:
    """Create ``spec`` below ``root`` on disk, owners and modes included (we run as root)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode, uid, gid) in sorted(spec.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, str):
            os.symlink(content.removeprefix("->"), path)
            os.lchown(path, uid, gid)
            continue
        else:
            path.write_bytes(content)
        os.chown(path, uid, gid)
        os.chmod(path, mode)  # after chown, which clears setuid/setgid
    return root


def reference_walk(root: Path) -> Walk:
    """What a volume of the tree at ``root`` must show, in the shape of ``driver.walk``.

    docs/layout-rules.md: modes lose setuid/setgid, device nodes and FIFOs are not shown (nor
    sockets). Hardlinks appear as files with the same bytes.
    """
    seen: Walk = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = ("symlink", 0, st.st_uid, st.st_gid, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                seen[rel] = ("dir", st.st_mode & 0o1777, st.st_uid, st.st_gid, b"")
            elif stat.S_ISREG(st.st_mode):
                seen[rel] = ("file", st.st_mode & 0o1777, st.st_uid, st.st_gid, path.read_bytes())
    return seen


def under(prefix: str, walk: Walk) -> Walk:
    """``walk`` moved below ``prefix`` (``a/b``), with ``prefix``'s parents as the implicit 0755 dirs of docs/layout-rules.md."""
    out: Walk = {}
    parts = prefix.split("/")
    for i in range(1, len(parts)):
        out["/".join(parts[:i])] = ("dir", 0o755, 0, 0, b"")
    for rel, value in walk.items():
        out[f"{prefix}/{rel}"] = value
    return out


def oras_file(title: str, data: bytes) -> Walk:
    """rule 4: an ORAS file push is its blob at the title, 0644, parents 0755, root-owned."""
    parts = title.split("/")
    out: Walk = {"/".join(parts[:i]): ("dir", 0o755, 0, 0, b"") for i in range(1, len(parts))}
    out[title] = ("file", 0o644, 0, 0, data)
    return out


def tar_gz(root: Path, out: Path, members: Iterable[str] = (".",)) -> Path:
    """GNU ``tar czf out -C root MEMBERS`` (with ``.``: every entry starts ``./``)."""
    run(["tar", "czf", str(out), "-C", str(root), *members])
    return out


def for_node(by_platform: Mapping[str, Walk]) -> Walk:
    """The tree of the node's own platform (``node_platform()``: x86_64 → linux/amd64)."""
    want = node_platform()
    if want not in by_platform:
        raise RuntimeError(f"this node is {want}; the two-platform fixtures have {sorted(by_platform)} only")
    return by_platform[want]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- registry uploads (hand-built shapes only) --------------------------------------------


def upload_blob(registry: str, repo: str, data: bytes, media_type: str, **extra: object) -> dict:
    """A monolithic blob upload (POST then PUT ?digest=); returns its descriptor."""
    digest = sha256(data)
    started = requests.post(f"http://{registry}/v2/{repo}/blobs/uploads/", timeout=30)
    started.raise_for_status()
    location = started.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    done = requests.put(
        f"{location}{sep}digest={digest}", data=data,
        headers={"Content-Type": "application/octet-stream"}, timeout=30,
    )  # fmt: skip
    done.raise_for_status()
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def put_manifest(registry: str, repo: str, tag: str, doc: dict | bytes, media_type: str) -> str:
    """PUT a manifest or index (a dict, or its very bytes) under ``tag`` (or its digest); returns
    its digest as the registry computed it."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    response = requests.put(
        f"http://{registry}/v2/{repo}/manifests/{tag}", data=body,
        headers={"Content-Type": media_type}, timeout=30,
    )  # fmt: skip
    if response.status_code != 201:
        raise RuntimeError(f"the registry refused the manifest {repo}:{tag}: {response.status_code} {response.text}")
    digest = response.headers["Docker-Content-Digest"]
    assert digest == sha256(body), (digest, sha256(body))
    return digest


def put_image(
    registry: str, repo: str, tag: str, layers: list[dict], config: dict | None = None,
    config_type: str = OCI_CONFIG, **manifest_fields: object,
) -> tuple[str, dict]:
    """Upload a config, then an OCI image manifest naming ``layers`` (already uploaded)."""
    config_bytes = json.dumps(config if config is not None else {}).encode()
    config_desc = upload_blob(registry, repo, config_bytes, config_type)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, **manifest_fields, "config": config_desc, "layers": layers}
    return put_manifest(registry, repo, tag, doc, OCI_MANIFEST), doc


def image_config(arch: str, diff_ids: list[str], labels: Mapping[str, str] | None = None) -> dict:
    return {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": dict(labels or {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


# -- the oras Python client ----------------------------------------------------------------


def oras_push(
    registry: str, repo_tag: str, files: list[str], workdir: Path,
    config: str | None = None, annotations: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """``OrasClient.push`` from ``workdir`` (paths relative to it, as the client wants).

    ``config`` is ``path:mediaType`` (a path that does not exist means an empty ``{}``
    config of that type); ``annotations`` is written to the client's annotation file,
    keyed by the pushed path, and may override the title as the Go CLI sets it.
    """
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    kwargs: dict = {}
    if config is not None:
        kwargs["manifest_config"] = config
    if annotations:
        (workdir / "annotations.json").write_text(json.dumps(annotations))
        kwargs["annotation_file"] = "annotations.json"
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        response = client.push(target=f"{registry}/{repo_tag}", files=files, quiet=True, **kwargs)
    finally:
        os.chdir(cwd)
    return response.headers["Docker-Content-Digest"]


def fetch_manifest(registry: str, repo: str, ref: str, accept: str) -> dict:
    response = requests.get(f"http://{registry}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=30)
    response.raise_for_status()
    return response.json()


# -- ORAS artifacts ------------------------------------------------------------------------

SKILL_SPEC: Spec = {
    "SKILL.md": (b"---\nname: cluster-ops\ndescription: operate clusters\n---\nRun scripts/check.sh first.\n", 0o644, 0, 0),
    "scripts": (None, 0o755, 0, 0),
    "scripts/check.sh": (b"#!/bin/sh\nkubectl get nodes\n", 0o755, 0, 0),
    "references": (None, 0o755, 0, 0),
    "references/runbook.md": (b"# Runbook\nDrain, then cordon.\n", 0o644, 0, 0),
}

DIRECTORY_SPEC: Spec = {
    "README.md": (b"# Tools\n", 0o644, 0, 0),
    "bin": (None, 0o755, 0, 0),
    "bin/run": (b"#!/bin/sh\nexec true\n", 0o4755, 0, 0),  # setuid: dropped on mount
    "bin/latest": ("->run", 0o777, 0, 0),
    "bin/shell": ("->/bin/sh", 0o777, 0, 0),
    "private": (None, 0o700, 1000, 1000),
    "private/token": (b"not-a-secret\n", 0o600, 1000, 1000),
    "shared": (None, 0o2775, 0, 50),  # setgid dir: dropped on mount
    "shared/with space.txt": (b"spaces are fine\n", 0o664, 1001, 50),
    "shared/\u00fcn\u00efc\u00f8de.md": ("caf\u00e9\n".encode(), 0o644, 0, 0),
    "empty": (b"", 0o444, 0, 0),
}


def build_oras_file_push(registry: str, workdir: Path) -> Fixture:
    """ORAS file pushes: each file at its title, 0644, whatever its media type or content.

    ``notes.txt`` takes the client's default ``…layer.v1.tar``; ``data.bin`` a custom media
    type; ``bundle.tar.gz`` (a real ``tar czf``) the default ``…tar`` type; ``dist.tar.gz`` (a
    real tar.gz whose entries are not under its title) ``…tar+gzip``; ``docs/guide.md`` gets a
    path as its title, as the Go ``oras`` CLI titles ``oras push ref docs/guide.md``.
    """
    workdir.mkdir(parents=True)
    (workdir / "notes.txt").write_bytes(b"remember the milk\n")
    (workdir / "data.bin").write_bytes(bytes(range(256)) * 3)
    os.chmod(workdir / "data.bin", 0o755)  # a file push is 0644 whatever the source mode
    src = make_tree(workdir / "src", {"a.txt": (b"a\n", 0o644, 0, 0), "sub": (None, 0o755, 0, 0)})
    tar_gz(src, workdir / "bundle.tar.gz")
    tar_gz(src, workdir / "dist.tar.gz")
    (workdir / "guide.md").write_bytes(b"# Guide\n")
    digest = oras_push(
        registry, "kinds/oras-files:v1",
        ["notes.txt", "data.bin:application/vnd.example.data.v1", "bundle.tar.gz",
         f"dist.tar.gz:{OCI_TAR_GZIP}", "guide.md:text/markdown"],
        workdir, annotations={"guide.md": {TITLE: "docs/guide.md"}},
    )  # fmt: skip
    expected: Walk = {}
    for title, name in [("notes.txt", "notes.txt"), ("data.bin", "data.bin"), ("bundle.tar.gz", "bundle.tar.gz"),
                        ("dist.tar.gz", "dist.tar.gz"), ("docs/guide.md", "guide.md")]:  # fmt: skip
        expected.update(oras_file(title, (workdir / name).read_bytes()))
    return Fixture("oras_file_push", f"{registry}/kinds/oras-files:v1", expected,
                   "oras Python client push of five files (unknown config)", digest)  # fmt: skip


def build_oras_directory_push(registry: str, workdir: Path) -> Fixture:
    """``OrasClient.push`` of a directory: a titled ``…tar+gzip`` with every entry under the title."""
    workdir.mkdir(parents=True)
    src = make_tree(workdir / "toolbox", DIRECTORY_SPEC)
    digest = oras_push(registry, "kinds/oras-dir:v1", ["toolbox"], workdir, config=f"missing.json:{OCI_EMPTY}")
    expected = {"toolbox": reference_walk(workdir)["toolbox"], **under("toolbox", reference_walk(src))}
    return Fixture("oras_directory_push", f"{registry}/kinds/oras-dir:v1", expected,
                   "oras Python client directory push (empty OCI config)", digest)  # fmt: skip


def build_oras_directory_unpack(registry: str, workdir: Path) -> Fixture:
    """A directory push the way the Go ``oras`` CLI makes it: titled with the directory's name,
    annotated ``io.deis.oras.content.unpack: "true"``; the client's own ``make_targz`` packs it
    and its annotation file sets title and annotation."""
    workdir.mkdir(parents=True)
    src = make_tree(workdir / "toolbox", DIRECTORY_SPEC)
    oras.utils.make_targz(str(src), str(workdir / "toolbox.tar.gz"))
    layer_digest = sha256((workdir / "toolbox.tar.gz").read_bytes())
    annotations = {"toolbox.tar.gz": {TITLE: "toolbox", UNPACK: "true", "io.deis.oras.content.digest": layer_digest}}
    digest = oras_push(registry, "kinds/oras-dir-unpack:v1", [f"toolbox.tar.gz:{OCI_TAR_GZIP}"], workdir,
                       annotations=annotations)  # fmt: skip
    expected = {"toolbox": reference_walk(workdir)["toolbox"], **under("toolbox", reference_walk(src))}
    return Fixture("oras_directory_unpack", f"{registry}/kinds/oras-dir-unpack:v1", expected,
                   "oras Python client make_targz + push with the unpack annotation", digest)  # fmt: skip


def build_oras_mixed(registry: str, workdir: Path) -> Fixture:
    """Several files and directories in one artifact: two directory pushes (one with the unpack
    annotation), two file pushes, under ``application/vnd.unknown.config.v1+json``."""
    workdir.mkdir(parents=True)
    skills = make_tree(workdir / "skills", {"a/SKILL.md": (b"---\nname: a\n---\n", 0o644, 0, 0), "a": (None, 0o755, 0, 0)})
    agents = make_tree(workdir / "agents", {"reviewer.md": (b"# Reviewer\n", 0o640, 1000, 1000)})
    oras.utils.make_targz(str(agents), str(workdir / "agents.tar.gz"))
    (workdir / "settings.json").write_text('{"model": "large"}\n')
    (workdir / "CLAUDE.md").write_text("Be brief.\n")
    digest = oras_push(
        registry, "kinds/oras-mixed:v1",
        ["skills", f"agents.tar.gz:{OCI_TAR_GZIP}", "settings.json:application/json", "CLAUDE.md"],
        workdir, config=f"missing.json:{UNKNOWN_CONFIG}",
        annotations={"agents.tar.gz": {TITLE: "agents", UNPACK: "true"}},
    )  # fmt: skip
    top = reference_walk(workdir)
    expected = {
        "skills": top["skills"], **under("skills", reference_walk(skills)),
        "agents": top["agents"], **under("agents", reference_walk(agents)),
        **oras_file("settings.json", (workdir / "settings.json").read_bytes()),
        **oras_file("CLAUDE.md", (workdir / "CLAUDE.md").read_bytes()),
    }  # fmt: skip
    return Fixture("oras_files_and_directories", f"{registry}/kinds/oras-mixed:v1", expected,
                   "oras Python client push of two directories and two files", digest)  # fmt: skip


def build_skill(registry: str, workdir: Path) -> Fixture:
    """A skill: a ``SKILL.md`` directory pushed with ``oras push`` (directory push), so it mounts
    as ``oras pull`` lays it out: ``cluster-ops/SKILL.md``."""
    workdir.mkdir(parents=True)
    src = make_tree(workdir / "cluster-ops", SKILL_SPEC)
    digest = oras_push(registry, "kinds/skills/cluster-ops:v1", ["cluster-ops"], workdir)
    expected = {"cluster-ops": reference_walk(workdir)["cluster-ops"], **under("cluster-ops", reference_walk(src))}
    return Fixture("skill", f"{registry}/kinds/skills/cluster-ops:v1", expected,
                   "oras Python client directory push of a SKILL.md directory", digest)  # fmt: skip


# -- Klaus and ToolHive plugins -------------------------------------------------------------

KLAUS_SPEC: Spec = {
    ".claude-plugin": (None, 0o755, 0, 0),
    ".claude-plugin/plugin.json": (json.dumps({"name": "gs-platform", "version": "1.2.0"}).encode(), 0o644, 0, 0),
    "skills": (None, 0o755, 0, 0),
    "skills/flux": (None, 0o755, 0, 0),
    "skills/flux/SKILL.md": (b"---\nname: flux\n---\nReconcile.\n", 0o644, 0, 0),
    "skills/current": ("->flux", 0o777, 0, 0),
    "hooks": (None, 0o750, 1000, 1000),
    "hooks/pre-tool.sh": (b"#!/bin/sh\nexit 0\n", 0o755, 1000, 1000),
    ".mcp.json": (b'{"mcpServers": {}}\n', 0o600, 0, 0),
    "LICENSE": ("->/usr/share/common-licenses/Apache-2.0", 0o777, 0, 0),
}


def build_klaus_oras_cli(registry: str, workdir: Path) -> Fixture:
    """A Klaus plugin the way its authors push it: ``tar czf plugin.tar.gz -C dir .`` (entries
    ``./…``), then ``oras push ref plugin.tar.gz:<klaus content type> --config config.json:<klaus
    config type>``, which titles the layer ``plugin.tar.gz``. It mounts as the plugin directory."""
    workdir.mkdir(parents=True)
    src = make_tree(workdir / "plugin", KLAUS_SPEC)
    tar_gz(src, workdir / "plugin.tar.gz")
    (workdir / "config.json").write_text(json.dumps({"name": "gs-platform", "version": "1.2.0"}))
    digest = oras_push(registry, "kinds/klaus/gs-platform:v1.2.0", [f"plugin.tar.gz:{KLAUS_PLUGIN_CONTENT}"],
                       workdir, config=f"config.json:{KLAUS_PLUGIN_CONFIG}")  # fmt: skip
    return Fixture("klaus_plugin_oras_cli", f"{registry}/kinds/klaus/gs-platform:v1.2.0", reference_walk(src),
                   "GNU tar czf -C dir . + oras Python client push with Klaus media types", digest)  # fmt: skip


def build_klaus_hand(registry: str, workdir: Path, titled: bool) -> Fixture:
    """A Klaus content layer by hand: titled (``gs-platform``, no unpack annotation) or not.

    Either way rule 2 unpacks it at the volume root. The untitled one is packed
    without ``./`` (``tar czf … -C dir .claude-plugin skills …``) and its manifest leaves
    out ``mediaType``, as older tools do: the driver must recognise it by its ``layers``.
    """
    workdir.mkdir(parents=True)
    src = make_tree(workdir / "plugin", KLAUS_SPEC)
    members = ["."] if titled else sorted(os.listdir(src))
    data = tar_gz(src, workdir / "plugin.tar.gz", members).read_bytes()
    repo = f"kinds/klaus-hand-{'titled' if titled else 'untitled'}"
    extra = {"annotations": {TITLE: "gs-platform"}} if titled else {}
    layer = upload_blob(registry, repo, data, KLAUS_PLUGIN_CONTENT, **extra)
    config = json.dumps({"name": "gs-platform"}).encode()
    config_desc = upload_blob(registry, repo, config, KLAUS_PLUGIN_CONFIG)
    doc: dict = {"schemaVersion": 2, "config": config_desc, "layers": [layer]}
    if titled:
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, **doc}
    digest = put_manifest(registry, repo, "v1", doc, OCI_MANIFEST)
    name = f"klaus_media_type_{'titled' if titled else 'untitled'}"
    how = "GNU tar + hand-built manifest" + ("" if titled else " without mediaType, entries without ./")
    return Fixture(name, f"{registry}/{repo}:v1", reference_walk(src), how, digest)


# toolhive-core (``oci/plugins``, ``oci/skills``, ``oci/artifact``) packages a directory without
# any tool here able to: Go's archive/tar and compress/gzip, Go's JSON. So its artifacts are
# built by hand to the byte where Python can (the tar, the gzip header, every JSON document) and
# uploaded as its Registry.Push does (oras-go CopyGraph: blobs, manifests by digest, the index
# tagged last).

TOOLHIVE_SKILL = "dev.toolhive.skills.v1"
TOOLHIVE_ARCHES = ("amd64", "arm64")  # artifact.DefaultPlatforms: linux/amd64, linux/arm64
EPOCH = "1970-01-01T00:00:00Z"  # the packager's time when SOURCE_DATE_EPOCH is unset, as Go marshals it
# path -> (bytes, mode) as the packager collected them from the directory
Files = dict[str, tuple[bytes, int]]


def go_json(doc: object) -> bytes:
    """``doc`` as Go's ``encoding/json`` marshals it: compact, ``<``, ``>``, ``&`` escaped. Go sorts
    a map's keys and keeps a struct's fields in declaration order: callers build dicts so."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def go_tar(files: Files) -> bytes:
    """``artifact.CreateTar``: one ``TypeReg`` header a file, sorted by path, no directory
    entries. It asks Go's ``archive/tar`` for PAX, but short ASCII names and mtime 0 need no PAX
    record, so Go writes plain ustar blocks (owner 0:0 without names, devmajor and devminor
    ``0000000``), each file's data padded to 512 bytes, then two zero blocks and no record
    padding. Python's ``tarfile`` leaves the device fields empty and pads to 10 KiB."""
    out = bytearray()
    for path in sorted(files):
        data, mode = files[path]
        assert path.isascii() and len(path) <= 100, path  # else Go would write a PAX record or a prefix
        out += _go_ustar_header(path, len(data), mode) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return bytes(out + b"\0" * (2 * tarfile.BLOCKSIZE))


def _go_ustar_header(name: str, size: int, mode: int) -> bytes:
    def octal(value: int, width: int) -> bytes:  # Go's formatOctal: zero-padded, NUL-terminated
        return b"%0*o\0" % (width - 1, value)

    block = b"".join([
        name.encode().ljust(100, b"\0"), octal(mode, 8), octal(0, 8), octal(0, 8), octal(size, 12), octal(0, 12),
        b" " * 8, tarfile.REGTYPE, b"\0" * 100, b"ustar\x0000", b"\0" * 64, octal(0, 8), octal(0, 8),
    ]).ljust(tarfile.BLOCKSIZE, b"\0")  # fmt: skip
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def go_gzip(raw: bytes) -> bytes:
    """``artifact.Compress``: Go's ``compress/gzip`` at BestCompression, ModTime the epoch (so 0),
    no name or comment, OS 255, i.e. the header ``1f8b 08 00 00000000 02 ff``. The deflate stream
    is zlib's, not Go's ``compress/flate`` (no Python library writes that), so the blob, and the
    digests above it, differ from the packager's; it inflates to the same tar."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(raw) + deflate.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", zlib.crc32(raw), len(raw) % 2**32)


def files_walk(files: Files) -> Walk:
    """What a volume of ``files`` shows: each file as stored, 0:0, and the directories the
    archive never lists as 0755, 0:0."""
    out: Walk = {}
    for path, (data, mode) in files.items():
        parts = path.split("/")
        out.update({"/".join(parts[:i]): ("dir", 0o755, 0, 0, b"") for i in range(1, len(parts))})
        out[path] = ("file", mode, 0, 0, data)
    return out


def push_one_blob_twice(registry: str, repo: str, files: Files) -> tuple[Fixture, Fixture, bytes]:
    """One gzip blob of ``files`` pushed as an image's layer (``:image``, rule 0: its files) and as
    an ORAS file (``:file``, titled ``bundle.tar.gz`` with a media type no rule unpacks, so rule 4
    shows the blob itself); the two fixtures and the blob."""
    blob = go_gzip(go_tar(files))
    layer = upload_blob(registry, repo, blob, OCI_TAR_GZIP)
    image, _ = put_image(registry, repo, "image", [layer], image_config("amd64", [sha256(go_tar(files))]))
    as_file = {**layer, "mediaType": "application/vnd.example.bundle.tar+gzip", "annotations": {TITLE: "bundle.tar.gz"}}
    file, _ = put_image(registry, repo, "file", [as_file], config_type=OCI_EMPTY)
    return (
        Fixture("shared_image", f"{registry}/{repo}:image", files_walk(files), "an image of one layer", image),
        Fixture("shared_file", f"{registry}/{repo}:file", oras_file("bundle.tar.gz", blob), "that layer as a file", file),
        blob,
    )


def push_toolhive(
    registry: str, repo: str, tag: str, artifact_type: str, files: Files, layer_annotations: Mapping[str, str],
    labels: Mapping[str, str], annotations: Mapping[str, str],
) -> str:
    """Upload what toolhive-core's ``Packager.Package`` and ``Registry.Push`` make of ``files``:
    one ``tar+gzip`` layer shared by every platform; per platform an ``ocispec.Image`` config
    (``labels``, the layer's diff_id, created and history at the epoch) and a manifest with
    ``artifactType`` and ``annotations``, pushed by digest; then the index, with the same
    ``artifactType`` and annotations, tagged. Returns the index digest."""
    raw = go_tar(files)
    layer = upload_blob(registry, repo, go_gzip(raw), OCI_TAR_GZIP,
                        **({"annotations": dict(layer_annotations)} if layer_annotations else {}))  # fmt: skip
    notes = dict(sorted(annotations.items()))
    entries = []
    for arch in TOOLHIVE_ARCHES:
        config = go_json({
            "created": EPOCH, "architecture": arch, "os": "linux", "config": {"Labels": dict(sorted(labels.items()))},
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]},
            "history": [{"created": EPOCH, "created_by": "toolhive package"}],
        })  # fmt: skip
        manifest = go_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                            "config": upload_blob(registry, repo, config, OCI_CONFIG), "layers": [layer],
                            "annotations": notes})  # fmt: skip
        digest = put_manifest(registry, repo, sha256(manifest), manifest, OCI_MANIFEST)
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                        "platform": {"architecture": arch, "os": "linux"}})  # fmt: skip
    index = go_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": artifact_type,
                     "manifests": entries, "annotations": notes})  # fmt: skip
    return put_manifest(registry, repo, tag, index, OCI_INDEX)


TOOLHIVE_PLUGIN_META = {"name": "scanner", "description": "Scans a repository before it deploys", "version": "0.3.0",
                        "license": "Apache-2.0"}  # fmt: skip
TOOLHIVE_PLUGIN_FILES: Files = {
    ".claude-plugin/plugin.json": (json.dumps(TOOLHIVE_PLUGIN_META, indent=2).encode() + b"\n", 0o644),
    ".mcp.json": (b'{"mcpServers": {"scan": {"command": "scan-mcp"}}}\n', 0o644),
    "commands/deploy.md": (b"# Deploy\nRun the scanner first.\n", 0o644),
    "hooks/hooks.json": (b'{"PreToolUse": ["scripts/scan.sh"]}\n', 0o644),
    "scripts/scan.sh": (b"#!/bin/sh\necho scanning\n", 0o755),  # oci/plugins keeps each file's permission bits
}


def build_toolhive(registry: str) -> Fixture:
    """A ToolHive plugin as toolhive-core's ``oci/plugins`` packager pushes it: an OCI index
    (``artifactType: dev.toolhive.plugins.v1``, linux/amd64 and linux/arm64), each manifest an
    OCI image config carrying the plugin's metadata in labels and the same single ``tar+gzip``
    layer titled ``plugin.tar.gz``, whose entries are the plugin's files at the root. An image
    config makes it an image (rule 0): it mounts as the plugin directory, not as that file."""
    repo = "kinds/toolhive/scanner"
    meta = {f"dev.toolhive.plugins.{key}": value for key, value in TOOLHIVE_PLUGIN_META.items()}
    listed = {**meta, "dev.toolhive.plugins.files": go_json(sorted(TOOLHIVE_PLUGIN_FILES)).decode(),
              "dev.toolhive.plugins.components": "null", "dev.toolhive.plugins.requires": "null"}  # fmt: skip
    annotations = {**listed, "org.opencontainers.image.created": EPOCH,
                   "org.opencontainers.image.version": TOOLHIVE_PLUGIN_META["version"],
                   "org.opencontainers.image.licenses": TOOLHIVE_PLUGIN_META["license"],
                   "org.opencontainers.image.title": TOOLHIVE_PLUGIN_META["name"],
                   "org.opencontainers.image.description": TOOLHIVE_PLUGIN_META["description"]}  # fmt: skip
    digest = push_toolhive(registry, repo, "v0.3.0", TOOLHIVE_PLUGIN, TOOLHIVE_PLUGIN_FILES,
                           {TITLE: "plugin.tar.gz"}, listed, annotations)  # fmt: skip
    expected = for_node({f"linux/{arch}": files_walk(TOOLHIVE_PLUGIN_FILES) for arch in TOOLHIVE_ARCHES})
    return Fixture("toolhive_plugin", f"{registry}/{repo}:v0.3.0", expected,
                   "toolhive-core oci/plugins packager's shape (Go's tar and JSON), uploaded as its push does",
                   digest)  # fmt: skip


TOOLHIVE_SKILL_FILES: Files = {
    "SKILL.md": (b"---\nname: cluster-ops\ndescription: Operate Kubernetes clusters\nversion: 1.0.0\n"
                 b"allowed-tools: Read Grep\n---\n# Cluster ops\nRun scripts/check.sh first.\n", 0o644),
    "references/runbook.md": (b"# Runbook\nDrain, then cordon.\n", 0o644),
    "scripts/check.sh": (b"#!/bin/sh\nkubectl get nodes\n", 0o644),  # oci/skills keeps no mode: every file 0644
}  # fmt: skip


def build_toolhive_skill(registry: str) -> Fixture:
    """A ToolHive skill as toolhive-core's ``oci/skills`` packager pushes it: the plugin's shape
    (``artifactType: dev.toolhive.skills.v1``, OCI image configs, one ``tar+gzip`` layer shared
    by both platforms, files only, at the root) except that its layer carries no title and every
    file is 0644. It mounts as the skill directory: ``SKILL.md`` at the root."""
    repo = "kinds/toolhive/cluster-ops"
    skill = {"name": "cluster-ops", "description": "Operate Kubernetes clusters", "version": "1.0.0"}
    meta = {f"dev.toolhive.skills.{key}": value for key, value in skill.items()}
    labels = {**meta, "dev.toolhive.skills.allowedTools": go_json(["Read", "Grep"]).decode(),
              "dev.toolhive.skills.license": "",
              "dev.toolhive.skills.files": go_json(sorted(TOOLHIVE_SKILL_FILES)).decode()}  # fmt: skip
    annotations = {**meta, "org.opencontainers.image.created": EPOCH}
    digest = push_toolhive(registry, repo, "v1.0.0", TOOLHIVE_SKILL, TOOLHIVE_SKILL_FILES, {}, labels, annotations)
    expected = for_node({f"linux/{arch}": files_walk(TOOLHIVE_SKILL_FILES) for arch in TOOLHIVE_ARCHES})
    return Fixture("toolhive_skill", f"{registry}/{repo}:v1.0.0", expected,
                   "toolhive-core oci/skills packager's shape (Go's tar and JSON), uploaded as its push does",
                   digest)  # fmt: skip


def build_unknown_media_type(registry: str, workdir: Path) -> tuple[Fixture, str]:
    """An untitled layer of media type ``application/x-unknown``: rule 5 refuses it."""
    repo = "kinds/unknown-layer"
    ok = upload_blob(registry, repo, gzip.compress(b"\0" * 1024, mtime=0), OCI_TAR_GZIP)  # an empty tar
    bad = upload_blob(registry, repo, b"opaque bytes nobody can place\n", "application/x-unknown")
    digest, _ = put_image(registry, repo, "v1", [ok, bad], image_config("amd64", []))
    return Fixture("unknown_media_type", f"{registry}/{repo}:v1", {}, "hand-built manifest", digest), bad["digest"]


# -- container images: umoci + skopeo -------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """An OCI image layout umoci built, and the tags in it."""

    path: Path

    def image(self, tag: str) -> str:
        return f"{self.path}:{tag}"

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    def manifest(self, tag: str) -> dict:
        index = json.loads((self.path / "index.json").read_text())
        for entry in index["manifests"]:
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return json.loads(self.blob(entry["digest"]))
        raise KeyError(tag)

    def reference_tree(self, tag: str, dest: Path) -> Walk:
        """``umoci raw unpack``: umoci's own extraction of the image, whiteouts applied."""
        run(["umoci", "raw", "unpack", "--image", self.image(tag), str(dest)])
        return reference_walk(dest)


def _edit(layout: Layout, tag: str, bundle: Path, edit: Callable[[Path], None]) -> None:
    """``umoci unpack``, change the rootfs, ``umoci repack``: one new layer of the differences."""
    run(["umoci", "unpack", "--image", layout.image(tag), str(bundle)])
    edit(bundle / "rootfs")
    run(["umoci", "repack", "--image", layout.image(tag), str(bundle)])
    shutil.rmtree(bundle)


def _base(root: Path) -> None:
    """Layer 1: a small root filesystem with everything a volume must keep or drop."""
    make_tree(root, {
        "etc": (None, 0o755, 0, 0),
        "etc/hostname": (b"toolchain\n", 0o644, 0, 0),
        "etc/obsolete.conf": (b"old = true\n", 0o644, 0, 0),
        "etc/shadow": (b"root:*:19000::::::\n", 0o640, 0, 42),
        "bin": (None, 0o755, 0, 0),
        "bin/busybox": (b"\x7fELF pretend binary\n" * 50, 0o755, 0, 0),
        "bin/sh": ("->/bin/busybox", 0o777, 0, 0),
        "bin/ls": ("->busybox", 0o777, 0, 0),
        "usr/bin/passwd": (b"#!/bin/sh\necho passwd\n", 0o4755, 0, 0),
        "usr/bin/wall": (b"#!/bin/sh\necho wall\n", 0o2755, 0, 5),
        "usr/lib/toolchain": (None, 0o755, 0, 0),
        "usr/lib/toolchain/libold.so": (b"old library\n", 0o644, 0, 0),
        "usr/lib/toolchain/plugins": (None, 0o755, 0, 0),
        "usr/lib/toolchain/plugins/a.so": (b"plugin a\n", 0o644, 0, 0),
        "var/cache": (None, 0o755, 0, 0),
        "var/cache/index": (b"cache index\n", 0o644, 0, 0),
        "srv/data": (None, 0o755, 0, 0),
        "srv/data/blob": (b"blob\n", 0o644, 0, 0),
        "opt/was-a-dir": (None, 0o755, 0, 0),
        "opt/was-a-dir/inside": (b"inside\n", 0o644, 0, 0),
        "opt/was-a-file": (b"file\n", 0o644, 0, 0),
        "home/dev": (None, 0o750, 1000, 1000),
        "home/dev/.profile": (b"export PATH=/bin\n", 0o644, 1000, 1000),
        "tmp": (None, 0o1777, 0, 0),
        "with space": (None, 0o755, 0, 0),
        "with space/\u00e9t\u00e9.txt": ("\u00e9t\u00e9\n".encode(), 0o644, 0, 0),
    })  # fmt: skip
    os.link(root / "bin/busybox", root / "bin/busybox.hard")  # hardlink in one layer
    os.mkfifo(root / "etc/initctl")  # a FIFO: never shown in a volume
    try:
        os.mknod(root / "etc/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a device: never shown
    except PermissionError:
        pass  # no CAP_MKNOD here; the FIFO still covers "special files are skipped"


def _changes(root: Path) -> None:
    """Layer 2: deletions (whiteouts), a replaced directory, file→dir, dir→file, dir→symlink."""
    (root / "etc/obsolete.conf").unlink()
    shutil.rmtree(root / "var/cache")
    (root / "var/cache").mkdir()
    (root / "var/cache/fresh").write_bytes(b"fresh cache\n")
    (root / "opt/was-a-file").unlink()
    make_tree(root, {"opt/was-a-file": (None, 0o755, 0, 0), "opt/was-a-file/now": (b"a dir now\n", 0o600, 0, 0)})
    shutil.rmtree(root / "opt/was-a-dir")
    (root / "opt/was-a-dir").write_bytes(b"a file now\n")
    shutil.rmtree(root / "srv/data")
    os.symlink("/mnt/data", root / "srv/data")
    (root / "etc/hostname").write_bytes(b"toolchain-2\n")
    os.chmod(root / "etc/shadow", 0o600)
    os.link(root / "etc/hostname", root / "etc/hostname.hard")


def build_toolchain_layout(workdir: Path) -> Layout:
    """A multi-layer OCI image made by umoci from real directory trees, tag ``toolchain``:

    1. ``repack`` of a root filesystem: absolute and relative symlinks, a hardlink, setuid/setgid
       files, owners other than root, a sticky dir, a FIFO (and a device node where allowed);
    2. ``repack`` of changes: deleted files and a replaced directory (umoci writes ``.wh.``
       whiteouts), a file replaced by a dir, a dir by a file, a dir by a symlink;
    3. ``insert --opaque``: ``usr/lib/toolchain`` replaced whole (``.wh..wh..opq``);
    4. ``insert --whiteout``: ``home/dev/.profile`` removed;
    5. ``insert``: a directory over the symlink ``bin/ls``.
    """
    layout = Layout(workdir / "layout")
    run(["umoci", "init", "--layout", str(layout.path)])
    run(["umoci", "new", "--image", layout.image("toolchain")])
    _edit(layout, "toolchain", workdir / "bundle1", _base)
    _edit(layout, "toolchain", workdir / "bundle2", _changes)
    newlib = make_tree(workdir / "newlib", {"libnew.so": (b"new library\n", 0o644, 0, 0)})
    os.chmod(newlib, 0o750)
    run(["umoci", "insert", "--image", layout.image("toolchain"), "--opaque", str(newlib), "/usr/lib/toolchain"])
    run(["umoci", "insert", "--image", layout.image("toolchain"), "--whiteout", "/home/dev/.profile"])
    lsdir = make_tree(workdir / "lsdir", {"README": (b"ls is a directory now\n", 0o644, 0, 0)})
    run(["umoci", "insert", "--image", layout.image("toolchain"), str(lsdir), "/bin/ls"])
    return layout


def build_platform_layout(workdir: Path) -> tuple[Layout, dict[str, Walk]]:
    """Two images (linux/amd64, linux/arm64) by umoci, and an OCI index of both in the layout
    under the tag ``multi`` (umoci 0.4 writes no index; this one is the only hand-written JSON).

    Returns the layout and each platform's reference tree (``umoci raw unpack``)."""
    layout = Layout(workdir / "layout")
    run(["umoci", "init", "--layout", str(layout.path)])
    trees: dict[str, Walk] = {}
    entries = []
    for arch in ("amd64", "arm64"):
        run(["umoci", "new", "--image", layout.image(arch)])
        run(["umoci", "config", "--image", layout.image(arch), "--os", "linux", "--architecture", arch])

        def edit(root: Path, arch: str = arch) -> None:
            make_tree(root, {
                "etc/arch": (f"{arch}\n".encode(), 0o644, 0, 0),
                f"lib/{arch}-linux-gnu/libc.so.6": (f"libc for {arch}\n".encode(), 0o755, 0, 0),
                "bin/uname": (None, 0o755, 0, 0),
            })  # fmt: skip

        _edit(layout, arch, workdir / f"bundle-{arch}", edit)
        trees[f"linux/{arch}"] = layout.reference_tree(arch, workdir / f"ref-{arch}")
        index = json.loads((layout.path / "index.json").read_text())
        entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == arch)
        entries.append({"mediaType": OCI_MANIFEST, "digest": entry["digest"], "size": entry["size"],
                        "platform": {"architecture": arch, "os": "linux"}})  # fmt: skip
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    (layout.path / "blobs/sha256" / sha256(data).removeprefix("sha256:")).write_bytes(data)
    index = json.loads((layout.path / "index.json").read_text())
    index["manifests"].append({"mediaType": OCI_INDEX, "digest": sha256(data), "size": len(data),
                               "annotations": {"org.opencontainers.image.ref.name": "multi"}})  # fmt: skip
    (layout.path / "index.json").write_text(json.dumps(index))
    return layout, trees


def skopeo_push(layout: Layout, tag: str, registry: str, repo_tag: str, *flags: str) -> str:
    """``skopeo copy [FLAGS] oci:LAYOUT:TAG docker://REGISTRY/REPO:TAG``; returns the pushed digest."""
    run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *flags, f"oci:{layout.image(tag)}",
         f"docker://{registry}/{repo_tag}"])  # fmt: skip
    repo, _, ref = repo_tag.rpartition(":")
    accept = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"
    response = requests.head(f"http://{registry}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=30)
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def skopeo_recompress(layout: Layout, tag: str, dest: Path, *flags: str) -> Layout:
    """``skopeo copy [FLAGS] oci:LAYOUT:TAG oci:DEST:TAG`` (e.g. recompressing with zstd)."""
    run(["skopeo", "copy", "--quiet", *flags, f"oci:{layout.image(tag)}", f"oci:{dest}:{tag}"])
    return Layout(dest)


def layer_tars(layout: Layout, tag: str) -> list[bytes]:
    """The uncompressed tar of each layer of an umoci image, in order."""
    return [gzip.decompress(layout.blob(layer["digest"])) for layer in layout.manifest(tag)["layers"]]


def implicit_dirs_layer() -> tuple[bytes, Walk]:
    """A tar whose only entries lie deep in directories it never lists (``opt/implicit/a/b``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in [("./opt/implicit/a/b/deep.txt", b"deep\n", 0o640),
                                 ("opt/implicit/c/run", b"#!/bin/sh\n", 0o755)]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 7, 8
            tar.addfile(info, io.BytesIO(data))
    expected: Walk = {p: ("dir", 0o755, 0, 0, b"") for p in ["opt/implicit", "opt/implicit/a", "opt/implicit/a/b", "opt/implicit/c"]}
    expected["opt/implicit/a/b/deep.txt"] = ("file", 0o640, 7, 8, b"deep\n")
    expected["opt/implicit/c/run"] = ("file", 0o755, 7, 8, b"#!/bin/sh\n")
    return buf.getvalue(), expected


def gzip_members(data: bytes, parts: int = 2) -> bytes:
    """``data`` as several concatenated gzip members (as eStargz and ``cat a.gz b.gz`` make)."""
    step = -(-len(data) // parts)
    return b"".join(gzip.compress(data[i : i + step], mtime=0) for i in range(0, len(data), step))


def build_layer_compressions(registry: str, layout: Layout, reference: Walk) -> Fixture:
    """The umoci toolchain's layers, re-encoded one media type each (built by hand: no tool
    mixes them): plain ``tar``, ``tar+zstd`` (the ``zstandard`` package), nondistributable
    ``tar+gzip``, Docker ``rootfs.diff.tar.gzip``, ``tar+gzip`` as two gzip members; then a
    ``tar+zstd`` layer whose entries lie in directories it never lists."""
    tars = layer_tars(layout, "toolchain")
    if len(tars) != 5:
        raise RuntimeError(f"the umoci toolchain image has {len(tars)} layers, expected 5")
    repo = "kinds/compressions"
    zstd = zstandard.ZstdCompressor(level=3)
    implicit, implicit_expected = implicit_dirs_layer()
    encoded = [
        (tars[0], OCI_TAR),
        (zstd.compress(tars[1]), OCI_TAR_ZSTD),
        (gzip.compress(tars[2], mtime=0), OCI_NONDIST_GZIP),
        (gzip.compress(tars[3], mtime=0), DOCKER_LAYER),
        (gzip_members(tars[4]), OCI_TAR_GZIP),
        (zstd.compress(implicit), OCI_TAR_ZSTD),
    ]
    layers = [upload_blob(registry, repo, data, media_type) for data, media_type in encoded]
    diff_ids = [sha256(t) for t in [*tars, implicit]]
    digest, _ = put_image(registry, repo, "v1", layers, image_config("amd64", diff_ids))
    assert not any(path == "opt/implicit" or path.startswith("opt/implicit/") for path in reference)
    return Fixture("layer_compressions", f"{registry}/{repo}:v1", {**reference, **implicit_expected},
                   "umoci layers re-encoded with gzip/zstandard, hand-built manifest", digest)  # fmt: skip

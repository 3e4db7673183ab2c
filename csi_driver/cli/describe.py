"""``describe REF``: what a volume of REF would hold, found without mounting anything.

It runs the driver's own pull (``pull.py``: registry, verified store, ``rules.build_tree``)
into a temporary store with the node's flags, so its answer is the node's answer: the same
platform choice, the same placement of each layer, the same refusals with the same
messages. Then it reads back what that pull stored: the manifest(s) and the tree.

Which rule of docs/layout-rules.md placed a layer is read from the manifest's config media type
(an image's layers are all rule 0) and the layer's media type and annotations, as ``rules.py``
decides it; only rule 3 against rule 4 (a titled ``tar+gzip``: a directory if every entry lies
under its title, else a file) depends on the archive, and is decided by placing that layer alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import stat
import tempfile
from pathlib import Path
from typing import Any

from csi_driver import errors
from csi_driver.cli.output import emit, fields, plural, progress, pulling, short, table, verdict
from csi_driver.content.pull import PullConfig, pull
from csi_driver.content.store import Store
from csi_driver.layout import rules, manifest
from csi_driver.layout.tree import blob_relpath, Entry, Kind
from csi_driver.progress import in_flight
from csi_driver.reference import Reference, parse_reference
from csi_driver.registry.authorize import AccessChecks
from csi_driver.registry.client import RegistryClient
from csi_driver.registry.credentials import Credentials, CredentialSources, Keyring
from csi_driver.units import size

KINDS = {
    "application/vnd.oci.image.index.v1+json": "OCI image index",
    "application/vnd.docker.distribution.manifest.list.v2+json": "Docker manifest list",
    "application/vnd.oci.image.manifest.v1+json": "OCI image manifest",
    "application/vnd.docker.distribution.manifest.v2+json": "Docker image manifest (schema 2)",
}
LISTED = 40
"""Entries the text output lists before it summarises (``--tree`` lists all; JSON always does)."""
_TYPE_BITS = {Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.SYMLINK: stat.S_IFLNK}


def describe(args: argparse.Namespace, cfg: PullConfig, sources: CredentialSources) -> int:
    """Exit 0 when the volume can be built, 1 when the node would refuse it (the report says why)."""
    ref = parse_reference(args.reference)
    credentials = Keyring(sources).for_pod({}, ref)
    with tempfile.TemporaryDirectory(prefix="oci-volume-csi-describe-") as tmp:
        store = Store(Path(tmp))
        with progress(lambda elapsed: pulling(str(ref), in_flight(), elapsed, f"pulling {ref}…")):
            top = RegistryClient(cfg.registry, credentials).resolve(ref)
            digest, error = _pull(store, dataclasses.replace(ref, digest=top), credentials, cfg)
        report = _report(store, ref, top, cfg, digest, error)
    emit(args.output, report, lambda r: _text(r, args.tree))
    return 1 if error else 0


def _pull(
    store: Store, ref: Reference, credentials: Credentials | None, cfg: PullConfig
) -> tuple[str | None, errors.DriverError | None]:
    """The tree's digest, or the error a publish would fail with."""
    try:
        return pull(store, ref, "IfNotPresent", credentials, cfg, AccessChecks()), None
    except errors.DriverError as exc:
        return None, exc


def _placement(store: Store, layer: rules.Layer, limits: rules.Limits) -> tuple[int | None, str]:
    """The rule of docs/layout-rules.md that places ``layer`` and what it does; None when rule 3 or 4 cannot be
    told apart because the pull stopped before fetching the layer."""
    title = layer.annotations.get(rules.TITLE)
    if layer.image:
        if rules.tar_path(layer) is None:
            return 5, "refused: not a tar archive, and every layer of an image is a file system layer"
        return 0, "image layer: unpacked at the volume root, whiteouts applied" + (", title ignored" if title else "")
    if title is not None and layer.annotations.get(rules.UNPACK) == "true":
        return 1, f"ORAS directory: extracted as {title}/"
    if title is None:
        if rules.tar_path(layer) is None:
            return 5, "refused: neither a tar archive nor titled"
        return 2, "unpacked at the volume root, whiteouts applied"
    as_file = f"a file: the blob as {title}, mode 0644"
    if not rules.may_unpack(layer):
        return 4, as_file
    if layer.media_type != rules.OCI_TAR_GZIP:  # titled and still unpacked: Klaus content
        return 2, "unpacked at the volume root, whiteouts applied"
    if not store.has_blob(layer.digest, decoded=True):
        return None, f"extracted as {title}/ if every entry lies under it (rule 3), else {as_file} (rule 4)"
    alone = rules.build_tree(store.root, [layer], limits)
    if any(entry.source == blob_relpath(layer.digest) for entry in alone):
        return 4, as_file
    return 3, f"directory archive: extracted as {title}/"


def _load(
    store: Store, digest: str, ref: Reference
) -> tuple[dict[str, Any], manifest.ImageManifest | manifest.Index] | None:
    """A manifest or index the pull stored, raw and parsed; None if it never got that far."""
    if not store.has_blob(digest):
        return None
    data = store.read_blob(digest)
    return json.loads(data), manifest.parse(data, "", f"{ref.registry}/{ref.repository}@{digest}")


def _report(
    store: Store, ref: Reference, top: str, cfg: PullConfig, digest: str | None, error: errors.DriverError | None
) -> dict[str, Any]:
    report: dict[str, Any] = {"reference": str(ref), "digest": top}
    loaded = _load(store, top, ref)
    if loaded is not None:
        raw, doc = loaded
        media_type = raw.get("mediaType", "")
        kind = "image index" if isinstance(doc, manifest.Index) else "image manifest"
        report["kind"] = KINDS.get(media_type) or f"{kind} ({media_type or 'no mediaType'})"
        report["media_type"] = media_type
        report["artifact_type"] = raw.get("artifactType", "")
        if isinstance(doc, manifest.Index):
            report["platforms"] = [entry.platform for entry in doc.manifests]
            with contextlib.suppress(errors.NotFound):  # the pull's error says so, naming the platforms
                chosen = manifest.select_platform(doc, cfg.platform, str(ref))
                report["platform"] = chosen.platform
                loaded = _load(store, chosen.digest, ref)
                report["manifest"] = chosen.digest
        else:
            report["manifest"] = top
    verification = store.latest_verdict(report["manifest"], f"{ref.registry}/{ref.repository}") if "manifest" in report else None
    if verification is not None:  # only with --policy
        report["verification"] = verification
    if loaded is not None and isinstance(loaded[1], manifest.ImageManifest):
        image = loaded[1]
        report["config_media_type"] = image.config.media_type
        report["layers"] = [_layer(store, layer, cfg.limits) for layer in rules.layers_of(image)]
    if digest is not None:
        report["volume"] = _volume(store.load_tree(digest))
    if error is not None:
        report["error"] = {"code": error.code, "message": error.message}
    return report


def _layer(store: Store, layer: rules.Layer, limits: rules.Limits) -> dict[str, Any]:
    rule, effect = _placement(store, layer, limits)
    title = layer.annotations.get(rules.TITLE, "")
    return {
        "digest": layer.digest, "size": layer.size, "media_type": layer.media_type, "title": title, "rule": rule,
        "placement": effect,
    }


def _volume(entries: list[Entry]) -> dict[str, Any]:
    entries = [e for e in entries if e.path]  # the root is the mount point itself
    files = [e for e in entries if e.kind is Kind.FILE]
    return {
        "files": len(files),
        "directories": sum(1 for e in entries if e.kind is Kind.DIR),
        "symlinks": sum(1 for e in entries if e.kind is Kind.SYMLINK),
        "bytes": sum(e.size for e in files),
        "top_level": [e.path + "/" * (e.kind is Kind.DIR) for e in entries if "/" not in e.path],
        "entries": [
            {
                "path": e.path, "kind": e.kind, "mode": f"{e.mode:04o}",
                "uid": e.uid, "gid": e.gid, "size": e.size, "link": e.link,
            }
            for e in entries
        ],
    }


def _text(r: dict[str, Any], whole_tree: bool) -> str:
    pairs = [("reference", r["reference"]), ("digest", r["digest"])]
    if "kind" in r:
        pairs.append(("kind", r["kind"] + (f", artifact type {r['artifact_type']}" if r["artifact_type"] else "")))
    if "platforms" in r:
        chosen = f"; the volume uses {r['platform']}" if "platform" in r else ""
        pairs.append(("platforms", ", ".join(p or "(none)" for p in r["platforms"]) + chosen))
    if "manifest" in r and r["manifest"] != r["digest"]:
        pairs.append(("manifest", r["manifest"]))
    if "config_media_type" in r:
        pairs.append(("config", r["config_media_type"]))
    if "verification" in r:
        pairs.append(("verification", verdict(r["verification"])))
    parts = [fields(pairs)]
    if "layers" in r:
        rows = [
            (
                str(i), short(d["digest"]), size(d["size"]), d["media_type"], d["title"] or "-",
                str(d["rule"] or "3/4"), d["placement"],
            )
            for i, d in enumerate(r["layers"], 1)
        ]
        parts.append(table(("#", "layer", "size", "media type", "title", "rule", "placement"), rows))
    if "volume" in r:
        parts.append(_tree_text(r["volume"], whole_tree))
    if "error" in r:
        parts.append(f"the node would refuse this volume: {r['error']['code']}: {r['error']['message']}")
    return "\n\n".join(parts)


def _tree_text(v: dict[str, Any], whole_tree: bool) -> str:
    files = f"{plural(v['files'], 'file')} ({size(v['bytes'])})"
    counts = f"{files}, {plural(v['directories'], 'directory', 'directories')}, {plural(v['symlinks'], 'symlink')}"
    summary = f"the volume holds {counts}; at the top: {', '.join(v['top_level']) or '(nothing)'}"
    shown = v["entries"] if whole_tree else v["entries"][:LISTED]
    rows = [
        (
            stat.filemode(_TYPE_BITS[e["kind"]] | int(e["mode"], 8)), f"{e['uid']}:{e['gid']}",
            size(e["size"]) if e["kind"] == Kind.FILE else "-",
            e["path"] + (f" -> {e['link']}" if e["link"] else ""),
        )
        for e in shown
    ]
    lines = [summary, table(("mode", "owner", "size", "path"), rows)] if rows else [summary]
    if len(shown) < len(v["entries"]):
        lines.append(f"… and {len(v['entries']) - len(shown)} more (--tree lists every entry)")
    return "\n".join(lines)

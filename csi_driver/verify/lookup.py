"""Where a digest's signatures are: the OCI 1.1 referrers API, else the referrers tag schema,
then cosign's legacy ``sha256-<hex>.sig`` tag, all in the digest's own repository.

A registry without the referrers API answers it with 404 (distribution 2.8, Debian's
``docker-registry``, does): that is normal, and the tag schema (``sha256-<hex>``, an index the
signer maintains) stands in for it, as cosign and ORAS do. The ``.sig`` tag is read even when
referrers were found: cosign 2 signs there by default, and one repository may hold both.

Signatures are yielded lazily, in that order, so a verdict that is decided by the first one
fetches nothing more. Everything goes through the pull's registry client, so the lookups use the
pod's credentials, mirrors and time budget like the pull itself. What is fetched is bounded:
so many referrers, so many layers per signature manifest, so many bytes per signature blob
(real ones are a few KiB); past a bound a signature is reported as malformed, never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator

from csi_driver import errors
from csi_driver.reference import Reference, valid_digest
from csi_driver.registry.client import RegistryClient
from csi_driver.verify import bundle, cosign

# cosign 2 with --registry-referrers-mode=oci-1-1 stores a simple-signing manifest as a referrer.
COSIGN_SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIGNATURE_ARTIFACT_TYPES = frozenset({bundle.BUNDLE_TYPE, COSIGN_SIGNATURE_ARTIFACT})
MAX_REFERRERS = 16
MAX_LAYERS = 16
MAX_BLOB_BYTES = 256 * 1024

Signature = cosign.SimpleSigning | bundle.SigstoreBundle

log = logging.getLogger(__name__)


def signatures(client: RegistryClient, ref: Reference, subject: str) -> Iterator[Signature]:
    """Every signature the registry holds for ``subject`` (a digest) in ``ref``'s repository."""
    repository = Reference(ref.registry, ref.repository)
    hex_digest = subject.removeprefix("sha256:")
    index = client.fetch_referrers(repository, subject)
    source = "referrers API"
    if index is None:
        source = "referrers tag"
        tagged = _tagged(client, repository, f"sha256-{hex_digest}")
        index = tagged.data if tagged is not None else None
    if index is not None:
        for digest in _referrer_digests(index, source, subject)[:MAX_REFERRERS]:
            try:
                manifest = client.fetch_manifest(repository, digest)
            except errors.NotFound:  # a stale tag-schema index
                continue
            doc = _json(manifest.data)
            if not isinstance(doc, dict) or _subject_of(doc) != subject:
                log.warning("%s of %s lists %s, which does not refer to it; ignored", source, subject, digest)
                continue
            yield from _layer_signatures(client, repository, doc, source)
    tagged = _tagged(client, repository, f"sha256-{hex_digest}.sig")
    if tagged is not None:
        doc = _json(tagged.data)
        if isinstance(doc, dict):
            yield from _layer_signatures(client, repository, doc, "cosign .sig tag")


def _tagged(client: RegistryClient, repository: Reference, tag: str):
    try:
        return client.fetch_tagged(Reference(repository.registry, repository.repository, tag=tag))
    except errors.NotFound:
        return None


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _subject_of(doc: dict) -> str | None:
    subject = doc.get("subject")
    return subject.get("digest") if isinstance(subject, dict) else None


def _referrer_digests(index: bytes, source: str, subject: str) -> list[str]:
    """The digests of the signature manifests an index of referrers lists."""
    doc = _json(index)
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        log.warning("the %s of %s is not an image index; ignored", source, subject)
        return []
    return [
        entry["digest"]
        for entry in entries
        if isinstance(entry, dict)
        and entry.get("artifactType") in SIGNATURE_ARTIFACT_TYPES
        and isinstance(entry.get("digest"), str)
        and valid_digest(entry["digest"])
    ]


def _layer_signatures(client: RegistryClient, repository: Reference, doc: dict, source: str) -> Iterator[Signature]:
    """The signatures the layers of one signature manifest carry (one per layer)."""
    layers = doc.get("layers")
    if not isinstance(layers, list):
        return
    for layer in layers[:MAX_LAYERS]:
        if not isinstance(layer, dict) or layer.get("mediaType") not in (cosign.SIMPLE_SIGNING, bundle.BUNDLE_TYPE):
            continue
        is_bundle = layer["mediaType"] == bundle.BUNDLE_TYPE
        data = _blob(client, repository, layer)
        if isinstance(data, str):
            yield bundle.SigstoreBundle(source, problem=data) if is_bundle else cosign.SimpleSigning(source, problem=data)
        elif is_bundle:
            yield bundle.parse(data, source)
        else:
            yield cosign.parse(layer, data, source)


def _blob(client: RegistryClient, repository: Reference, layer: dict) -> bytes | str:
    """A signature layer's blob, verified; or why it was not read."""
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(digest, str) or not valid_digest(digest) or not isinstance(size, int):
        return "its layer descriptor has no valid digest and size"
    if size > MAX_BLOB_BYTES:
        return f"its blob {digest} is {size} bytes, more than the {MAX_BLOB_BYTES} a signature may have"
    data = bytearray()
    with client.open_blob(repository, digest) as chunks:
        for chunk in chunks:
            data += chunk
            if len(data) > size:
                break
    if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise errors.DataLoss(
            f"signature blob {digest} of {repository}: the registry sent other content; "
            "the registry or a proxy on the way altered it; retry, and report it if it persists"
        )
    return bytes(data)

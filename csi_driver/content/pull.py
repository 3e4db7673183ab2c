"""Reference + pull policy → the digest of a complete tree in the store.

This is the middle of the data flow: it asks the registry (``registry.py``) only
as much as the pull policy requires, hands bytes to the store (``store.py``) to
verify, and lets ``rules.py`` turn the layers into a tree, which the store then
commits. It never touches a mount.

Pull policies follow KEP-4639: ``IfNotPresent`` and ``Never`` reuse the node's
last resolution of the reference when its tree is complete (a digest reference
needs no network once its content is here); ``Always`` asks the registry which
digest the tag names now, and still reuses every blob already stored.

A tree the node recorded under older layout rules (``LAYOUT_VERSION``) is not complete: it is
built again from the manifest and layers the node stores, without the registry (so ``Never``
still works), and committed again under its digest; only what is missing is fetched, and only
where the policy allows it.

A tree pulled with credentials is private: whenever it is handed out without
this call having asked the registry for the tag with the pod's credentials, the
pod's access is verified first (``authorize.py``), whatever the pull policy.

With a verification policy (``--policy``), every tree handed out has the policy's verdict for
the repository it is named in, whatever the pull policy and however the tree came to be on the
node: a new digest is verified after resolution and before any layer is fetched, with the pod's
registry client; the verdict is kept in the store, so a warm publish asks the registry nothing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from csi_driver import errors, metrics, progress
from csi_driver.content.store import Store
from csi_driver.layout import rules, manifest
from csi_driver.reference import Reference
from csi_driver.registry.authorize import AccessChecks
from csi_driver.registry.client import RegistryClient, RegistryConfig
from csi_driver.registry.credentials import Credentials

if TYPE_CHECKING:  # csi_driver.verify loads sigstore: imported only where --policy is given
    from csi_driver.verify.gate import Gate

LAYER_WORKERS = 4
REFUSAL_TTL = 5.0
"""Seconds an enforced refusal is remembered (see ``_verify``)."""
log = logging.getLogger("oci-volume-csi")


@dataclass(frozen=True)
class PullConfig:
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    platform: str = field(default_factory=manifest.node_platform)
    limits: rules.Limits = field(default_factory=rules.Limits)
    max_layers: int = 128
    verification: Gate | None = None  # the node's --policy, if it has one


def pull(
    store: Store,
    ref: Reference,
    policy: str,
    credentials: Credentials | None,
    cfg: PullConfig,
    access: AccessChecks,
    platform: str = "",
) -> str:
    """Make sure the tree for ``ref`` is committed and the pod may have it; return its digest.

    ``platform`` overrides ``cfg.platform`` (the node's, or ``--platform``) for one volume.
    """
    try:
        digest, source = _pull(store, ref, policy, credentials, cfg, access, platform)
    except errors.DriverError as exc:
        metrics.PULLS.labels(exc.code).inc()
        raise
    metrics.PULLS.labels(source).inc()
    return digest


def _pull(
    store: Store,
    ref: Reference,
    policy: str,
    credentials: Credentials | None,
    cfg: PullConfig,
    access: AccessChecks,
    platform: str,
) -> tuple[str, str]:
    """``pull`` itself; also says where the answer came from ("node" or "registry")."""
    key = str(ref)
    platform = platform or cfg.platform
    client = RegistryClient(cfg.registry, credentials)
    if policy != "Always":
        local = _node_tree(store, ref, key, platform)
        if local and not store.committed(local):  # built by older rules
            local = _rebuild(store, ref, local, cfg, platform)
        if local:
            _authorize(store, access, client, credentials, ref, local)
            _verify(store, cfg, client, ref, local, None)
            return local, "node"
        if policy == "Never":
            raise errors.FailedPrecondition(
                f"{ref} is not on this node and pullPolicy is Never; pull it once with IfNotPresent or Always, "
                "or pre-load the node"
            )
    top = _resolve(store, client, ref, key, platform)
    digest, image = _image_manifest(store, client, ref, top, platform)
    _verify(store, cfg, client, ref, digest, top)  # before a layer is fetched or the tree committed
    _ensure_tree(store, client, ref, top, digest, image, cfg, private=credentials is not None)
    if ref.digest:  # resolve() asked nothing, and the tree may have been on the node already
        _authorize(store, access, client, credentials, ref, digest)
    store.record_resolution(key, platform, digest)
    return digest, "registry"


def _resolve(store: Store, client: RegistryClient, ref: Reference, key: str, platform: str) -> str:
    """The digest ``ref`` names at the registry now.

    A tag this node never resolved has no content here to reuse: its manifest is fetched by the
    tag in one GET (stored, so ``_ensure_tree`` does not ask again) instead of a HEAD and then a
    GET by digest, one round trip less on every first pull. Otherwise a HEAD settles it.
    """
    if ref.digest or store.resolution(key, platform):
        return client.resolve(ref)
    fetched = client.fetch_tagged(ref)
    with store.single_flight(fetched.digest):
        if not store.has_blob(fetched.digest):
            store.put_bytes(fetched.digest, fetched.data)
    return fetched.digest


def _authorize(
    store: Store,
    access: AccessChecks,
    client: RegistryClient,
    credentials: Credentials | None,
    ref: Reference,
    digest: str,
) -> None:
    if store.private(digest):
        access.verify(client, credentials, ref, digest)


def _verify(store: Store, cfg: PullConfig, client: RegistryClient, ref: Reference, tree: str, top: str | None) -> None:
    """Refuse ``tree`` (PERMISSION_DENIED) unless the node's policy allows it for ``ref``'s
    repository; ``top`` is the digest ``ref`` resolved to, None when the tree came from the node.

    The verdict is kept in the store under the tree's digest, the repository (rules match
    repositories, so one digest may be refused in one and allowed in another) and the policy's
    hash (a changed policy verifies afresh). An acceptance, or an audited refusal, is kept for
    good: the digest's bytes cannot change. An enforced refusal is kept ``REFUSAL_TTL`` seconds
    only: a rollout's pods and the kubelet's first quick retries cost one lookup, and a
    signature pushed after the refusal lets the next retry mount.
    """
    gate = cfg.verification
    if gate is None:
        return
    policy = gate.current()
    repository = f"{ref.registry}/{ref.repository}"
    known = store.verdict(tree, repository, policy.hash)
    if known is None:
        subjects = tuple(dict.fromkeys((top or ref.digest or _index_of(store, ref, tree, cfg) or tree, tree)))
        verdict = gate.verify(policy, client, ref, subjects)
        known = {**dataclasses.asdict(verdict), "result": verdict.result, "subjects": list(subjects), "policy": policy.hash}
        expires = None if verdict.allowed else time.time() + REFUSAL_TTL
        store.record_verdict(tree, repository, policy.hash, verdict.allowed, known, expires)
    if not known["allowed"]:
        raise errors.PermissionDenied(known["message"])


def _index_of(store: Store, ref: Reference, tree: str, cfg: PullConfig) -> str | None:
    """The index this node resolved to ``tree`` when it pulled it, if it was one: the node's
    resolution of a tag names the tree only, and its blobs hold the index. Only for a tree on
    the node without a verdict (pulled before the policy, or before it changed)."""
    for digest, size in store.tree_blobs(tree):
        if digest == tree or size > cfg.registry.max_manifest_bytes:
            continue
        try:
            doc = manifest.parse(store.read_blob(digest), "", _where(ref, digest))
        except errors.DriverError:  # a layer
            continue
        if isinstance(doc, manifest.Index) and any(entry.digest == tree for entry in doc.manifests):
            return digest
    return None


def _node_tree(store: Store, ref: Reference, key: str, platform: str) -> str | None:
    """The tree this node last resolved ``ref`` to, found without the network: committed, or
    recorded under older layout rules (``_rebuild``)."""
    known = store.resolution(key, platform)
    if known and store.layout(known) is not None:
        return known
    local = _local_tree(store, ref, platform) if ref.digest else None
    if local:
        store.record_resolution(key, platform, local)
    return local


def _where(ref: Reference, digest: str) -> str:
    return f"{ref.registry}/{ref.repository}@{digest}"


def _local_tree(store: Store, ref: Reference, platform: str) -> str | None:
    """The tree (of any layout version) a digest reference names, found without the network."""
    assert ref.digest
    if store.layout(ref.digest) is not None:
        return ref.digest
    if not store.has_blob(ref.digest):
        return None
    doc = manifest.parse(store.read_blob(ref.digest), "", _where(ref, ref.digest))
    if isinstance(doc, manifest.Index):
        chosen = manifest.select_platform(doc, platform, _where(ref, ref.digest)).digest
        return chosen if store.layout(chosen) is not None else None
    return None


class _NotStored(Exception):
    """``_rebuild`` needs a blob the node does not store."""


def _rebuild(store: Store, ref: Reference, digest: str, cfg: PullConfig, platform: str) -> str | None:
    """Commit again, under the current layout rules, a tree recorded under older ones, from the
    manifest and layers the node stores, without the registry; None when one of them is gone (the
    cache removed it, older rules never needed it, or the store keeps only the inflated tar of a
    blob the current rules show as a file), so that the caller pulls or refuses.

    A layer that older rules placed as a file (a ToolHive plugin's ``plugin.tar.gz``) is stored
    as its blob only: it is inflated from there (``_ensure_layer``), not fetched again. The tree
    keeps its privacy: access to a private one is checked as for any tree already on the node.
    """
    try:
        digest, image = _image_manifest(store, None, ref, digest, platform)
        _ensure_tree(store, None, ref, digest, digest, image, cfg, private=store.private(digest))
    except _NotStored:
        return None
    return digest


def _manifest_bytes(store: Store, client: RegistryClient | None, ref: Reference, digest: str) -> tuple[bytes, str]:
    with store.single_flight(digest):
        if store.has_blob(digest):
            return store.read_blob(digest), ""
        if client is None:
            raise _NotStored(digest)
        fetched = client.fetch_manifest(ref, digest)
        store.put_bytes(digest, fetched.data)
        return fetched.data, fetched.media_type


def _image_manifest(
    store: Store, client: RegistryClient | None, ref: Reference, top: str, platform: str
) -> tuple[str, manifest.ImageManifest]:
    data, media_type = _manifest_bytes(store, client, ref, top)
    doc = manifest.parse(data, media_type, _where(ref, top))
    if isinstance(doc, manifest.ImageManifest):
        return top, doc
    chosen = manifest.select_platform(doc, platform, _where(ref, top)).digest
    data, media_type = _manifest_bytes(store, client, ref, chosen)
    inner = manifest.parse(data, media_type, _where(ref, chosen))
    if not isinstance(inner, manifest.ImageManifest):
        raise errors.InvalidArgument(f"{_where(ref, chosen)}: an index inside an index is not supported")
    return chosen, inner


def _ensure_tree(
    store: Store,
    client: RegistryClient | None,
    ref: Reference,
    top: str,
    digest: str,
    image: manifest.ImageManifest,
    cfg: PullConfig,
    private: bool,
) -> None:
    """Commit the tree of ``image`` (``digest``, which ``top`` resolved to) unless it is already.
    With no ``client`` only stored blobs are used (``_NotStored`` when one is missing)."""
    with store.single_flight(digest):
        if store.committed(digest):
            return
        if len(image.layers) > cfg.max_layers:
            raise errors.ResourceExhausted(
                f"{_where(ref, digest)} has {len(image.layers)} layers, more than the limit of {cfg.max_layers} "
                "set by --max-layers"
            )
        # Bounded before any download: a plain tar or an ORAS file is not inflated, so only its
        # declared size (which the store enforces while fetching) stops a registry sending terabytes.
        declared = sum({d.digest: d.size for d in image.layers}.values())
        if declared > cfg.limits.max_unpacked_bytes:
            raise errors.ResourceExhausted(
                f"{_where(ref, digest)} declares layers of {declared} bytes, more than the limit of "
                f"{cfg.limits.max_unpacked_bytes} set by --max-unpacked-bytes; raise the flag if the artifact is legitimate"
            )
        layers = rules.layers_of(image)
        start = time.monotonic()
        builder = rules.TreeBuilder(store.root, layers, cfg.limits)
        with progress.tracking(str(ref), digest, sum(layer.size for layer in layers)) as tracked:
            _ensure_layers(store, client, ref, layers, cfg.limits, builder.fetched, tracked)
        log.debug(
            "pulled %s: %d layers, %d bytes in %.2f s",
            _where(ref, digest), len(layers), sum(layer.size for layer in layers), time.monotonic() - start,
        )  # fmt: skip
        entries = builder.entries()
        blobs = {top, digest, *(layer.digest for layer in layers)}
        store.commit_tree(digest, entries, private=private, blobs=sorted(blobs))


def _ensure_layers(
    store: Store,
    client: RegistryClient | None,
    ref: Reference,
    layers: list[rules.Layer],
    limits: rules.Limits,
    fetched: Callable[[int], None],
    tracked: progress.Pull,
) -> None:
    """Fetch the layers concurrently, calling ``fetched(index)`` in this thread as each is stored,
    and counting their bytes in ``tracked``.

    Each download overlaps another's hashing and inflating, and (through ``fetched``) the
    reading and placing of the layers already stored; on two cores a multi-layer image is
    otherwise bound by one step at a time. The first failure is raised; layers not yet started
    are cancelled.
    """
    if len(layers) == 1:
        _ensure_layer(store, client, ref, layers[0], limits, tracked)
        fetched(0)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(layers), LAYER_WORKERS)) as pool:
        futures = {
            pool.submit(_ensure_layer, store, client, ref, layer, limits, tracked): i for i, layer in enumerate(layers)
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
                fetched(futures[future])
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _ensure_layer(
    store: Store,
    client: RegistryClient | None,
    ref: Reference,
    layer: rules.Layer,
    limits: rules.Limits,
    tracked: progress.Pull,
) -> None:
    """Store what the rules read of the layer: its inflated tar when a rule may read it as a
    compressed tar, and the blob itself unless only its tar is ever read (``rules.tar_only``).

    What the store already holds is not fetched again: a blob stored without its inflated tar
    (placed as a file by older rules, or by another artifact that titles the same blob) is
    inflated from the store. A blob kept only as its tar that this layer needs as it was served
    (another artifact placed the same digest by rules 0 to 2) is fetched, or ``_NotStored``
    without a client.
    """
    compression = rules.compression(layer.media_type) if rules.may_unpack(layer) else None
    with store.single_flight(layer.digest):
        inflate = bool(compression) and not store.has_blob(layer.digest, decoded=True)
        stored = store.has_blob(layer.digest)
        keep = not rules.tar_only(layer) and not stored
        if not inflate and not keep:
            metrics.BLOBS.labels("cache").inc()
            tracked.skip(layer.size)
            return
        if not stored and client is None:
            raise _NotStored(layer.digest)
        source = "cache" if stored else "registry"
        opened = store.open_blob(layer.digest) if stored else client.open_blob(ref, layer.digest)  # type: ignore[union-attr]
        with opened as chunks:
            store.put_blob(
                layer.digest,
                tracked.counted(chunks),
                expected_size=layer.size,
                compression=compression if inflate else None,
                max_decoded_bytes=limits.max_unpacked_bytes,
                what=f"layer {layer.digest} ({layer.media_type}) of {ref}",
                keep=keep,
            )
        metrics.BLOBS.labels(source).inc()
        if not stored:
            metrics.FETCHED_BYTES.inc(layer.size)

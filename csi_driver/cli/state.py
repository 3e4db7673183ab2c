"""``inspect``, ``cache ls`` and ``cache gc``: what the node's state dir and mount table say.

These read the driver's own records (``publications.db``, ``store.db``) and the kernel's
mount table directly, with no RPC, so they answer even when ``serve`` is down, which is
when an admin most needs them. Health comes from the mount table and a ``statfs`` of the
target, the same checks ``serve`` uses to decide what to repair.
"""

from __future__ import annotations

import argparse
import collections
import os
from pathlib import Path
from typing import Any

from csi_driver import errors
from csi_driver.cli.output import emit, fields, iso, plural, short, table, verdict, when
from csi_driver.content.cache import IN_USE, Budget, Tree, cache_bytes, collect
from csi_driver.content.store import Store
from csi_driver.mounts import kernel
from csi_driver.mounts.publications import Publication, Publications
from csi_driver.reference import parse_reference
from csi_driver.units import size
from csi_driver.views.choose import Copies


def open_state(path: str) -> tuple[Store, Publications]:
    """The store and records of a state dir that ``serve`` has used; never a fresh one."""
    state = Path(path)
    if not (state / "store.db").is_file():
        raise errors.NotFound(f"{state} holds no driver state: pass the --state-dir that `oci-volume-csi serve` uses")
    return Store(state), Publications(state)


def _volume(store: Store, pub: Publication) -> dict[str, Any]:
    size_bytes, entries = store.usage(pub.digest)
    ref = parse_reference(pub.reference)
    return {
        "volume_id": pub.volume_id,
        "target": pub.target,
        "reference": pub.reference,
        "digest": pub.digest,
        "pod": f"{pub.pod_namespace}/{pub.pod_name}" if pub.pod_name else "",
        "pod_uid": pub.pod_uid,
        "mode": pub.mode,
        "mounted_since": iso(pub.published_at),
        "bytes": size_bytes,
        "entries": entries,
        "health": kernel.target_state(pub.target),
        "verification": store.latest_verdict(pub.digest, f"{ref.registry}/{ref.repository}"),
    }


def _volume_text(v: dict[str, Any]) -> str:
    return fields(
        [
            ("volume id", v["volume_id"]),
            ("target", v["target"]),
            ("reference", v["reference"]),
            ("digest", v["digest"]),
            ("pod", f"{v['pod'] or '(unknown)'} (uid {v['pod_uid'] or 'unknown'})"),
            ("mode", v["mode"]),
            ("mounted since", when(v["mounted_since"])),
            ("content", f"{size(v['bytes'])} in {v['entries']} entries"),
            ("health", v["health"]),
            ("verification", verdict(v["verification"])),
        ]
    )


def _volumes_text(volumes: list[dict[str, Any]]) -> str:
    if not volumes:
        return "nothing is published on this node"
    header = ("health", "pod", "reference", "digest", "mode", "mounted since", "target")
    rows = [
        (v["health"], v["pod"], v["reference"], short(v["digest"]), v["mode"], when(v["mounted_since"]), v["target"])
        for v in volumes
    ]
    return table(header, rows)


def inspect(args: argparse.Namespace) -> int:
    """One volume by target or volume id, or every volume the node publishes."""
    store, publications = open_state(args.state_dir)
    if args.volume is None:
        emit(args.output, [_volume(store, pub) for pub in publications.all()], _volumes_text)
        return 0
    pub = publications.by_volume(args.volume) or publications.by_target(os.path.abspath(args.volume))
    if pub is None:
        raise errors.NotFound(
            f"nothing is published as {args.volume} (state dir {args.state_dir}); "
            "`oci-volume-csi inspect` lists what is"
        )
    emit(args.output, _volume(store, pub), _volume_text)
    return 0


def cache_ls(args: argparse.Namespace) -> int:
    """Every complete artifact in the store, most recently used first."""
    store, publications = open_state(args.state_dir)
    pubs = publications.all()
    in_use = collections.Counter(pub.digest for pub in pubs)
    references = store.references()
    for pub in pubs:  # a tag that moved on still names the old digest for the pods that mount it
        if pub.reference not in references.setdefault(pub.digest, []):
            references[pub.digest].append(pub.reference)
    digests = []
    for digest, last_used in reversed(store.trees_by_age()):
        size_bytes, entries = store.usage(digest)
        digests.append(
            {
                "digest": digest,
                "references": sorted(references.get(digest, [])),
                "bytes": size_bytes,
                "entries": entries,
                "last_used": iso(last_used),
                "in_use": in_use[digest],
            }
        )
    emit(args.output, {"cache_bytes": cache_bytes(store, Copies(store)), "digests": digests}, _cache_text)
    return 0


def _cache_text(cache: dict[str, Any]) -> str:
    rows = [
        (
            d["digest"], size(d["bytes"]), str(d["entries"]), when(d["last_used"]),
            plural(d["in_use"], "volume") if d["in_use"] else "-",
            ", ".join(d["references"]) or "-",
        )
        for d in cache["digests"]
    ]
    used = sum(1 for d in cache["digests"] if d["in_use"])
    summary = f"{plural(len(rows), 'digest')}, {used} in use; {size(cache['cache_bytes'])} on disk (blobs, layers, trees)"
    if not rows:
        return summary
    return table(("digest", "size", "entries", "last used", "in use", "references"), rows) + "\n" + summary


def cache_gc(args: argparse.Namespace) -> int:
    """Collect now what ``serve`` would collect next: unused content, least recently used first."""
    store, publications = open_state(args.state_dir)
    volumes = collections.Counter(pub.digest for pub in publications.all())
    report = collect(store, Copies(store), set(volumes), Budget(args.cache_max_bytes, args.cache_min_free, args.grace))

    def tree(t: Tree) -> dict[str, Any]:
        return {"digest": t.digest, "bytes": t.bytes, "last_used": iso(t.last_used)}

    result = {
        "removed": [tree(t) for t in report.removed],
        "kept": [{**tree(t), "reason": t.reason, "volumes": volumes[t.digest]} for t in report.kept],
        "grace_seconds": args.grace,
        "freed_bytes": report.freed_bytes,
        "cache_bytes": report.cache_bytes,
        "over_budget_bytes": report.over_budget_bytes,
        "over_budget_because": report.why_over(args.grace) if report.over_budget_bytes else "",
    }
    emit(args.output, result, _gc_text)
    return 0


def _gc_text(r: dict[str, Any]) -> str:
    rows = [("removed", t["digest"], size(t["bytes"]), when(t["last_used"]), "unused") for t in r["removed"]]
    for t in r["kept"]:
        why = (
            f"in use by {plural(t['volumes'], 'volume')}" if t["reason"] == IN_USE
            else f"used in the last {r['grace_seconds']:.0f} s (--grace)"
        )  # fmt: skip
        rows.append(("kept", t["digest"], size(t["bytes"]), when(t["last_used"]), why))
    on_disk = f"{size(r['cache_bytes'])} on disk (blobs, layers, trees)"
    if r["over_budget_bytes"]:
        summary = f"freed {size(r['freed_bytes'])}; {on_disk}; still {size(r['over_budget_bytes'])} over budget: {r['over_budget_because']}"
    elif rows:
        summary = f"freed {size(r['freed_bytes'])}; {on_disk}; within budget"
    else:
        return f"within budget, nothing to remove; {on_disk}"
    return table(("", "digest", "size", "last used", "why"), rows) + "\n" + summary

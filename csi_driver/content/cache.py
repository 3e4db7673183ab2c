"""Cache budget: remove least-recently-used content no publication uses, until under budget.

``--cache-max-bytes`` caps what the store holds; ``--cache-min-free`` keeps that much
of the state dir's file system free (a fraction like ``10%`` or a size). Content in
use is never removed, even when that leaves the budget exceeded: a log line says so, and why.
Blobs shared by several artifacts stay while any of them needs one (the store
keeps which blobs each tree needs). A tree used in the last ``grace`` seconds is
kept too, so a publish between its pull and its record cannot lose its content.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from csi_driver import metrics, units
from csi_driver.content.store import Store

log = logging.getLogger("oci-volume-csi")


class ViewCopies(Protocol):
    """What the views keep of a digest outside the store (bind mode's extracted trees): the
    budget counts it, and a digest's is released before its content is removed. The views
    provide one (``csi_driver.views.choose.Copies``); the store never reaches for them."""

    def held_bytes(self, digest: str) -> int: ...

    def release(self, digest: str) -> None: ...


@dataclass(frozen=True)
class Budget:
    max_bytes: int | None = None
    min_free: float | int = 0.10  # a float is a fraction of the file system, an int bytes
    grace: float = 300.0


IN_USE, RECENT = "in use", "recently used"


@dataclass(frozen=True)
class Tree:
    """A tree the collector looked at, and removed, or kept for ``reason``."""

    digest: str
    last_used: float
    bytes: int  # its unpacked size, as ``cache ls`` shows it
    reason: str = ""  # IN_USE or RECENT when kept


@dataclass
class Report:
    removed: list[Tree] = field(default_factory=list)
    kept: list[Tree] = field(default_factory=list)  # looked at while over budget, and not removable
    freed_bytes: int = 0
    cache_bytes: int = 0
    over_budget_bytes: int = 0
    free_bytes: int = 0  # on the state dir's file system, after collecting
    wanted_free_bytes: int = 0  # what --cache-min-free asks for

    def why_over(self, grace: float) -> str:
        """Why collection ended over budget, for a person: what it had to keep, or that it found
        nothing more to remove (the rest is blobs of pulls in flight, or other files fill the disk)."""
        in_use = sum(1 for tree in self.kept if tree.reason == IN_USE)
        recent = len(self.kept) - in_use
        parts = [f"{in_use} in use"] if in_use else []
        if recent:
            parts.append(f"{recent} used in the last {grace:.0f} s (--grace)")
        why = f"kept {' and '.join(parts)}" if parts else "no complete artifact is left that may be removed"
        if self.free_bytes < self.wanted_free_bytes:
            why += (
                f"; the file system has {units.size(self.free_bytes)} free and --cache-min-free asks for "
                f"{units.size(self.wanted_free_bytes)}"
            )
        return why


def cache_bytes(store: Store, copies: ViewCopies) -> int:
    """What the store holds on disk: blobs, inflated layers, and the views' copies (bind-mode trees)."""
    return store.stored_bytes() + sum(copies.held_bytes(d) for d in store.committed_digests())


def _free(store: Store, budget: Budget) -> tuple[int, int]:
    """(free bytes, free bytes wanted) on the state dir's file system."""
    fs = os.statvfs(store.root)
    total, free = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
    return free, int(total * budget.min_free) if isinstance(budget.min_free, float) else budget.min_free


def _excess(store: Store, copies: ViewCopies, budget: Budget) -> int:
    """Bytes to free to meet the budget (0 when met)."""
    excess = 0
    if budget.max_bytes is not None:
        excess = cache_bytes(store, copies) - budget.max_bytes
    free, wanted_free = _free(store, budget)
    return max(excess, wanted_free - free, 0)


def collect(store: Store, copies: ViewCopies, in_use: set[str], budget: Budget) -> Report:
    """Remove unused trees, least recently used first, while the budget is exceeded."""
    report = Report()
    now = time.time()
    for digest, last_used in store.trees_by_age():
        if _excess(store, copies, budget) <= 0:
            break
        if digest in in_use or last_used > now - budget.grace:
            reason = IN_USE if digest in in_use else RECENT
            report.kept.append(Tree(digest, last_used, store.usage(digest)[0], reason))
            continue
        with store.single_flight(digest):
            before = cache_bytes(store, copies)
            removed = Tree(digest, last_used, store.usage(digest)[0])
            store.remove_tree(digest)
            copies.release(digest)
            store.remove_unused_blobs(older_than=now - budget.grace)
            report.freed_bytes += before - cache_bytes(store, copies)
        report.removed.append(removed)
        log.info("cache: removed %s, unused since %s", digest, time.strftime("%F %T", time.localtime(last_used)))
    report.cache_bytes = cache_bytes(store, copies)
    report.over_budget_bytes = _excess(store, copies, budget)
    report.free_bytes, report.wanted_free_bytes = _free(store, budget)
    if report.over_budget_bytes:
        metrics.CACHE_OVER_BUDGET.inc()
        log.warning(
            "cache: still %s over budget with %s cached: %s",
            units.size(report.over_budget_bytes), units.size(report.cache_bytes), report.why_over(budget.grace),
        )  # fmt: skip
    return report


def keep_within_budget(
    store: Store,
    copies: ViewCopies,
    in_use: Callable[[], set[str]],
    budget: Budget,
    stop: threading.Event,
    wake: threading.Event,
    interval: float = 60.0,
    min_gap: float = 5.0,
) -> None:
    """Collect every ``interval`` seconds and when woken (after a publish), at most every ``min_gap``."""
    while not stop.is_set():
        wake.wait(interval)
        wake.clear()
        if stop.is_set():
            return
        try:
            collect(store, copies, in_use(), budget)
        except Exception:  # noqa: BLE001 - a failed round must not end collection for good
            log.exception("cache: collection failed; retrying later")
        stop.wait(min_gap)

"""Records of what this node publishes: volume id → target, reference, digest, pod.

Kept in SQLite beside the store so that a restarted driver knows what it serves,
can re-bind targets when a view is replaced, and never removes content in use.
A record is written after the mount succeeds and dropped after the unmount, so a
crash in between leaves at worst a record whose target the next start reconciles.
Commits are not flushed to the disk: a record survives the driver being killed, and a
power loss, which might lose the last few, unmounts every volume anyway.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from csi_driver.database import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS publications (
    volume_id TEXT PRIMARY KEY,
    target TEXT NOT NULL UNIQUE,
    reference TEXT NOT NULL,
    digest TEXT NOT NULL,
    mode TEXT NOT NULL,
    pod_namespace TEXT NOT NULL,
    pod_name TEXT NOT NULL,
    pod_uid TEXT NOT NULL,
    published_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Publication:
    volume_id: str
    target: str
    reference: str
    digest: str
    mode: str
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    published_at: float = 0.0


class Publications:
    """The table of publications; one connection per thread, safe from grpc's pool."""

    def __init__(self, state_dir: Path) -> None:
        self._path = Path(state_dir) / "publications.db"
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_database(self._path)
        return conn

    def _one(self, where: str, value: str) -> Publication | None:
        row = self._conn().execute(f"SELECT * FROM publications WHERE {where} = ?", (value,)).fetchone()
        return Publication(*row) if row else None

    def by_volume(self, volume_id: str) -> Publication | None:
        return self._one("volume_id", volume_id)

    def by_target(self, target: str) -> Publication | None:
        return self._one("target", target)

    def all(self) -> list[Publication]:
        return [Publication(*row) for row in self._conn().execute("SELECT * FROM publications ORDER BY volume_id")]

    def record(self, pub: Publication) -> None:
        row = astuple(replace(pub, published_at=pub.published_at or time.time()))
        self._conn().execute("INSERT OR REPLACE INTO publications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def drop(self, volume_id: str) -> None:
        self._conn().execute("DELETE FROM publications WHERE volume_id = ?", (volume_id,))

"""How the driver opens its SQLite files: the store's metadata and the publication records.

Both steps keep their own file but want the same settings, so one function says them once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path) -> sqlite3.Connection:
    """A connection to one of the driver's SQLite files (the store's, the publications').

    Autocommit (transactions are explicit), WAL so that readers in other threads and in the
    FUSE view never wait on a writer, and commits that reach the OS but are not flushed to the
    disk (``synchronous=NORMAL``): everything survives a killed driver; a power loss, which
    might lose the last commits, also unmounts every volume, and the next start reconciles.
    The store's rows that say content is complete need no flush of their own either: the
    content is on the disk before such a row is written (``commit_file``, bind mode's trees),
    so losing the row loses only the record, which the next publish writes again; flushing
    every commit would cost each publish a disk flush and buy nothing: a lost row is never a
    wrong one.
    """
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn

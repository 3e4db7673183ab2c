"""The table of what this node publishes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from csi_driver.mounts.publications import Publication, Publications

PUB = Publication(volume_id="csi-1", target="/var/lib/kubelet/pods/p/volumes/v/mount", reference="r:v1",
                  digest="sha256:" + "0" * 64, mode="fuse")  # fmt: skip


def test_a_record_is_committed_without_waiting_for_the_disk(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL: a commit is written to the OS, not fsynced (~0.2 ms each on
    the bench's ext4, a disk flush on a node's). A power loss unmounts every volume anyway, and
    the next start reconciles records against the mount table."""
    publications = Publications(tmp_path)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(publications._conn().execute("PRAGMA synchronous").fetchone()))
    worker.start()
    worker.join()
    assert answers == [(1,)]  # NORMAL, in every thread's connection


def test_a_record_survives_the_driver_being_killed_right_after_it(tmp_path: Path) -> None:
    script = (
        "import os, sys; from csi_driver.mounts.publications import Publication, Publications; "
        f"Publications(sys.argv[1]).record(Publication(*{tuple(PUB.__dict__.values())!r})); os._exit(0)"
    )  # os._exit: no close, no checkpoint, as after SIGKILL
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    found = Publications(tmp_path).by_volume(PUB.volume_id)
    assert found is not None and found.target == PUB.target

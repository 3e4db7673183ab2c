"""How ``serve`` sets up what answers the kubelet."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from csi_driver.publications import Publications
from csi_driver.server import worker_pool
from csi_driver.store import Store


def test_a_grpc_worker_opens_its_database_connections_before_its_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, publications = Store(tmp_path), Publications(tmp_path)
    in_call = threading.local()
    opened_in_call = []
    real_connect = sqlite3.connect

    def counting_connect(*args, **kwargs):
        if getattr(in_call, "active", False):
            opened_in_call.append(args[0])
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counting_connect)  # the module both tables use

    def call() -> None:  # what a publish asks first of both
        in_call.active = True
        publications.by_target("/var/lib/kubelet/pods/x/volumes/y/mount")
        store.resolution("registry.example/plugin:v1", "linux/amd64")

    with worker_pool(2, store, publications) as pool:
        pool.submit(call).result()
    assert opened_in_call == []

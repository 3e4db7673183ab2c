"""Long runs (issue 6): 1,000 publish/unpublish cycles across 10 references, nothing leaks.

Marked slow (``-m "not slow"`` skips it by hand); CI runs it. RSS at start and end is
printed for bench/RESULTS.md, not asserted: targets live in benchmarks.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import sqlite3
from pathlib import Path

import pytest

from artifacts import PLUGIN_TREE, push_klaus
from csi_driver.mounts import kernel
from driver import Driver, run_driver
from kubelet import publish_request, target_for, unpublish_request
from test_restarts import fuse_pid

CYCLES = 1000
REFERENCES = 10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def processes(driver: Driver, mode: str) -> dict[str, int]:
    found = {"serve": driver.process.pid}
    if mode == "fuse":
        found["fuse"] = fuse_pid(driver)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bind", "fuse", "erofs"])
def test_thousand_publish_unpublish_cycles_leak_nothing(
    mode: str, registry: str, tmp_path: Path, kubelet_root: Path
) -> None:
    references = []
    for i in range(REFERENCES):
        tree = dict(PLUGIN_TREE)
        tree[".claude-plugin/plugin.json"] = (json.dumps({"name": f"soak-{i}"}).encode(), 0o644)
        references.append(push_klaus(registry, f"soak/plugin-{i}:v1", tree, tmp_path / f"push-{i}").reference)
    rng = random.Random(1)
    with run_driver(tmp_path, registry, mode) as d:
        # Warm up every reference and every gRPC worker thread (each keeps its own SQLite
        # connections), so that what is counted afterwards is growth, not first use.
        warm = [
            publish_request(target_for(kubelet_root, f"warm-{i}", "p"), {"reference": references[i % REFERENCES]})
            for i in range(4 * REFERENCES)
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(warm)) as pool:
            list(pool.map(d.publish, warm))
            list(pool.map(d.unpublish, map(unpublish_request, warm)))
        pids = processes(d, mode)
        before = {name: (rss_kib(pid), open_fds(pid)) for name, pid in pids.items()}
        for cycle in range(CYCLES):
            target = target_for(kubelet_root, f"pod-{cycle}", "plugin")
            request = publish_request(target, {"reference": rng.choice(references)})
            d.publish(request)
            d.unpublish(unpublish_request(request))
        after = {name: (rss_kib(pid), open_fds(pid)) for name, pid in pids.items()}
        print(f"\n{mode}: RSS KiB and open fds before/after {CYCLES} cycles: {before} -> {after}")
        for name in pids:
            assert after[name][1] <= before[name][1], f"{name} leaked file descriptors: {before} -> {after}"
        leaked = [m.mount_point for m in kernel.mount_table() if m.mount_point.startswith(str(kubelet_root))]
        assert leaked == []
        assert list((d.state_dir / "tmp").iterdir()) == []
        with sqlite3.connect(d.state_dir / "publications.db") as db:
            assert db.execute("SELECT COUNT(*) FROM publications").fetchone()[0] == 0
        with sqlite3.connect(d.state_dir / "store.db") as db:
            assert db.execute("SELECT COUNT(*) FROM trees").fetchone()[0] == REFERENCES
            assert db.execute("SELECT COUNT(*) FROM resolutions").fetchone()[0] == REFERENCES
        assert not any(p.name == "mount" for p in kubelet_root.rglob("mount"))

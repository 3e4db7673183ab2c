#!/usr/bin/env python3
"""The end-to-end demo: what a kubelet does with a Klaus plugin volume, on this machine.

Starts a local registry, pushes a sample Klaus plugin with the oras client, runs
``oci-volume-csi serve``, sends a kubelet-shaped NodePublishVolume, lists the
mounted plugin and prints its ``.claude-plugin/plugin.json``, unpublishes, stops.
Run it through ``scripts/demo.sh``, which puts it in a private mount namespace.
It reuses the test suite's helpers so the demo and the tests drive the same code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from artifacts import PLUGIN_TREE, push_klaus  # noqa: E402
from driver import run_driver  # noqa: E402
from kubelet import publish_request, target_for, unpublish_request  # noqa: E402
from registry_server import run_registry  # noqa: E402


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "fuse"
    with tempfile.TemporaryDirectory(prefix="oci-volume-csi-demo-") as tmp_name:
        tmp = Path(tmp_name)
        step("starting docker-registry on loopback")
        with run_registry(tmp / "registry") as registry:
            print(registry)
            step("pushing a Klaus plugin with the oras client")
            pushed = push_klaus(registry, "klaus-plugins/gs-base:v0.6.0", PLUGIN_TREE, tmp / "push")
            print(f"{pushed.reference} -> {pushed.digest}")
            step(f"starting oci-volume-csi serve --mode {mode}")
            with run_driver(tmp, registry, mode) as driver:
                target = target_for(tmp / "kubelet", "3f6c0a9e-demo", "plugin-gs-base")
                request = publish_request(target, {"reference": pushed.reference}, pod_name="klaus-agent-0")
                step(f"NodePublishVolume {pushed.reference} -> {target}")
                driver.publish(request)
                subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", str(target)], check=False)
                step("the pod sees:")
                subprocess.run(["ls", "-lAR", str(target)], check=True)
                step(".claude-plugin/plugin.json")
                print((target / ".claude-plugin/plugin.json").read_text())
                step("NodeUnpublishVolume")
                driver.unpublish(unpublish_request(request))
                print(f"{target} exists: {os.path.exists(target)}")
            step("stopped serve; demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the real ``oci-volume-csi serve`` process and talk to it over its unix socket."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from csi_driver._pb import csi_pb2, csi_pb2_grpc
from csi_driver.mounts import kernel
from processes import stop


@dataclass
class Driver:
    state_dir: Path
    socket: Path
    process: subprocess.Popen
    channel: grpc.Channel
    identity: csi_pb2_grpc.IdentityStub
    node: csi_pb2_grpc.NodeStub
    log: Path

    def publish(self, request: csi_pb2.NodePublishVolumeRequest) -> csi_pb2.NodePublishVolumeResponse:
        return self.node.NodePublishVolume(request, timeout=120)

    def unpublish(self, request: csi_pb2.NodeUnpublishVolumeRequest) -> csi_pb2.NodeUnpublishVolumeResponse:
        return self.node.NodeUnpublishVolume(request, timeout=60)


def _wait_for_socket(socket: Path, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read_text()}")
        if socket.exists():
            return
        time.sleep(0.05)
    raise RuntimeError(f"serve did not open {socket} within 30s:\n{log.read_text()}")


def cleanup_mounts_under(root: Path) -> None:
    """Detach every mount below ``root`` (deepest first), views included."""
    prefix = str(root) + "/"
    for info in sorted(kernel.mount_table(), key=lambda m: m.mount_point, reverse=True):
        if info.mount_point.startswith(prefix):
            with contextlib.suppress(OSError):
                kernel._libc.umount2(info.mount_point.encode(), kernel.MNT_DETACH)


@contextlib.contextmanager
def run_driver(
    tmp: Path, registry: str, mode: str, extra: list[str] | None = None, source: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Driver]:
    """``serve`` on a state dir under ``tmp``; ``source``: a directory holding another version's
    ``csi_driver`` to run instead of this one (a bench's baseline; ``-m`` finds it in the cwd);
    ``env``: variables to set for it on top of ours."""
    state = tmp / "state"
    socket = tmp / "csi" / "csi.sock"
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "serve.log"
    cmd = [
        sys.executable, "-m", "csi_driver", "serve",
        "--endpoint", f"unix://{socket}", "--node-id", "node-1",
        "--state-dir", str(state), "--mode", mode, "--insecure-registry", registry,
        *(extra or []),
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=source, env={**os.environ, **(env or {})})
    try:
        _wait_for_socket(socket, process, log)
        channel = grpc.insecure_channel(f"unix://{socket}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Driver(
            state, socket, process, channel,
            csi_pb2_grpc.IdentityStub(channel), csi_pb2_grpc.NodeStub(channel), log,
        )  # fmt: skip
        channel.close()
    finally:
        stop(process, timeout=15)
        cleanup_mounts_under(tmp)
        subprocess.run(["pkill", "-f", f"csi_driver fuse --state-dir {state}"], check=False)


def walk(root: Path) -> dict[str, tuple[str, int, int, int, bytes | str]]:
    """Every name below ``root`` → (kind, mode, uid, gid, bytes or link target)."""
    seen: dict[str, tuple[str, int, int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                seen[rel] = ("symlink", 0, st.st_uid, st.st_gid, os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid, b"")
            else:
                seen[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid, path.read_bytes())
    return seen

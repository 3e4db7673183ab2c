"""Stopping the processes the tests and benches start: SIGTERM, then SIGKILL if it lingers."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen, timeout: float) -> None:
    """Ask ``process`` to stop, give it ``timeout`` seconds, then kill it; always reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

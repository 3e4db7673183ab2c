"""Sizes as a person reads them, in the commands' text and in the driver's log lines."""

from __future__ import annotations


def size(n: float) -> str:
    """1536 → ``1.5 KiB``: binary units, as ``--cache-max-bytes 20GiB`` is written; JSON keeps bytes."""
    value, unit = float(n), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"

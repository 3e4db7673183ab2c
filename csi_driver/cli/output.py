"""How the human commands print: aligned tables and fields, or JSON, and a progress line.

Every command builds one plain data structure and prints it either as text for a person
(``--output table``, the default) or as JSON for a script (``--output json``), so the two
can never disagree. Times are local and relative in text, ISO 8601 UTC in JSON; sizes are
binary units in text, bytes in JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from csi_driver.progress import text

OUTPUTS = ("table", "json")


def emit(output: str, data: Any, text: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON or as ``text(data)``."""
    print(json.dumps(data, indent=2) if output == "json" else text(data))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, the header in capitals."""
    lines = [[name.upper() for name in header], *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``name: value`` lines with the values aligned."""
    width = max(len(name) for name, _ in pairs) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in pairs)


def verdict(v: dict[str, Any] | None) -> str:
    """A verification policy's verdict, as the store keeps it, for people: the result, the
    rule, what accepted it and who signed, or the refusal's own words."""
    if v is None:
        return "none recorded (published without --policy)"
    if v["result"] == "verified":
        signer = "" if v["signer"] in v["attestor"] else f", signed by {v['signer']}"
        return f"verified by rule {v['rule']!r}: {v['attestor']}{signer} ({v['format']})"
    if v["result"] == "default-allow":
        return "allowed: no rule of the policy matches, and its default is allow"
    if v["result"] == "audited":
        return f"audited, mounted anyway: {v['message']}"
    return f"refused: {v['message']}"


def plural(n: int, noun: str, nouns: str = "") -> str:
    """``1 file``, ``2 files``; ``nouns`` for an irregular plural."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def iso(ts: float) -> str:
    """A timestamp for scripts: ISO 8601 in UTC."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def when(stamp: str) -> str:
    """An :func:`iso` timestamp for people: local time and how long ago."""
    ts = datetime.datetime.fromisoformat(stamp).timestamp()
    ago = max(0, int(time.time() - ts))
    if ago < 120:
        rel = f"{ago} s"
    elif ago < 7200:
        rel = f"{ago // 60} min"
    elif ago < 172800:
        rel = f"{ago // 3600} h"
    else:
        rel = f"{ago // 86400} d"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ts))} ({rel} ago)"


def short(digest: str) -> str:
    """``sha256:`` and 12 hex digits, as ``docker images`` shows ids; JSON keeps the whole digest."""
    return digest[: len("sha256:") + 12]


@contextlib.contextmanager
def progress(
    label: Callable[[float], str], stream: TextIO | None = None, delay: float = 1.0, every: float = 5.0
) -> Iterator[None]:
    """While the block runs, show ``label(seconds elapsed)`` on stderr.

    On a terminal: one line kept up to date from ``delay`` seconds on, erased when the block ends.
    Elsewhere (a pipe, a CI log): a plain line every ``every`` seconds, no carriage returns.
    ``label`` is called from another thread, so it must only read.
    """
    stream = stream or sys.stderr
    terminal = stream.isatty()
    done = threading.Event()
    started = time.monotonic()

    def show() -> None:
        if not terminal:
            while not done.wait(every):
                stream.write(label(time.monotonic() - started) + "\n")
                stream.flush()
            return
        if done.wait(delay):
            return
        while True:
            stream.write(f"\r\033[K{label(time.monotonic() - started)}")
            stream.flush()
            if done.wait(0.25):
                break
        stream.write("\r\033[K")
        stream.flush()

    thread = threading.Thread(target=show, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def pulling(reference: str, pulls: list[dict[str, Any]], elapsed: float, before: str) -> str:
    """The progress line of a pull of ``reference`` (``progress.in_flight``'s entries for it): bytes of
    the total, percent and rate once its layers are coming, ``before`` until then."""
    if not pulls:
        return f"{before} {elapsed:.0f} s"
    return f"pulling {reference}: {text(pulls[0])}, {elapsed:.0f} s"

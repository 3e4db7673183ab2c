"""The long fuzzing run of the archive layout (issue 7): millions of random hostile archives fed to
``layout.build_tree``, in-process, on every core.

Each archive is generated from its seed by ``tests/fuzzing.py`` (tar headers written byte by
byte: ``..``, absolute names, symlinks and hardlinks out of the tree or written through,
hostile whiteouts and ORAS titles, PAX records with NUL bytes, negative or huge sizes, NaN
times, base-256 owners, bad checksums, truncations, flipped bytes; one to three layers placed
by any of the placement rules). For each, the run checks that build_tree either refuses with a
``DriverError`` or returns a tree with every property ``fuzzing.check_tree`` states (nothing
outside the tree, nothing through a symlink, bytes inside store files, names, owners, modes
and times a file system can hold, the limits kept), and, with ``--differential``, that its
fast header parser and plain ``tarfile`` give the same answer. A failing seed is printed with
its exception; ``tests/fuzzing.py``'s ``layers(seed, dir)`` rebuilds the archive for a test.

Run (as any user; it touches nothing but a temp dir)::

    .venv/bin/python bench/fuzz_layout.py [--archives 1000000] [--workers N] [--first-seed 0] [--differential]

The result of the last long run is in SECURITY.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fuzzing  # noqa: E402


def _shape(message: str) -> str:
    """A refusal message without its digests, names and numbers: the kind of refusal."""
    message = re.sub(r"sha256:[0-9a-f]{64}", "D", message)
    message = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "'…'", message)
    return re.sub(r"-?\d+", "N", message)[:90]


def run(first: int, count: int, differential: bool) -> dict:
    """Fuzz seeds ``first`` … ``first + count - 1`` in a temp dir of this process."""
    accepted = entries = 0
    refused: collections.Counter[str] = collections.Counter()
    failures: list[tuple[int, str]] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-layout-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        state = Path(tmp)
        for seed in range(first, first + count):
            try:
                placed = fuzzing.layers(seed, state)
                got = fuzzing.build(state, placed)
                if differential:
                    with fuzzing.plain_tarfile_only():
                        other = fuzzing.build(state, placed)
                    assert fuzzing.same(got, other), f"fast path {got!r:.200} != tarfile {other!r:.200}"
            except BaseException as exc:  # noqa: BLE001 - every escape or crash is a finding
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append((seed, "".join(traceback.format_exception_only(exc)).strip()[:500]))
                continue
            if isinstance(got, list):
                accepted += 1
                entries += len(got)
            else:
                refused[f"{type(got).__name__}: {_shape(got.message)}"] += 1
    return {"accepted": accepted, "entries": entries, "refused": dict(refused), "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--differential", action="store_true", help="also compare with tarfile-only parsing")
    parser.add_argument("--chunk", type=int, default=10_000, help="seeds per task")
    args = parser.parse_args()

    started = time.monotonic()
    total = {"accepted": 0, "entries": 0, "refused": collections.Counter(), "failures": []}
    tasks = [(s, min(args.chunk, args.first_seed + args.archives - s), args.differential)
             for s in range(args.first_seed, args.first_seed + args.archives, args.chunk)]  # fmt: skip
    done = 0
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for (first, count, _), result in zip(tasks, pool.map(run, *zip(*tasks))):
            done += count
            total["accepted"] += result["accepted"]
            total["entries"] += result["entries"]
            total["refused"].update(result["refused"])
            total["failures"] += result["failures"]
            for seed, error in result["failures"]:
                print(f"FAILURE seed {seed}: {error}", flush=True)
            if done % (args.chunk * 10) == 0 or done == args.archives:
                rate = done / (time.monotonic() - started)
                print(f"{done} archives, {len(total['failures'])} failures, {rate:.0f}/s", flush=True)
    elapsed = time.monotonic() - started
    refused = sum(total["refused"].values())
    print(f"\n{args.archives} archives (seeds {args.first_seed}…{args.first_seed + args.archives - 1}) in {elapsed:.0f} s "
          f"with {args.workers} workers{' (differential)' if args.differential else ''}: {total['accepted']} accepted "
          f"({total['entries']} entries), {refused} refused, {len(total['failures'])} failures")  # fmt: skip
    for shape, count in total["refused"].most_common(15):
        print(f"  {count:8d}  {shape}")
    print(json.dumps({
        "archives": args.archives, "first_seed": args.first_seed, "seconds": round(elapsed), "workers": args.workers,
        "differential": args.differential, "accepted": total["accepted"], "refused": refused,
        "failures": len(total["failures"]),
    }))  # fmt: skip
    return 1 if total["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

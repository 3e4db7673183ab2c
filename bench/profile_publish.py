"""Where a publish spends its time: py-spy samples the real ``serve`` process during publishes.

    unshare -m --propagation private .venv/bin/python bench/profile_publish.py \\
        --phase cold|warm [--mode erofs|fuse|bind] [--volumes 200] [--size-mib 64] [--rate 1000] \\
        [--image single|layers]

Starts the loopback registry and the driver as ``bench_publish.py`` does, attaches
``py-spy record --format raw`` (pip install py-spy into the venv) to ``serve`` (and, in
fuse mode, with ``--fuse`` to the FUSE view process instead) while it runs the phase, and
prints the functions with the most samples, inclusive and self. ``--image layers`` publishes
``bench_image.py``'s 3-layer image (gzip, zstd, plain tar; ``--size-mib`` for all three)
instead of one gzip layer. The raw collapsed stacks
stay in ``--out`` for a flame graph (``flamegraph.pl`` or speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_publish as bench  # noqa: E402  (puts the repo and tests/ on sys.path)
from artifacts import push_image  # noqa: E402
from driver import run_driver  # noqa: E402
from kubelet import publish_request, target_for, unpublish_request  # noqa: E402
from namespace import enter_private_namespace  # noqa: E402
from registry_server import run_registry  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


RPC_FRAMES = ("NodePublishVolume", "NodeUnpublishVolume", "_Inflater._run", "_ensure_layer")


def summarize(raw: Path, top: int, rate: int, only_rpcs: bool) -> None:
    """Milliseconds per function (samples / rate), inclusive and self.

    With ``only_rpcs`` only stacks of threads serving an RPC (or inflating for one) count, so
    that ``--idle`` shows wall-clock time of the publish path rather than of idle pool threads.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if only_rpcs and not any(name in f for f in frames for name in RPC_FRAMES):
            continue
        n = int(count)
        total += n
        # py-spy frames read "function (file.py:line)"; drop the line to merge a function's samples.
        names = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames]
        for name in set(names):
            inclusive[name] += n
        if names:
            self_[names[-1]] += n
    to_ms = 1000 / rate
    print(f"{total} samples = {total * to_ms:.0f} ms of sampled thread time")
    print("\ninclusive ms (the function or its callees on the stack):")
    for name, n in inclusive.most_common(top):
        print(f"  {n * to_ms:8.1f}  {name}")
    print("\nself ms (in the function itself, or in C code it calls):")
    for name, n in self_.most_common(top):
        print(f"  {n * to_ms:8.1f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("cold", "warm"), required=True)
    parser.add_argument("--mode", choices=("erofs", "fuse", "bind"), default="fuse")
    parser.add_argument("--fuse", action="store_true", help="sample the FUSE view process, not serve")
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--image", choices=("single", "layers"), default="single",
                        help="one gzip layer (bench_publish) or bench_image's 3-layer image")  # fmt: skip
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--idle", action="store_true", help="also sample threads blocked in syscalls (wall clock)")
    parser.add_argument("--workdir", help="as for bench_publish.py (default: a fresh ext4 on a RAM-backed loop device)")
    parser.add_argument("--out", default="/tmp/publish-profile.txt", help="raw collapsed stacks")
    args = parser.parse_args()
    if not PY_SPY.exists():
        parser.error(f"{PY_SPY} is missing: {sys.executable} -m pip install py-spy")
    enter_private_namespace()
    if args.image == "single":
        layers = [(bench.make_layer(args.size_mib).gz, bench.OCI_TAR_GZIP)]
    else:
        import bench_image

        layers = [(blob.data, blob.media_type) for blob in bench_image.make_image(args.size_mib)]
    with bench.work_filesystem(args.workdir) as (base, _):
        return profile(args, layers, base)


def profile(args: argparse.Namespace, layers: list[tuple[bytes, str]], base: Path) -> int:
    out = Path(args.out)
    out.unlink(missing_ok=True)
    with run_registry(base / "registry") as registry:
        pushed = push_image(registry, "bench/image:v1", layers, base / "push")
        (base / "drv").mkdir()
        with run_driver(base / "drv", registry, args.mode) as driver:
            kubelet = base / "drv" / "kubelet"
            reqs = [
                publish_request(target_for(kubelet, f"pod-{i:05d}", "image"), {"reference": pushed.reference})
                for i in range(args.volumes + 1)
            ]
            if args.phase == "warm":
                driver.publish(reqs[0])  # make the digest warm before sampling
            pid = bench.fuse_pid(driver.state_dir) if args.fuse else driver.process.pid
            spy = subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                 "--output", str(out), "--threads", "--nonblocking", *(["--idle"] if args.idle else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # let py-spy attach
            start = time.perf_counter()
            if args.phase == "cold":
                driver.publish(reqs[0])
            else:
                for request in reqs[1:]:
                    driver.publish(request)
            elapsed = time.perf_counter() - start
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            for request in reqs if args.phase == "warm" else reqs[:1]:
                driver.unpublish(unpublish_request(request))
    print(f"{args.phase} {args.mode}: {elapsed * 1000:.1f} ms under py-spy (sampling slows it down)")
    if not out.exists():
        print(err.decode(errors="replace"))
        return 1
    summarize(out, args.top, args.rate, only_rpcs=not args.fuse)
    return 0


if __name__ == "__main__":
    sys.exit(main())

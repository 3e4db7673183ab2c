"""What a verification policy (``--policy``) costs a publish, against the loopback registry.

One run measures, in bind mode (the view does not matter here):

* first verification: ``--artifacts`` Klaus plugins, each in a repository of its own, signed
  in cosign's legacy ``.sig`` format (the signing helpers of tests/signing.py), each published
  once by a driver with a policy naming the key: the verification's own time (the driver's
  ``oci_volume_csi_verification_duration_seconds``: signature lookups and checks), and the cold
  publish with and without the policy (a fresh state dir per driver: the publish pulls);
* warm publish: ``--volumes`` new volumes of one cached, verified reference, each timed around
  the gRPC call, with and without the policy: the verdict comes from the store, no registry;
* start-up: the time until ``serve`` listens, with and without the policy (sigstore's import).

Run as root, in a private mount namespace (the script also enters one itself):

    unshare -m --propagation private .venv/bin/python bench/bench_verify.py [--artifacts 20] [--volumes 200]

It prints a table and refreshes the ``bench_verify`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from artifacts import PLUGIN_TREE, push_klaus  # noqa: E402
from bench_publish import machine, ms, pct, show_and_record, verdict  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from driver import run_driver  # noqa: E402
from kubelet import publish_request, target_for  # noqa: E402
from namespace import enter_private_namespace  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from registry_server import free_port, run_registry  # noqa: E402
from signing import key_attestor, make_policy, sign_legacy  # noqa: E402

BEGIN, END = "<!-- bench_verify:begin -->", "<!-- bench_verify:end -->"
TARGET_WARM_ADDED_P50_MS = 1.0


def verification_seconds(port: int) -> tuple[float, float]:
    """(sum, count) of the driver's verification latency histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "oci_volume_csi_verification_duration_seconds":
            found = {s.name.rsplit("_", 1)[1]: s.value for s in family.samples if s.name.endswith(("_sum", "_count"))}
            return found["sum"], found["count"]
    raise RuntimeError("the driver exports no verification latency")


def cold(
    registry: str, references: list[str], base: Path, name: str, extra: list[str], port: int = 0
) -> tuple[list[float], float, float]:
    """Cold publish of each reference (one driver, a fresh state dir), the driver's start-up, and
    (with a metrics ``port``) the mean verification the driver measured."""
    start = time.perf_counter()
    with run_driver(base / name, registry, "bind", extra) as driver:
        started = time.perf_counter() - start
        times = []
        for i, reference in enumerate(references):
            request = publish_request(target_for(base / name / "kubelet", f"pod-{i}", "plugin"), {"reference": reference})
            start = time.perf_counter()
            driver.publish(request)
            times.append(time.perf_counter() - start)
        total, count = verification_seconds(port) if port else (0.0, 1)
    return times, started, total / count


def warm(registry: str, reference: str, base: Path, volumes: int, extra: list[str]) -> list[float]:
    tmp = Path(tempfile.mkdtemp(dir=base))
    with run_driver(tmp, registry, "bind", extra) as driver:
        requests = [publish_request(target_for(tmp / "kubelet", f"pod-{i:05d}", "plugin"), {"reference": reference})
                    for i in range(volumes + 1)]  # fmt: skip
        driver.publish(requests[0])  # pulls and verifies; untimed
        times = []
        for request in requests[1:]:
            start = time.perf_counter()
            driver.publish(request)
            times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    enter_private_namespace()
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        base = Path(tmp)
        with run_registry(base / "registry") as registry:
            key = ec.generate_private_key(ec.SECP256R1())
            pushed = [push_klaus(registry, f"verify/bench-{i}:v1", PLUGIN_TREE, base / f"push-{i}") for i in range(args.artifacts)]
            for p in pushed:
                sign_legacy(registry, p.reference.split("/", 1)[1].rsplit(":", 1)[0], p.digest, key)
            policy = ["--policy", str(make_policy(base, registry, key_attestor(key)).path)]
            references = [p.reference for p in pushed]
            plain_cold, plain_start, _ = cold(registry, references, base, "cold-plain", [])
            port = free_port()
            with_metrics = [*policy, "--metrics-address", f"127.0.0.1:{port}"]
            policy_cold, policy_start, mean_verification = cold(registry, references, base, "cold-policy", with_metrics, port)
            plain_warm = warm(registry, references[0], base, args.volumes, [])
            policy_warm = warm(registry, references[0], base, args.volumes, policy)
    added = pct(policy_warm, 50) - pct(plain_warm, 50)
    lines = [
        BEGIN,
        "## Latest run (generated by `bench/bench_verify.py`)",
        "",
        "```",
        f"unshare -m --propagation private .venv/bin/python bench/bench_verify.py --artifacts {args.artifacts} --volumes {args.volumes}",
        "```",
        "",
        *machine("a temporary directory under /tmp, the registry's storage too")[:3],
        f"- artifacts: {args.artifacts} Klaus plugins ({len(PLUGIN_TREE)} entries), each signed once (cosign legacy `.sig`, P-256); "
        "registry without referrers API: a first verification asks the referrers API and the referrers tag (both 404), then reads the `.sig` tag and its signature blob",
        "",
        "| what | without policy | with policy | added |",
        "| --- | ---: | ---: | ---: |",
        f"| first verification (driver's histogram, mean ms) | - | {ms(mean_verification)} | {ms(mean_verification)} |",
        f"| cold publish p50 ms | {ms(pct(plain_cold, 50))} | {ms(pct(policy_cold, 50))} | {ms(pct(policy_cold, 50) - pct(plain_cold, 50))} |",
        f"| warm publish p50 ms (added ≤ {TARGET_WARM_ADDED_P50_MS:g}) | {ms(pct(plain_warm, 50))} | {ms(pct(policy_warm, 50))} "
        f"| {ms(added)} {verdict(added <= TARGET_WARM_ADDED_P50_MS / 1000)} |",
        f"| warm publish p99 ms | {ms(pct(plain_warm, 99))} | {ms(pct(policy_warm, 99))} | {ms(pct(policy_warm, 99) - pct(plain_warm, 99))} |",
        f"| serve start until it listens, ms | {ms(plain_start)} | {ms(policy_start)} | {ms(policy_start - plain_start)} |",
        f"| cold publishes (mean ms) | {ms(statistics.mean(plain_cold))} | {ms(statistics.mean(policy_cold))} | |",
        END,
        "",
    ]
    show_and_record("\n".join(lines), not args.no_write, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

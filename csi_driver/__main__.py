"""The command line: ``oci-volume-csi serve`` (the CSI driver) and ``oci-volume-csi fuse`` (the view)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import DEFAULT_DRIVER_NAME, DEFAULT_STATE_DIR, __version__, logs


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _min_free(text: str) -> float | int:
    """``10%`` (a fraction of the state dir's file system) or a size like ``5GiB``."""
    return float(text[:-1]) / 100 if text.endswith("%") else _size(text)


def _budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-max-bytes", type=_size, default=None, help="most bytes the store may hold (default: no limit)")
    parser.add_argument(
        "--cache-min-free", type=_min_free, default=0.10, help="free space to keep on the state dir's file system, e.g. 10%% or 5GiB (default 10%%)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oci-volume-csi", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    parser.add_argument("-v", "--verbose", action="store_true", help="the same as --log-level DEBUG")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="text for humans (default) or one JSON object per line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the CSI node plugin on a unix socket")
    serve.add_argument("--endpoint", default="unix:///csi/csi.sock", help="unix:///path/to/csi.sock")
    serve.add_argument("--node-id", required=True, help="this node's name, e.g. $NODE_NAME")
    serve.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"store and records (default {DEFAULT_STATE_DIR})")
    serve.add_argument(
        "--mode",
        choices=("fuse", "bind"),
        default="fuse" if os.path.exists("/dev/fuse") else "bind",
        help="data plane: fuse (default where /dev/fuse exists) or bind (extracted trees)",
    )
    serve.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME, help=f"CSI driver name (default {DEFAULT_DRIVER_NAME})")
    serve.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="allow plain HTTP for this registry (repeatable); all others use HTTPS",
    )
    serve.add_argument(
        "--registry-config-dir",
        type=Path,
        default=Path("/etc/containerd/certs.d"),
        help="containerd's hosts.toml directory: mirrors, CAs, client certs (default /etc/containerd/certs.d)",
    )
    serve.add_argument(
        "--docker-config",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="node docker config.json whose auths are used after the pod's secret (repeatable, in order; "
        "default /var/lib/kubelet/config.json, then $HOME/.docker/config.json)",
    )
    serve.add_argument(
        "--image-credential-provider-config",
        type=Path,
        metavar="FILE",
        help="the kubelet's CredentialProviderConfig (YAML or JSON); needs --image-credential-provider-bin-dir",
    )
    serve.add_argument(
        "--image-credential-provider-bin-dir", type=Path, metavar="DIR", help="where the credential provider plugins are"
    )
    serve.add_argument("--platform", default="", help="os/arch[/variant] to pick from indexes (default: the node's)")
    serve.add_argument("--registry-timeout", type=float, default=30.0, help="seconds without bytes before a registry request fails (default 30)")
    serve.add_argument("--pull-timeout", type=float, default=300.0, help="seconds one pull may spend on registries in all (default 300)")
    serve.add_argument("--max-manifest-bytes", type=_size, default=4 << 20, help="largest manifest accepted (default 4MiB)")
    serve.add_argument("--max-layers", type=int, default=128, help="most layers in one artifact (default 128)")
    serve.add_argument("--max-entries", type=int, default=1_000_000, help="most archive entries in one artifact (default 1000000)")
    serve.add_argument("--max-unpacked-bytes", type=_size, default=64 << 30, help="largest unpacked artifact (default 64GiB)")

    serve.add_argument("--metrics-address", default="", metavar="[HOST]:PORT", help="serve Prometheus metrics here, e.g. :9810 (default: off)")
    _budget_flags(serve)

    fuse = sub.add_parser("fuse", help="serve the store's trees as a FUSE view at STATE_DIR/view")
    fuse.add_argument("--state-dir", default=DEFAULT_STATE_DIR)

    cache = sub.add_parser("cache", help="inspect and manage the content store")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    gc = cache_sub.add_parser("gc", help="remove unused content, least recently used first, until within budget")
    gc.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    gc.add_argument("--grace", type=float, default=300.0, help="keep content used in the last N seconds (default 300)")
    _budget_flags(gc)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and (args.image_credential_provider_config is None) != (
        args.image_credential_provider_bin_dir is None
    ):
        parser.error("--image-credential-provider-config and --image-credential-provider-bin-dir go together")
    logs.configure("DEBUG" if args.verbose else args.log_level, args.log_format)
    if args.command == "fuse":
        from . import fusefs

        fusefs.run(Path(args.state_dir))
        return 0
    from .cache import Budget
    if args.command == "cache":
        return _cache_gc(args, Budget(args.cache_max_bytes, args.cache_min_free, args.grace))
    from . import layout, manifest
    from .credentials import CredentialSources, default_docker_configs
    from .pull import PullConfig
    from .registry import RegistryConfig
    from .server import ServeOptions, serve
    from .spec import check_platform

    pull = PullConfig(
        registry=RegistryConfig(
            insecure_hosts=frozenset(args.insecure_registry),
            timeout=args.registry_timeout,
            max_manifest_bytes=args.max_manifest_bytes,
            pull_timeout=args.pull_timeout,
            config_dir=args.registry_config_dir,
        ),
        platform=check_platform(args.platform) if args.platform else manifest.node_platform(),
        limits=layout.Limits(max_entries=args.max_entries, max_unpacked_bytes=args.max_unpacked_bytes),
        max_layers=args.max_layers,
    )
    return serve(
        ServeOptions(
            endpoint=args.endpoint,
            node_id=args.node_id,
            state_dir=args.state_dir,
            mode=args.mode,
            driver_name=args.driver_name,
            pull=pull,
            credentials=CredentialSources(
                docker_configs=tuple(args.docker_config) or default_docker_configs(),
                provider_config=args.image_credential_provider_config,
                provider_bin_dir=args.image_credential_provider_bin_dir,
            ),
            budget=Budget(args.cache_max_bytes, args.cache_min_free),
            metrics_address=args.metrics_address,
        )
    )


def _cache_gc(args: argparse.Namespace, budget: object) -> int:
    from .cache import collect
    from .publications import Publications
    from .store import Store

    store = Store(Path(args.state_dir))
    in_use = {pub.digest for pub in Publications(Path(args.state_dir)).all()}
    report = collect(store, in_use, budget)  # type: ignore[arg-type]
    for digest in report.removed:
        print(f"removed {digest}")
    print(f"freed {report.freed_bytes} bytes; {report.cache_bytes} bytes cached, {len(in_use)} digests in use")
    if report.over_budget_bytes:
        print(f"still {report.over_budget_bytes} bytes over budget: the rest is in use")
    return 0


if __name__ == "__main__":
    sys.exit(main())

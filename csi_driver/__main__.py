"""The command line: ``oci-volume-csi serve`` (the CSI driver), ``oci-volume-csi fuse`` (the view),
and the commands for humans (``csi_driver/cli``; only their arguments are wired here)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import DEFAULT_DRIVER_NAME, DEFAULT_STATE_DIR, __version__, logs

if TYPE_CHECKING:
    from .credentials import CredentialSources
    from .pull import PullConfig


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


def _pull_flags(parser: argparse.ArgumentParser) -> None:
    """What shapes a pull: registries, credentials, platform, time and size limits (serve, describe)."""
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="allow plain HTTP for this registry (repeatable); all others use HTTPS",
    )
    parser.add_argument(
        "--registry-config-dir",
        type=Path,
        default=Path("/etc/containerd/certs.d"),
        help="containerd's hosts.toml directory: mirrors, CAs, client certs (default /etc/containerd/certs.d)",
    )
    parser.add_argument(
        "--docker-config",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="node docker config.json whose auths are used after the pod's secret (repeatable, in order; "
        "default /var/lib/kubelet/config.json, then $HOME/.docker/config.json)",
    )
    parser.add_argument(
        "--image-credential-provider-config",
        type=Path,
        metavar="FILE",
        help="the kubelet's CredentialProviderConfig (YAML or JSON); needs --image-credential-provider-bin-dir",
    )
    parser.add_argument(
        "--image-credential-provider-bin-dir", type=Path, metavar="DIR", help="where the credential provider plugins are"
    )
    parser.add_argument("--platform", default="", help="os/arch[/variant] to pick from indexes (default: the node's)")
    parser.add_argument("--registry-timeout", type=float, default=30.0, help="seconds without bytes before a registry request fails (default 30)")
    parser.add_argument("--pull-timeout", type=float, default=300.0, help="seconds one pull may spend on registries in all (default 300)")
    parser.add_argument("--max-manifest-bytes", type=_size, default=4 << 20, help="largest manifest accepted (default 4MiB)")
    parser.add_argument("--max-layers", type=int, default=128, help="most layers in one artifact (default 128)")
    parser.add_argument("--max-entries", type=int, default=1_000_000, help="most archive entries in one artifact (default 1000000)")
    parser.add_argument("--max-unpacked-bytes", type=_size, default=64 << 30, help="largest unpacked artifact (default 64GiB)")


def _human(parent: argparse._SubParsersAction, name: str, handler: str, text: str) -> argparse.ArgumentParser:
    """A command for humans: its handler is ``module.function`` of ``csi_driver.cli``."""
    command = parent.add_parser(name, help=text, description=text)
    command.set_defaults(handler=handler)
    command.add_argument("--output", choices=("table", "json"), default="table", help="table for people (default) or json for scripts")
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oci-volume-csi", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO for serve and fuse, WARNING for the others)"
    )
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
    _pull_flags(serve)
    serve.add_argument("--metrics-address", default="", metavar="[HOST]:PORT", help="serve Prometheus metrics here, e.g. :9810 (default: off)")
    _budget_flags(serve)

    fuse = sub.add_parser("fuse", help="serve the store's trees as a FUSE view at STATE_DIR/view")
    fuse.add_argument("--state-dir", default=DEFAULT_STATE_DIR)

    cache = sub.add_parser("cache", help="inspect and manage the content store")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    gc = _human(cache_sub, "gc", "state.cache_gc", "remove unused content, least recently used first, until within budget")
    gc.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    gc.add_argument("--grace", type=float, default=300.0, help="keep content used in the last N seconds (default 300)")
    _budget_flags(gc)
    ls = _human(cache_sub, "ls", "state.cache_ls", "list the stored artifacts: digest, references, size, last used, in use")
    ls.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"the driver's --state-dir (default {DEFAULT_STATE_DIR})")

    publish = _human(sub, "publish", "publish.publish", "mount REF at TARGET through a running driver, as a kubelet would")
    publish.add_argument("reference", metavar="REF", help="registry/repository[:tag][@sha256:...]")
    publish.add_argument("target", metavar="TARGET", help="where to mount it; the driver creates it, its parent must exist")
    publish.add_argument(
        "--pull-policy", help="the pullPolicy attribute: Always, IfNotPresent or Never (default: as for image volumes)"
    )
    publish.add_argument("--platform", help="the platform attribute, os/arch[/variant] (default: the driver's)")
    publish.add_argument("--pod", metavar="NAMESPACE/NAME", help="the pod recorded for it (default default/oci-volume-csi-cli)")
    unpublish = _human(sub, "unpublish", "publish.unpublish", "unmount TARGET through a running driver, as a kubelet would")
    unpublish.add_argument("target", metavar="TARGET", help="what publish mounted")
    for command in (publish, unpublish):
        command.add_argument("--endpoint", default="unix:///csi/csi.sock", help="the driver's socket (default as serve's)")
        command.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the driver (default 300)")

    inspect = _human(sub, "inspect", "state.inspect", "show published volumes: reference, digest, pod, mode, mounted since, health")
    inspect.add_argument("volume", nargs="?", metavar="TARGET|VOLUME_ID", help="one volume (default: every volume)")
    inspect.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"the driver's --state-dir (default {DEFAULT_STATE_DIR})")

    describe = _human(sub, "describe", "describe.describe", "show what a volume of REF would hold, without mounting it")
    describe.add_argument("reference", metavar="REF", help="registry/repository[:tag][@sha256:...]")
    describe.add_argument("--tree", action="store_true", help="list every entry (default: the first 40)")
    _pull_flags(describe)

    convert = sub.add_parser("convert", help="rewrite volumes[].image in Kubernetes YAML as csi volumes of this driver")
    convert.add_argument("file", nargs="?", default="-", help="YAML, one or more documents (default: stdin)")
    convert.add_argument("--check", action="store_true", help="print nothing but what would change; exit 1 if anything would")
    convert.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME, help=f"CSI driver name (default {DEFAULT_DRIVER_NAME})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "describe") and (args.image_credential_provider_config is None) != (
        args.image_credential_provider_bin_dir is None
    ):
        parser.error("--image-credential-provider-config and --image-credential-provider-bin-dir go together")
    human = hasattr(args, "handler")
    logs.configure("DEBUG" if args.verbose else args.log_level or ("WARNING" if human else "INFO"), args.log_format)
    if args.command == "fuse":
        from . import fusefs

        fusefs.run(Path(args.state_dir))
        return 0
    if args.command == "convert":
        from . import convert

        return convert.run(args.file, check=args.check, driver=args.driver_name)
    if human:
        from . import cli

        return cli.run(args, *((_pull_config(args), _credential_sources(args)) if args.command == "describe" else ()))
    from .cache import Budget
    from .server import ServeOptions, serve

    return serve(
        ServeOptions(
            endpoint=args.endpoint,
            node_id=args.node_id,
            state_dir=args.state_dir,
            mode=args.mode,
            driver_name=args.driver_name,
            pull=_pull_config(args),
            credentials=_credential_sources(args),
            budget=Budget(args.cache_max_bytes, args.cache_min_free),
            metrics_address=args.metrics_address,
        )
    )


def _pull_config(args: argparse.Namespace) -> PullConfig:
    """The PullConfig of the ``_pull_flags``."""
    from . import layout, manifest
    from .pull import PullConfig
    from .registry import RegistryConfig
    from .spec import check_platform

    return PullConfig(
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


def _credential_sources(args: argparse.Namespace) -> CredentialSources:
    """The CredentialSources of the ``_pull_flags``."""
    from .credentials import CredentialSources, default_docker_configs

    return CredentialSources(
        docker_configs=tuple(args.docker_config) or default_docker_configs(),
        provider_config=args.image_credential_provider_config,
        provider_bin_dir=args.image_credential_provider_bin_dir,
    )


if __name__ == "__main__":
    sys.exit(main())

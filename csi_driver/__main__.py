"""The command line: ``oci-volume-csi serve`` (the CSI driver), ``oci-volume-csi fuse`` (the view),
and the commands for humans (``csi_driver/cli``; only their arguments are wired here).

Each flag's value is checked as it is parsed (``flags.py``): a bad one is a usage error."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from csi_driver import DEFAULT_DRIVER_NAME, DEFAULT_STATE_DIR, __version__, logs
from csi_driver.cli import flags
from csi_driver.csi.spec import PULL_POLICIES

if TYPE_CHECKING:
    from csi_driver.content.pull import PullConfig
    from csi_driver.registry.credentials import CredentialSources
    from csi_driver.verify.gate import Gate


DESCRIPTION = """\
Mount OCI artifacts (images, ORAS artifacts, plugins, skills) read-only into Kubernetes pods.
`serve` is the CSI node plugin the DaemonSet runs; the other commands let an admin look at a
node's volumes and content store, and let anyone try the driver by hand."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line: the command, what is wrong, and where the usage is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message.removeprefix('argument ')} (see {self.prog} --help)\n")


def _global_flags(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """Logging flags, on the top parser and on every command, so they work before or after it
    (a DaemonSet's ``args:`` put them after ``serve``). A command's copy has no default, so it
    never overwrites what was given before the command."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("logging (before or after the command)")
    group.add_argument(
        "--log-level", type=flags.log_level, default=default(None), metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default INFO for serve and fuse, WARNING for the others)",
    )  # fmt: skip
    group.add_argument("-v", "--verbose", action="store_true", default=default(False), help="the same as --log-level DEBUG")
    group.add_argument(
        "--log-format", choices=("text", "json"), default=default("text"),
        help="text for people (default) or one JSON object per line",
    )  # fmt: skip


def _command(parent: argparse._SubParsersAction, name: str, text: str, description: str) -> argparse.ArgumentParser:
    return parent.add_parser(name, help=text, description=description)


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command and subcommand below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield command
                yield from _commands(command)


def _state_dir(parser: argparse.ArgumentParser, text: str = "the driver's --state-dir") -> None:
    parser.add_argument(
        "--state-dir", type=flags.directory, default=DEFAULT_STATE_DIR, metavar="DIR", help=f"{text} (default {DEFAULT_STATE_DIR})"
    )


def _budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-max-bytes", type=flags.size, default=None, metavar="SIZE", help="most bytes the store may hold, e.g. 20GiB (default: no limit)"
    )
    parser.add_argument(
        "--cache-min-free", type=flags.min_free, default=0.10, metavar="PERCENT|SIZE",
        help="free space to keep on the state dir's file system, e.g. 10%% or 5GiB (default 10%%)",
    )  # fmt: skip


def _pull_flags(parser: argparse.ArgumentParser) -> None:
    """What shapes a pull: registries, credentials, platform, time and size limits (serve, describe)."""
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        type=flags.registry_host,
        metavar="HOST[:PORT]",
        help="allow plain HTTP for this registry, named as in references, without a scheme (repeatable); "
        "all others use HTTPS",
    )
    parser.add_argument(
        "--registry-config-dir",
        type=flags.directory,
        default="/etc/containerd/certs.d",
        metavar="DIR",
        help="containerd's hosts.toml directory: mirrors, CAs, client certs (default /etc/containerd/certs.d)",
    )
    parser.add_argument(
        "--docker-config",
        action="append",
        default=[],
        type=flags.file,
        metavar="PATH",
        help="node docker config.json whose auths are used after the pod's secret (repeatable, in order; "
        "default /var/lib/kubelet/config.json, then $HOME/.docker/config.json)",
    )
    parser.add_argument(
        "--image-credential-provider-config",
        type=flags.file,
        metavar="FILE",
        help="the kubelet's CredentialProviderConfig (YAML or JSON); needs --image-credential-provider-bin-dir",
    )
    parser.add_argument(
        "--image-credential-provider-bin-dir", type=flags.directory, metavar="DIR", help="where the credential provider plugins are"
    )
    parser.add_argument(
        "--platform", type=flags.platform, metavar="OS/ARCH[/VARIANT]",
        help="the platform to pick from image indexes, e.g. linux/arm64 (default: the node's)",
    )  # fmt: skip
    parser.add_argument(
        "--registry-timeout", type=flags.seconds, default=30.0, metavar="SECONDS",
        help="seconds without bytes before a registry request fails (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--pull-timeout", type=flags.seconds, default=300.0, metavar="SECONDS",
        help="seconds one pull may spend on registries in all (default 300)",
    )  # fmt: skip
    parser.add_argument(
        "--max-manifest-bytes", type=flags.positive_size, default=4 << 20, metavar="SIZE", help="largest manifest accepted (default 4MiB)"
    )
    parser.add_argument("--max-layers", type=flags.count, default=128, metavar="N", help="most layers in one artifact (default 128)")
    parser.add_argument(
        "--max-entries", type=flags.count, default=1_000_000, metavar="N", help="most archive entries in one artifact (default 1000000)"
    )
    parser.add_argument(
        "--max-unpacked-bytes", type=flags.positive_size, default=64 << 30, metavar="SIZE", help="largest unpacked artifact (default 64GiB)"
    )
    parser.add_argument(
        "--policy", type=flags.file, metavar="FILE",
        help="verification policy (YAML): which signatures content must carry to be mounted; re-read when it changes "
        "(default: none, nothing is verified)",
    )  # fmt: skip


def _human(parent: argparse._SubParsersAction, name: str, handler: str, text: str, description: str) -> argparse.ArgumentParser:
    """A command for humans: its handler is ``module.function`` of ``csi_driver.cli``."""
    command = _command(parent, name, text, description)
    command.set_defaults(handler=handler)
    command.add_argument("--output", choices=("table", "json"), default="table", help="table for people (default) or json for scripts")
    return command


def _driver_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--endpoint", type=flags.endpoint, default="unix:///csi/csi.sock", help="the driver's socket (default unix:///csi/csi.sock)"
    )
    command.add_argument(
        "--timeout", type=flags.seconds, default=300.0, metavar="SECONDS", help="seconds to wait for the driver (default 300)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oci-volume-csi", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=__version__)
    _global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(
        sub, "serve", "run the CSI node plugin (what the DaemonSet runs)",
        "Run the CSI node plugin: answer the kubelet on --endpoint, pull OCI artifacts from registries "
        "and mount them read-only into pods. Runs until SIGTERM, which leaves every mount in place.",
    )  # fmt: skip
    serve.add_argument("--endpoint", type=flags.endpoint, default="unix:///csi/csi.sock", help="unix:///path/to/csi.sock (default unix:///csi/csi.sock)")
    serve.add_argument("--node-id", type=flags.node_id, required=True, help="this node's name, e.g. $NODE_NAME")
    _state_dir(serve, "where the content store and the volume records live")
    serve.add_argument(
        "--mode",
        choices=("auto", "erofs", "fuse", "bind"),
        default="auto",
        help="data plane: erofs (kernel EROFS mounts), fuse, bind (extracted trees), or auto (default): "
        "erofs where the kernel mounts a test image, else fuse where /dev/fuse exists, else bind",
    )
    serve.add_argument(
        "--driver-name", type=flags.driver_name, default=DEFAULT_DRIVER_NAME, metavar="NAME",
        help=f"CSI driver name (default {DEFAULT_DRIVER_NAME})",
    )  # fmt: skip
    _pull_flags(serve)
    serve.add_argument(
        "--pod-pull-secrets", action="store_true",
        help="also try the secrets the pod's spec names in imagePullSecrets, read through the Kubernetes API "
        "(needs get on pods and secrets: see docs/credentials.md)",
    )  # fmt: skip
    serve.add_argument(
        "--kubeconfig", type=flags.file, metavar="FILE",
        help="reach the Kubernetes API with this kubeconfig, e.g. the kubelet's (default: the in-cluster configuration)",
    )  # fmt: skip
    serve.add_argument(
        "--metrics-address", type=flags.address, metavar="[HOST]:PORT", help="serve Prometheus metrics here, e.g. :9810 (default: off)"
    )
    serve.add_argument(
        "--progress-interval", type=flags.seconds, default=10.0, metavar="SECONDS",
        help="log how far each pull still running has got, every SECONDS (default 10)",
    )  # fmt: skip
    _budget_flags(serve)

    fuse = _command(
        sub, "fuse", "serve the content store as a read-only FUSE view",
        "Serve every artifact of the content store read-only at STATE_DIR/view, one directory per digest. "
        "serve --mode fuse starts one itself; the DaemonSet runs it as a container of its own, so that "
        "volumes keep working while serve restarts.",
    )  # fmt: skip
    _state_dir(fuse, "the state dir serve uses")

    cache = _command(
        sub, "cache", "list or clean up the node's content store",
        "Look at the content store of a node, and remove what no volume uses.",
    )  # fmt: skip
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    gc = _human(
        cache_sub, "gc", "state.cache_gc", "remove unused content until the store is within budget",
        "Remove content no volume uses, least recently used first, until the store is within budget, "
        "as serve does after publishes and every minute. Says what it removed and what it kept, and why.",
    )  # fmt: skip
    _state_dir(gc)
    gc.add_argument(
        "--grace", type=flags.seconds_or_zero, default=300.0, metavar="SECONDS",
        help="keep content used in the last SECONDS (default 300)",
    )  # fmt: skip
    _budget_flags(gc)
    ls = _human(
        cache_sub, "ls", "state.cache_ls", "list the artifacts in the store",
        "List the artifacts in the content store, most recently used first: digest, unpacked size, "
        "entries, last use, the volumes using it and the references resolved to it.",
    )  # fmt: skip
    _state_dir(ls)

    publish = _human(
        sub, "publish", "publish.publish", "mount REF at TARGET through a running driver",
        "Mount REF read-only at TARGET through a running driver, sending the request a kubelet sends "
        "for an inline volume: for trying the driver by hand. Shows the pull's progress on stderr.",
    )  # fmt: skip
    publish.add_argument("reference", type=flags.reference, metavar="REF", help="registry/repository[:tag][@sha256:...]")
    publish.add_argument("target", metavar="TARGET", help="where to mount it; the driver creates it, its parent must exist")
    publish.add_argument(
        "--pull-policy", choices=PULL_POLICIES, help="the pullPolicy attribute (default: as for image volumes)"
    )
    publish.add_argument("--platform", type=flags.platform, metavar="OS/ARCH[/VARIANT]", help="the platform attribute (default: the driver's)")
    publish.add_argument(
        "--pod", type=flags.pod, metavar="NAMESPACE/NAME", help="the pod recorded for it (default default/oci-volume-csi-cli)"
    )
    _driver_flags(publish)
    unpublish = _human(
        sub, "unpublish", "publish.unpublish", "unmount what publish mounted at TARGET",
        "Unmount what publish mounted at TARGET, through a running driver, and drop its record. "
        "A volume the kubelet published belongs to its pod: delete the pod instead (or pass --force).",
    )  # fmt: skip
    unpublish.add_argument("target", metavar="TARGET", help="what publish mounted")
    unpublish.add_argument(
        "--force", action="store_true",
        help="unmount a volume the kubelet published, or a mount the driver has no record of, and drop its record",
    )  # fmt: skip
    _state_dir(unpublish)
    _driver_flags(unpublish)

    inspect = _human(
        sub, "inspect", "state.inspect", "show the volumes published on this node",
        "Show the volumes published on this node: reference, digest, pod, mode, since when, and whether "
        "the mount is healthy. Reads the state dir and the mount table, so it answers while serve is down.",
    )  # fmt: skip
    inspect.add_argument("volume", nargs="?", metavar="TARGET|VOLUME_ID", help="one volume (default: every volume)")
    _state_dir(inspect)

    describe = _human(
        sub, "describe", "describe.describe", "show what a volume of REF would hold, without mounting it",
        "Show what a volume of REF would hold, without mounting anything: the manifest, each layer and "
        "where it is placed, then the files. Pulls into a temporary directory with the flags serve takes, "
        "so it answers as the node would, refusals included (exit 1).",
    )  # fmt: skip
    describe.add_argument("reference", type=flags.reference, metavar="REF", help="registry/repository[:tag][@sha256:...]")
    describe.add_argument("--tree", action="store_true", help="list every entry (default: the first 40)")
    _pull_flags(describe)

    convert = _command(
        sub, "convert", "rewrite image volumes in Kubernetes YAML as volumes of this driver",
        "Rewrite volumes[].image in Kubernetes YAML (pods and pod templates) as inline csi volumes of "
        "this driver, keeping everything else as written.",
    )  # fmt: skip
    convert.add_argument("file", nargs="?", default="-", help="YAML, one or more documents (default: stdin)")
    convert.add_argument("--check", action="store_true", help="print nothing but what would change; exit 1 if anything would")
    convert.add_argument(
        "--pod-pull-secrets", action="store_true",
        help="the cluster runs the driver with --pod-pull-secrets: leave imagePullSecrets to it, add no nodePublishSecretRef",
    )  # fmt: skip
    convert.add_argument(
        "--driver-name", type=flags.driver_name, default=DEFAULT_DRIVER_NAME, metavar="NAME",
        help=f"CSI driver name (default {DEFAULT_DRIVER_NAME})",
    )  # fmt: skip
    for command in _commands(parser):  # last, so each command's usage starts with its own flags
        _global_flags(command)
        command.set_defaults(prog=command.prog)  # the innermost command's name, for its messages
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    command = next(c for c in _commands(parser) if c.prog == args.prog)
    if unknown:  # the command's own parser would name only the top one
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in ("serve", "describe") and (args.image_credential_provider_config is None) != (
        args.image_credential_provider_bin_dir is None
    ):
        command.error("--image-credential-provider-config and --image-credential-provider-bin-dir go together")
    human = hasattr(args, "handler")
    logs.configure("DEBUG" if args.verbose else args.log_level or ("WARNING" if human else "INFO"), args.log_format)
    if args.command == "fuse":
        from csi_driver.views import fusefs

        os.makedirs(args.state_dir, exist_ok=True)  # as serve does: the fuse container may start first
        fusefs.run(Path(args.state_dir))
        return 0
    if args.command == "convert":
        from csi_driver import convert

        return convert.run(args.file, check=args.check, driver=args.driver_name, pod_pull_secrets=args.pod_pull_secrets)
    verification = _verification(args, command) if args.command in ("serve", "describe") else None
    if human:
        from csi_driver import cli

        context = (_pull_config(args, verification), _credential_sources(args)) if args.command == "describe" else ()
        return cli.run(args, *context)
    from csi_driver.content.cache import Budget
    from csi_driver.csi.server import ServeOptions, serve

    return serve(
        ServeOptions(
            endpoint=args.endpoint,
            node_id=args.node_id,
            state_dir=args.state_dir,
            mode=args.mode,
            driver_name=args.driver_name,
            pull=_pull_config(args, verification),
            credentials=_credential_sources(args),
            budget=Budget(args.cache_max_bytes, args.cache_min_free),
            metrics_address=args.metrics_address or "",
            progress_interval=args.progress_interval,
        )
    )


def _verification(args: argparse.Namespace, command: argparse.ArgumentParser) -> Gate | None:
    """The Gate of ``--policy``; a policy that cannot be used is a usage error naming its line.
    Only here is ``csi_driver.verify`` imported (sigstore and pydantic: about a second)."""
    if args.policy is None:
        return None
    from csi_driver.verify.gate import Gate
    from csi_driver.verify.policy import PolicyError

    try:
        return Gate(args.policy)
    except PolicyError as exc:
        command.error(" ".join(exc.message.split()))


def _pull_config(args: argparse.Namespace, verification: Gate | None) -> PullConfig:
    """The PullConfig of the ``_pull_flags``, with the Gate made of ``--policy``."""
    from csi_driver.content.pull import PullConfig
    from csi_driver.layout import rules, manifest
    from csi_driver.registry.client import RegistryConfig

    return PullConfig(
        registry=RegistryConfig(
            insecure_hosts=frozenset(args.insecure_registry),
            timeout=args.registry_timeout,
            max_manifest_bytes=args.max_manifest_bytes,
            pull_timeout=args.pull_timeout,
            config_dir=Path(args.registry_config_dir),
        ),
        platform=args.platform or manifest.node_platform(),
        limits=rules.Limits(max_entries=args.max_entries, max_unpacked_bytes=args.max_unpacked_bytes),
        max_layers=args.max_layers,
        verification=verification,
    )


def _credential_sources(args: argparse.Namespace) -> CredentialSources:
    """The CredentialSources of the ``_pull_flags``."""
    from csi_driver.registry.credentials import CredentialSources, default_docker_configs

    def path(text: str | None) -> Path | None:
        return None if text is None else Path(text)

    return CredentialSources(
        docker_configs=tuple(Path(p) for p in args.docker_config) or default_docker_configs(),
        provider_config=path(args.image_credential_provider_config),
        provider_bin_dir=path(args.image_credential_provider_bin_dir),
        pod_pull_secrets=getattr(args, "pod_pull_secrets", False),
        kubeconfig=path(getattr(args, "kubeconfig", None)),
    )


if __name__ == "__main__":
    sys.exit(main())

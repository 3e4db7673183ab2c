"""Pull credentials for an image, from the sources the kubelet uses, in the kubelet's order.

1. the pod's ``nodePublishSecretRef``, as the kubelet hands it over in ``secrets``: a
   ``kubernetes.io/dockerconfigjson`` Secret (``.dockerconfigjson``), a legacy ``.dockercfg``, or
   plain ``username`` + ``password`` keys (these apply to any registry);
2. the node's docker config files (``--docker-config``, in the order given; by default the
   kubelet's ``/var/lib/kubelet/config.json``, then ``$HOME/.docker/config.json``): their ``auths``
   entries (``credHelpers`` and ``credsStore`` are not run);
3. kubelet credential-provider plugins (``credentialprovider.py``), in config order;
4. anonymous.
Which docker config entries apply to an image is decided as the kubelet decides it
(``dockerconfig.py``: scheme-less keys, path prefixes, ``*.example.com`` globs, ports).

``Keyring.candidates`` yields every applicable credential in that order, lazily, so a registry
client that wants to try the next one after a 401 (as the kubelet does) can, and nothing later
(a plugin run) happens while an earlier source suffices. ``Keyring.for_pod`` returns the first:
the pod's own secret, when it names the registry, always wins over the node's credentials, so the
per-pod authorization checks the credentials the pod brought.

A broken pod secret is the pod's problem: INVALID_ARGUMENT. A broken node file or a failing
plugin is the node's: it is logged as a warning and the next source is tried, since one bad node
file must not break every pod on the node. Docker config files are re-read when they change on
disk (so credentials can be rotated without a restart); the provider config is read once at
start, as the kubelet does. Nothing here logs a secret or puts one in a message.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from csi_driver import errors
from csi_driver.reference import Reference
from csi_driver.registry import credentialprovider
from csi_driver.registry.dockerconfig import AuthIndex, Credentials

log = logging.getLogger(__name__)


def default_docker_configs() -> tuple[Path, ...]:
    """The kubelet's docker config, then the node user's (``$HOME``), as the kubelet searches them."""
    return Path("/var/lib/kubelet/config.json"), Path.home() / ".docker" / "config.json"


@dataclass(frozen=True)
class CredentialSources:
    """What the command line says about node credentials; built once at start."""

    docker_configs: tuple[Path, ...] = ()
    provider_config: Path | None = None
    provider_bin_dir: Path | None = None
    provider_timeout: float = credentialprovider.DEFAULT_TIMEOUT


def image_name(ref: Reference) -> str:
    """``host[:port]/repository``: what the kubelet matches credentials and runs plugins for."""
    return f"{ref.registry}/{ref.repository}"


def _secret_credentials(secrets: Mapping[str, str], image: str) -> list[Credentials]:
    if not secrets:
        return []
    if "username" in secrets and "password" in secrets:
        return [(secrets["username"], secrets["password"])]
    for key in (".dockerconfigjson", ".dockercfg"):
        if key not in secrets:
            continue
        try:
            doc = json.loads(secrets[key])
        except (ValueError, RecursionError):
            raise errors.InvalidArgument(f"the pull secret's {key} is not valid JSON") from None
        auths = doc.get("auths") if key == ".dockerconfigjson" and isinstance(doc, dict) else doc
        try:
            return AuthIndex.parse(auths).lookup(image)
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(f"the pull secret's {key}: {exc.message}") from None
    raise errors.InvalidArgument(
        "the pull secret has none of .dockerconfigjson, .dockercfg or username+password; "
        "use a kubernetes.io/dockerconfigjson Secret"
    )


@dataclass
class _DockerConfigFile:
    """One node docker config file, parsed again whenever it changes on disk."""

    path: Path
    _seen: tuple[int, int, int] | None = field(default=None, init=False)
    _index: AuthIndex = field(default_factory=AuthIndex, init=False)

    def index(self) -> AuthIndex:
        """The file's entries; empty while it is missing or broken (a broken one is logged once)."""
        try:
            st = self.path.stat()
        except OSError:
            return AuthIndex()
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            self._seen, self._index = seen, self._read()
        return self._index

    def _read(self) -> AuthIndex:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("docker config %s cannot be read as JSON (%s); ignoring it", self.path, type(exc).__name__)
            return AuthIndex()
        if not isinstance(doc, dict):
            log.warning("docker config %s is not a JSON object; ignoring it", self.path)
            return AuthIndex()
        if doc.get("credHelpers") or doc.get("credsStore"):
            log.warning("docker config %s: credHelpers and credsStore are not run; only auths are used", self.path)
        try:
            return AuthIndex.parse(doc.get("auths"))
        except errors.InvalidArgument as exc:
            log.warning("docker config %s: %s; ignoring it", self.path, exc.message)
            return AuthIndex()


def _load_providers(sources: CredentialSources) -> list[credentialprovider.Provider]:
    if sources.provider_config is None or sources.provider_bin_dir is None:
        return []
    try:
        specs = credentialprovider.load_config(sources.provider_config, sources.provider_bin_dir)
    except errors.DriverError as exc:
        log.warning("%s; no credential provider will be used", exc.message)
        return []
    log.info("credential providers: %s", ", ".join(spec.name for spec in specs) or "none")
    return [credentialprovider.Provider(spec, timeout=sources.provider_timeout) for spec in specs]


class Keyring:
    """Every credential source of the node, shared by all requests (thread-safe)."""

    def __init__(self, sources: CredentialSources) -> None:
        self._files = [_DockerConfigFile(path) for path in sources.docker_configs]
        self._files_lock = threading.Lock()
        self._providers = _load_providers(sources)
        for path in sources.docker_configs:
            log.info("docker config %s: %s", path, "found" if path.exists() else "absent for now")

    def candidates(self, secrets: Mapping[str, str], ref: Reference) -> Iterator[Credentials]:
        """Every credential that applies to ``ref``, in the kubelet's order, each once; lazily."""
        seen: set[Credentials] = set()
        for credentials in self._all(secrets, image_name(ref)):
            if credentials not in seen:
                seen.add(credentials)
                yield credentials

    def for_pod(self, secrets: Mapping[str, str], ref: Reference) -> Credentials | None:
        """The credentials to pull ``ref`` with for a pod: the first candidate, or None (anonymous)."""
        return next(self.candidates(secrets, ref), None)

    def _all(self, secrets: Mapping[str, str], image: str) -> Iterator[Credentials]:
        yield from _secret_credentials(secrets, image)
        for file in self._files:
            with self._files_lock:
                index = file.index()
            yield from index.lookup(image)
        for provider in self._providers:
            try:
                found = provider.lookup(image)
            except errors.DriverError as exc:
                log.warning("%s; trying the next credential source", exc.message)
                continue
            yield from found

"""Pull credentials for an image, from the sources the kubelet uses, in the kubelet's order.

1. the pod's ``nodePublishSecretRef``, as the kubelet hands it over in ``secrets``: a
   ``kubernetes.io/dockerconfigjson`` Secret (``.dockerconfigjson``), a legacy ``.dockercfg``, or
   plain ``username`` + ``password`` keys (these apply to any registry);
2. with ``--pod-pull-secrets``, the secrets the pod's spec names in ``imagePullSecrets``, in spec
   order, read through the Kubernetes API (``kubeapi.py``), as a native image volume uses them;
3. the node's docker config files (``--docker-config``, in the order given; by default the
   kubelet's ``/var/lib/kubelet/config.json``, then ``$HOME/.docker/config.json``): their ``auths``
   entries (``credHelpers`` and ``credsStore`` are not run);
4. kubelet credential-provider plugins (``credentialprovider.py``), in config order; one with
   ``tokenAttributes`` gets the pod's service-account token (from the kubelet, through the
   CSIDriver's ``spec.tokenRequests``) and the account's annotations (from the API);
5. anonymous (the caller's last try).
Which docker config entries apply to an image is decided as the kubelet decides it
(``dockerconfig.py``: scheme-less keys, path prefixes, ``*.example.com`` globs, ports).

``Keyring.candidates`` yields every applicable credential in that order, lazily, so a registry
client that wants to try the next one after a 401 (as the kubelet does) can, and nothing later
(a plugin run) happens while an earlier source suffices. ``Keyring.for_pod`` returns the first:
the pod's own secret, when it names the registry, always wins over the node's credentials, so the
per-pod authorization checks the credentials the pod brought.

A broken pod secret is the pod's problem: INVALID_ARGUMENT; so is a pod the API does not know
(FAILED_PRECONDITION) or an API server that cannot be reached (UNAVAILABLE). A broken node file or
a failing plugin is the node's: it is logged as a warning and the next source is tried, since one
bad node file must not break every pod on the node. The reason a plugin was not used goes into
``notes`` too, so that a pull refused in the end can say why (e.g. the CSIDriver field to set). Docker config files are re-read when they change on
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
from csi_driver.registry import credentialprovider, kubeapi
from csi_driver.registry.dockerconfig import AuthIndex, Credentials
from csi_driver.registry.kubeapi import Pod

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
    pod_pull_secrets: bool = False  # --pod-pull-secrets: also the secrets the pod's spec names
    kubeconfig: Path | None = None  # --kubeconfig; None: the in-cluster configuration


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


class _NotForThisAccount(errors.FailedPrecondition):
    """A provider's required annotation is missing: the account has not opted in (not a fault)."""


class Keyring:
    """Every credential source of the node, shared by all requests (thread-safe).

    The Kubernetes API client is made at start when ``--pod-pull-secrets`` or a provider with
    ``tokenAttributes`` needs it: a configuration it cannot use fails the start with
    ``--pod-pull-secrets`` (the flag asks for it), and otherwise leaves those providers out.
    """

    def __init__(self, sources: CredentialSources) -> None:
        self._files = [_DockerConfigFile(path) for path in sources.docker_configs]
        self._files_lock = threading.Lock()
        self._providers = _load_providers(sources)
        self._pod_pull_secrets = sources.pod_pull_secrets
        self._api = self._api_client(sources)
        for path in sources.docker_configs:
            log.info("docker config %s: %s", path, "found" if path.exists() else "absent for now")

    def _api_client(self, sources: CredentialSources) -> kubeapi.Client | None:
        wanting = [p.spec.name for p in self._providers if p.spec.token_attributes is not None]
        if not (sources.pod_pull_secrets or wanting):
            return None
        try:
            client = kubeapi.Client(kubeapi.load(sources.kubeconfig))
        except errors.DriverError as exc:
            if sources.pod_pull_secrets:
                raise
            log.warning("%s; credential providers %s need it and are not used", exc.message, ", ".join(wanting))
            self._providers = [p for p in self._providers if p.spec.token_attributes is None]
            return None
        log.info("Kubernetes API %s (%s) for %s", client.config.server, client.config.source,
                 "the pods' imagePullSecrets" if sources.pod_pull_secrets else "service accounts")  # fmt: skip
        return client

    def candidates(
        self, secrets: Mapping[str, str], ref: Reference, pod: Pod = Pod(), notes: list[str] | None = None
    ) -> Iterator[Credentials]:
        """Every credential that applies to ``ref`` for ``pod``, in the kubelet's order, each once; lazily.

        Why a source gave nothing it could have given is appended to ``notes``.
        """
        seen: set[Credentials] = set()
        for credentials in self._all(secrets, image_name(ref), pod, [] if notes is None else notes):
            if credentials not in seen:
                seen.add(credentials)
                yield credentials

    def for_pod(self, secrets: Mapping[str, str], ref: Reference, pod: Pod = Pod()) -> Credentials | None:
        """The credentials to pull ``ref`` with for a pod: the first candidate, or None (anonymous)."""
        return next(self.candidates(secrets, ref, pod), None)

    def _all(self, secrets: Mapping[str, str], image: str, pod: Pod, notes: list[str]) -> Iterator[Credentials]:
        yield from _secret_credentials(secrets, image)
        if self._pod_pull_secrets and self._api is not None:
            for index in kubeapi.pod_pull_secrets(self._api, pod):
                yield from index.lookup(image)
        for file in self._files:
            with self._files_lock:
                index = file.index()
            yield from index.lookup(image)
        for provider in self._providers:
            if not provider.applies_to(image):
                continue
            try:
                found = provider.lookup(image, self._account(provider.spec, pod))
            except errors.DriverError as exc:
                level = logging.DEBUG if isinstance(exc, _NotForThisAccount) else logging.WARNING
                log.log(level, "%s; trying the next credential source", exc.message)
                notes.append(exc.message)
                continue
            yield from found

    def _account(self, spec: credentialprovider.ProviderSpec, pod: Pod) -> credentialprovider.ServiceAccount | None:
        """The service account a ``tokenAttributes`` provider runs for, as the kubelet decides it.

        None runs the provider without one: what the kubelet does for a pod without a service
        account when ``requireServiceAccount`` is false.
        """
        wants = spec.token_attributes
        if wants is None:
            return None
        if not pod.service_account:
            if wants.require_service_account:
                raise errors.FailedPrecondition(
                    f"credential provider {spec.name} requires the pod's service account, and the kubelet "
                    f"named none for pod {pod}: set podInfoOnMount: true in the driver's CSIDriver object"
                )
            return None
        token = pod.tokens.get(wants.audience, "")
        if not token:
            fix = (
                f"add {{audience: {wants.audience}}} to spec.tokenRequests of the driver's CSIDriver object, "
                "so that the kubelet hands the driver the pod's token"
            )
            if wants.require_service_account:
                raise errors.FailedPrecondition(
                    f"credential provider {spec.name} requires a service-account token of audience "
                    f"{wants.audience!r} for pod {pod}, and the kubelet sent none: {fix}"
                )
            log.warning("credential provider %s runs without a service-account token for pod %s: to give it one, %s",
                        spec.name, pod, fix)  # fmt: skip
            return None
        assert self._api is not None  # made at start for every provider with tokenAttributes
        found = self._api.service_account(pod.namespace, pod.service_account)
        if found is None:
            raise errors.FailedPrecondition(
                f"service account {pod.namespace}/{pod.service_account} of pod {pod} does not exist in the "
                f"Kubernetes API, so credential provider {spec.name} is not run"
            )
        missing = [key for key in wants.required_annotation_keys if key not in found.annotations]
        if missing:
            raise _NotForThisAccount(
                f"credential provider {spec.name} is not run for pod {pod}: its service account "
                f"{found.namespace}/{found.name} lacks the required annotation(s) {', '.join(missing)}"
            )
        keys = (*wants.required_annotation_keys, *wants.optional_annotation_keys)
        annotations = tuple(sorted((k, found.annotations[k]) for k in keys if k in found.annotations))
        return credentialprovider.ServiceAccount(found.namespace, found.name, found.uid, annotations, token)

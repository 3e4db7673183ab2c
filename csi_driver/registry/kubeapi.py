"""The Kubernetes API, for the pull secrets a pod names (``imagePullSecrets``), as the kubelet reads them.

A native image volume is pulled with the pod's ``imagePullSecrets`` too, and the kubelet hands a
CSI driver only the volume's ``nodePublishSecretRef``. So the driver reads the rest itself, from
the pod info the kubelet sends (``csi.storage.k8s.io/pod.{name,namespace,uid}``):
:func:`pod_pull_secrets` GETs the pod, checks that its UID is the one being published for (a pod
deleted and recreated under the same name must not lend its secrets to its predecessor), then
GETs each named Secret in the pod's namespace, in spec order, and parses it with the docker
config rules of ``dockerconfig.py``. The result is one :class:`AuthIndex` per secret, so it fits
the keyring's order where the kubelet puts it: after ``nodePublishSecretRef``, before the node's
docker config files. The pod's ServiceAccount (its annotations) is readable too, for credential
providers that want service-account tokens (KEP-4412).

Access, read once at start (:func:`load`):

* in a pod, the in-cluster configuration: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the
  service-account directory's ``token`` and ``ca.crt`` (``/var/run/secrets/kubernetes.io/serviceaccount``);
* ``--kubeconfig FILE``: its ``current-context``: the cluster's ``server`` (``https://`` only),
  ``certificate-authority`` or ``-data``; the user's ``client-certificate``/``client-key`` or their
  ``-data`` (the kubelet's own kubeconfig names ``/var/lib/kubelet/pki/kubelet-client-current.pem``
  for both), ``token`` or ``tokenFile``. Relative paths are relative to the file, ``-data`` wins
  over a path, as in client-go; inline keys are handed to OpenSSL through a memfd, never a file.
  ``insecure-skip-tls-verify`` is refused, not honoured: this connection carries a token or a
  client key and brings back registry credentials, so whoever can intercept it could take both,
  or hand the driver credentials of their choosing. ``exec`` and ``auth-provider`` users are
  refused too (the driver runs no login plugins); so is a plain ``http://`` server.

Rotation needs no restart: a token file is read again for every request (projected tokens are
renewed about hourly; the read is a few microseconds on tmpfs), and when the CA or client
certificate files change (the kubelet rotates its client certificate by moving a symlink) the
TLS context is built again before the next request.

Secrets are read per publish, from the API, never from or to disk, and cached in memory for a
few seconds (``secret_ttl``, at most ``max_cached`` of them) so the volumes of one pod starting
together read each secret once. The cache is keyed by namespace and name: a resourceVersion
cannot key it without a request, since the pod names its secrets, not their versions; the TTL
is what bounds how stale an answer may be (the kubelet's TTL-based secret manager keeps one a
minute). An expired entry is never served, and is dropped from memory at the next secret read.
Pods are not cached: the UID check must see the pod as it is now.

Errors: the API server unreachable, a TLS failure, a timeout or 5xx is ``UNAVAILABLE`` naming the
server; a pod that is gone or has another UID is ``FAILED_PRECONDITION`` (the kubelet retries,
and stops once the pod is gone); a named secret that does not exist is a warning and the next
source, as in the kubelet; a secret of another type is skipped with a warning (the kubelet
ignores it silently); a dockerconfig secret whose contents cannot be used is ``INVALID_ARGUMENT``
naming the secret and the key (the pod's problem, as for ``nodePublishSecretRef``). A 401 or
403 is ``PERMISSION_DENIED``, not ``UNAVAILABLE``: it does not pass by waiting, and the message
names what to grant (``get`` on pods, secrets and serviceaccounts) and quotes the API server's
reason, which names the identity it saw. Skipping a secret on a 403, as the kubelet would, is
not done: the pull would then fail later with the registry's 401, far from its cause.

No official client: ``kubernetes`` 37 takes 1.3-3.1 s to import (``kubernetes.client`` and
``kubernetes.config``, one ``CoreV1Api``) and adds 37 MiB of RSS to a process that already holds
``requests``, ``urllib3`` and ``yaml``; this module, over ``urllib3`` and the API's JSON, takes
12-48 ms and adds 1.1 MiB (the 2-core test machine under load, warm ``.pyc``, five runs). Three
GETs are not worth a second or two at every start and 37 MiB on every node.
Nothing here logs a secret's data, a token or a key, nor puts one in a message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import urllib3
import yaml

from csi_driver import errors
from csi_driver.registry.dockerconfig import AuthIndex

log = logging.getLogger("oci-volume-csi")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PULL_SECRET_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}
DEFAULT_TIMEOUT = 10.0
DEFAULT_SECRET_TTL = 10.0
DEFAULT_MAX_CACHED = 256
RBAC_NEEDED = "get on pods, secrets and serviceaccounts (in every namespace whose pods use the driver)"
_KINDS = {"pods": "pod", "secrets": "secret", "serviceaccounts": "service account"}


@dataclass(frozen=True)
class Pod:
    """The pod a volume is for, as the kubelet names it in the pod info (all empty when it sends none)."""

    namespace: str = ""
    name: str = ""
    uid: str = ""
    service_account: str = ""
    # audience → the service-account token the kubelet requested for the pod (CSIDriver
    # spec.tokenRequests), for credential providers with tokenAttributes; never shown.
    tokens: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else "(unknown pod)"


@dataclass(frozen=True)
class APIConfig:
    """Where the API server is and how the driver authenticates to it; read once at start."""

    server: str  # https://host:port[/path], no trailing slash
    source: str  # "the in-cluster configuration" or "kubeconfig FILE", for messages
    ca_file: Path | None = None
    ca_data: bytes | None = field(default=None, repr=False)
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    client_cert_data: bytes | None = field(default=None, repr=False)
    client_key_data: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None


def load(kubeconfig: Path | None = None) -> APIConfig:
    """``--kubeconfig FILE`` when given, else the in-cluster configuration."""
    return from_kubeconfig(kubeconfig) if kubeconfig is not None else in_cluster()


def in_cluster(environ: Mapping[str, str] = os.environ, directory: Path = SERVICE_ACCOUNT_DIR) -> APIConfig:
    """The configuration a pod gets: the API service's address and the mounted service-account token."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise errors.FailedPrecondition(
            "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set, so the driver is not in a pod: "
            "give --kubeconfig FILE to reach the Kubernetes API"
        )
    token_file = directory / "token"
    if not token_file.is_file():
        raise errors.FailedPrecondition(
            f"{token_file} is missing: mount the service account's token in the driver's pod "
            "(automountServiceAccountToken: true), or give --kubeconfig FILE"
        )
    ca_file = directory / "ca.crt"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return APIConfig(
        server=f"https://{netloc}",
        source="the in-cluster configuration",
        ca_file=ca_file if ca_file.is_file() else None,
        token_file=token_file,
    )


def from_kubeconfig(path: Path) -> APIConfig:
    """The current context of a kubeconfig file; FailedPrecondition naming what cannot be used."""

    def bad(what: str) -> errors.FailedPrecondition:
        return errors.FailedPrecondition(f"kubeconfig {path}: {what}")

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise bad(f"cannot be read as YAML ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not doc.get("current-context"):
        raise bad("has no current-context")
    context = _named(doc, "context", doc["current-context"], bad)
    cluster = _named(doc, "cluster", context.get("cluster"), bad)
    user = _named(doc, "user", context["user"], bad) if context.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if urlsplit(server).scheme != "https" or not urlsplit(server).hostname:
        raise bad(f"server {server!r} is not an https:// URL (the driver sends a token or client key over it)")
    if cluster.get("insecure-skip-tls-verify"):
        raise bad(
            "insecure-skip-tls-verify is refused: the driver reads Secrets over this connection; "
            "give the cluster's certificate-authority or certificate-authority-data"
        )
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise bad(
                f"the user uses {plugin}, which the driver does not run; use a client certificate, token or tokenFile"
            )
    base = path.parent

    def file(table: dict, key: str) -> Path | None:
        return base / str(table[key]) if table.get(key) else None

    def data(table: dict, key: str) -> bytes | None:
        if not table.get(key):
            return None
        try:
            return base64.b64decode(str(table[key]), validate=True)
        except binascii.Error:
            raise bad(f"{key} is not base64") from None

    return APIConfig(
        server=server,
        source=f"kubeconfig {path}",
        ca_file=file(cluster, "certificate-authority"),
        ca_data=data(cluster, "certificate-authority-data"),
        client_cert_file=file(user, "client-certificate"),
        client_key_file=file(user, "client-key"),
        client_cert_data=data(user, "client-certificate-data"),
        client_key_data=data(user, "client-key-data"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user, "tokenFile"),
    )


def _named(doc: dict, kind: str, name: object, bad: Callable[[str], errors.DriverError]) -> dict:
    """The ``kind`` table of the ``<kind>s`` entry called ``name``."""
    for entry in doc.get(f"{kind}s") or ():
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(kind), dict):
            return entry[kind]
    raise bad(f"has no {kind} named {name!r}")


def _ssl_context(config: APIConfig) -> ssl.SSLContext:
    """Trust the cluster's CA only (the node's store when none is given); present the client certificate."""
    try:
        cadata = config.ca_data.decode("ascii") if config.ca_data else None  # PEM; DER stays bytes
    except UnicodeDecodeError:
        cadata = config.ca_data
    what = "the certificate authority"
    try:
        context = ssl.create_default_context(cafile=None if cadata else config.ca_file, cadata=cadata)
        what = "the client certificate"
        with contextlib.ExitStack() as stack:
            cert = _pem(stack, config.client_cert_data, config.client_cert_file)
            key = _pem(stack, config.client_key_data, config.client_key_file)
            if cert is not None:  # an encrypted key fails here, rather than OpenSSL prompting on a TTY
                context.load_cert_chain(cert, key, password=b"")
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise errors.FailedPrecondition(
            f"{config.source}: cannot load {what} ({reason}): fix the file or the entry"
        ) from None
    return context


def _pem(stack: contextlib.ExitStack, data: bytes | None, path: Path | None) -> str | None:
    """A path OpenSSL can read ``data`` from (a memfd, so a key never lands on disk), else ``path``."""
    if data is None:
        return str(path) if path is not None else None
    fd = os.memfd_create("kubeconfig-pem", os.MFD_CLOEXEC)
    stack.callback(os.close, fd)
    with open(fd, "wb", closefd=False) as out:
        out.write(data)
    return f"/proc/self/fd/{fd}"


def _files_state(config: APIConfig) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a CA or client certificate file is rotated (a new inode or mtime)."""
    state = []
    for path in (config.ca_file, config.client_cert_file, config.client_key_file):
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        state.append((st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else None)
    return tuple(state)


@dataclass(frozen=True)
class PodObject:
    """What the driver needs of a Pod: its identity, its pull secrets and its service account."""

    namespace: str
    name: str
    uid: str
    pull_secrets: tuple[str, ...]  # spec.imagePullSecrets names, in spec order, each once
    service_account: str


@dataclass(frozen=True)
class Secret:
    namespace: str
    name: str
    type: str
    resource_version: str
    data: Mapping[str, bytes] = field(repr=False)  # base64-decoded values


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    uid: str
    annotations: Mapping[str, str]


@dataclass
class _Cached:
    secret: Secret
    fetched: float


def _metadata(doc: dict) -> dict:
    meta = doc.get("metadata")
    return meta if isinstance(meta, dict) else {}


class Client:
    """GETs of pods, secrets and service accounts; thread-safe, one per process."""

    def __init__(
        self,
        config: APIConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        secret_ttl: float = DEFAULT_SECRET_TTL,
        max_cached: int = DEFAULT_MAX_CACHED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._ttl, self._max_cached, self._clock = secret_ttl, max_cached, clock
        self._lock = threading.Lock()
        self._secrets: OrderedDict[tuple[str, str], _Cached] = OrderedDict()  # oldest first
        self._tls_state = _files_state(config)
        self._http = self._pool()  # a bad CA or client certificate fails the start, named

    def pod(self, namespace: str, name: str) -> PodObject | None:
        """The pod, or None when it does not exist."""
        doc = self._get("pods", namespace, name)
        if doc is None:
            return None
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        refs = spec.get("imagePullSecrets") or []
        names = [str(ref.get("name") or "") for ref in refs if isinstance(ref, dict)]
        return PodObject(
            namespace=namespace,
            name=name,
            uid=str(_metadata(doc).get("uid") or ""),
            pull_secrets=tuple(dict.fromkeys(n for n in names if n)),  # the kubelet skips empty names
            service_account=str(spec.get("serviceAccountName") or ""),
        )

    def secret(self, namespace: str, name: str) -> Secret | None:
        """The secret, or None when it does not exist; an answer is reused for ``secret_ttl`` seconds."""
        key = (namespace, name)
        with self._lock:
            now = self._clock()
            while self._secrets and now - next(iter(self._secrets.values())).fetched >= self._ttl:
                self._secrets.popitem(last=False)
            cached = self._secrets.get(key)
        if cached is not None:
            return cached.secret
        doc = self._get("secrets", namespace, name)
        if doc is None:
            return None
        data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
        try:
            decoded = {str(k): base64.b64decode(str(v), validate=True) for k, v in data.items()}
        except binascii.Error:
            raise errors.Unavailable(
                f"Kubernetes API server {self.config.server} answered secret {namespace}/{name} "
                "with data that is not base64"
            ) from None
        secret = Secret(
            namespace, name, str(doc.get("type") or ""), str(_metadata(doc).get("resourceVersion") or ""), decoded
        )
        log.debug("secret %s/%s read (resourceVersion %s)", namespace, name, secret.resource_version)
        with self._lock:
            self._secrets.pop(key, None)
            self._secrets[key] = _Cached(secret, self._clock())
            while len(self._secrets) > self._max_cached:
                self._secrets.popitem(last=False)
        return secret

    def service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        """The service account, or None when it does not exist."""
        doc = self._get("serviceaccounts", namespace, name)
        if doc is None:
            return None
        meta = _metadata(doc)
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        return ServiceAccount(
            namespace, name, str(meta.get("uid") or ""), {str(k): str(v) for k, v in annotations.items()}
        )

    def _pool(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(
            num_pools=1, maxsize=4, ssl_context=_ssl_context(self.config), retries=False, timeout=self._timeout
        )

    def _connection(self) -> urllib3.PoolManager:
        """The pool, built again with the new files when a CA or client certificate was rotated."""
        state = _files_state(self.config)
        with self._lock:
            if state != self._tls_state:
                log.info("%s: certificate files changed; connecting to the API server with them", self.config.source)
                self._http.clear()
                self._http, self._tls_state = self._pool(), state
            return self._http

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "oci-volume-csi"}
        token = self.config.token
        if self.config.token_file is not None:
            try:
                token = self.config.token_file.read_text().strip()
            except OSError as exc:
                raise errors.Unavailable(
                    f"cannot read the API token {self.config.token_file} ({exc.strerror or exc}); "
                    f"it comes from {self.config.source}"
                ) from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get(self, resource: str, namespace: str, name: str) -> dict | None:
        """GET one namespaced object's JSON; None on 404; DriverErrors naming the server otherwise."""
        server = self.config.server
        what = f"{_KINDS[resource]} {namespace}/{name}"
        url = f"{server}/api/v1/namespaces/{quote(namespace, safe='')}/{resource}/{quote(name, safe='')}"
        headers = self._headers()
        try:
            response = self._connection().request("GET", url, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            hint = "check the driver's --kubeconfig or in-cluster configuration and the network"
            if isinstance(exc, urllib3.exceptions.SSLError):
                hint = f"check the certificate authority in {self.config.source}"
            raise errors.Unavailable(
                f"Kubernetes API server {server} is unreachable for {what} ({_reason(exc)}): {hint}"
            ) from None
        log.debug("GET %s: HTTP %d", what, response.status)
        if response.status == 404:
            return None
        if response.status == 401:
            raise errors.PermissionDenied(
                f"Kubernetes API server {server} did not accept the driver's credentials for {what}: "
                f"check the token or client certificate of {self.config.source}"
            )
        if response.status == 403:
            raise errors.PermissionDenied(
                f"Kubernetes API server {server} forbids reading {what}{_status_message(response.data)}: "
                f"with --pod-pull-secrets the driver's identity needs {RBAC_NEEDED}"
            )
        if response.status != 200:
            detail = _status_message(response.data)
            raise errors.Unavailable(
                f"Kubernetes API server {server} answered HTTP {response.status} for {what}{detail}"
            )
        try:
            doc = json.loads(response.data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            raise errors.Unavailable(
                f"Kubernetes API server {server} answered {what} with something other than JSON"
            ) from None
        return doc


def _status_message(body: bytes) -> str:
    """`` (the API server's reason)`` from a Status answer, or "": it names objects and users, no data."""
    try:
        message = json.loads(body)["message"]
    except (ValueError, LookupError, TypeError, RecursionError):
        return ""
    return f" ({str(message)[:300]})" if message else ""


def _reason(exc: BaseException) -> str:
    """The innermost cause, as the socket or OpenSSL says it, without urllib3's object reprs."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__


def pod_pull_secrets(client: Client, pod: Pod) -> list[AuthIndex]:
    """The entries of the secrets ``pod`` names in ``imagePullSecrets``, one index per secret, in spec order.

    Checked against the pod as the API has it now: gone, or another UID, is FAILED_PRECONDITION.
    A named secret that is missing, or not a dockerconfig secret, is skipped with a warning.
    """
    if not (pod.namespace and pod.name and pod.uid):
        raise errors.FailedPrecondition(
            "the kubelet sent no pod name, namespace and uid, which --pod-pull-secrets needs: "
            "set podInfoOnMount: true in the driver's CSIDriver object"
        )
    found = client.pod(pod.namespace, pod.name)
    if found is None:
        raise errors.FailedPrecondition(
            f"pod {pod} does not exist in the Kubernetes API, so its pull secrets cannot be read"
        )
    if found.uid != pod.uid:
        raise errors.FailedPrecondition(
            f"pod {pod} in the Kubernetes API has uid {found.uid}, not {pod.uid} as published: the pod was "
            "recreated under the same name, and the new pod's pull secrets are not lent to the old one"
        )
    indexes = []
    for name in found.pull_secrets:
        secret = client.secret(pod.namespace, name)
        if secret is None:
            log.warning("pod %s: image pull secret %s/%s does not exist; trying the next one", pod, pod.namespace, name)
            continue
        index = pull_secret_index(secret)
        if index is not None:
            indexes.append(index)
    return indexes


def pull_secret_index(secret: Secret) -> AuthIndex | None:
    """A ``kubernetes.io/dockerconfigjson`` or legacy ``kubernetes.io/dockercfg`` secret's entries.

    Another type gives None and a warning; unusable contents are INVALID_ARGUMENT naming the
    secret and the key, never a value.
    """
    where = f"image pull secret {secret.namespace}/{secret.name}"
    key = PULL_SECRET_KEYS.get(secret.type)
    if key is None:
        log.warning(
            "%s is of type %r, not one of %s; ignoring it", where, secret.type, ", ".join(PULL_SECRET_KEYS)
        )
        return None
    try:
        doc = json.loads(secret.data[key])
    except KeyError:
        raise errors.InvalidArgument(f"{where} has no {key} key, which its type {secret.type} requires") from None
    except (ValueError, RecursionError):
        raise errors.InvalidArgument(f"{where}: {key} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise errors.InvalidArgument(f"{where}: {key} is not a JSON object")
    try:
        return AuthIndex.parse(doc.get("auths") if key == ".dockerconfigjson" else doc)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"{where}: {key}: {exc.message}") from None

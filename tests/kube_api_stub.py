"""A small Kubernetes API server: namespaced pods, secrets and service accounts over HTTPS.

It answers ``GET /api/v1/namespaces/<ns>/<resource>/<name>`` with the object's JSON, or with a
``Status`` shaped as the real API server's (404 NotFound, 401, 403 Forbidden naming the user, a
forced 500), authenticating a client certificate signed by its CA (the user is the CN, as for
the kubelet's ``system:node:<name>``) or a bearer token from ``tokens``. Tests put objects with
:meth:`KubeAPI.put` (which gives them a uid and a fresh resourceVersion) and read back what was
asked in ``seen``, to count requests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from certs import KeyPair, issue, make_ca
from http_stub import QuietHandler, serving

RESOURCES = {"pods": "Pod", "secrets": "Secret", "serviceaccounts": "ServiceAccount"}


@dataclass(frozen=True)
class PKI:
    """The cluster CA, the API server's certificate and a client certificate, all from the CA."""

    ca: KeyPair
    server: KeyPair
    client: KeyPair  # CN system:node:node-1


def make_pki(directory: Path) -> PKI:
    ca = make_ca(directory, "cluster-ca")
    return PKI(ca, issue(ca, directory, "apiserver"), issue(ca, directory, "system:node:node-1", client=True))


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    user: str  # "" when unauthenticated


@dataclass
class KubeAPI:
    url: str = ""
    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (resource, ns, name) → JSON
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token → user
    forbidden: set[tuple[str, str]] = field(default_factory=set)  # (resource, namespace) nobody may get
    fail_with: int | None = None  # a status every request gets, e.g. 500
    seen: list[Request] = field(default_factory=list)
    _version: int = 100
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, resource: str, obj: dict) -> dict:
        """Store (or replace) an object; it gets a uid unless it has one, and a new resourceVersion."""
        meta = obj.setdefault("metadata", {})
        with self._lock:
            self._version += 1
            meta["resourceVersion"] = str(self._version)
        meta.setdefault("uid", str(uuid.uuid4()))
        obj.setdefault("apiVersion", "v1")
        obj["kind"] = RESOURCES[resource]
        self.objects[(resource, meta["namespace"], meta["name"])] = obj
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> None:
        del self.objects[(resource, namespace, name)]

    def count(self, resource: str, namespace: str, name: str) -> int:
        return sum(1 for r in self.seen if r.path == f"/api/v1/namespaces/{namespace}/{resource}/{name}")

    def answer(self, path: str, user: str) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if len(parts) != 6 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] not in RESOURCES:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        _, _, _, namespace, resource, name = parts
        if self.fail_with is not None:
            return self.fail_with, status(self.fail_with, "InternalError", "etcdserver: request timed out")
        if not user:
            return 401, status(401, "Unauthorized", "Unauthorized")
        if (resource, namespace) in self.forbidden:
            return 403, status(
                403, "Forbidden",
                f'{resource} "{name}" is forbidden: User "{user}" cannot get resource "{resource}" '
                f'in API group "" in the namespace "{namespace}"',
            )  # fmt: skip
        obj = self.objects.get((resource, namespace, name))
        if obj is None:
            return 404, status(404, "NotFound", f'{resource} "{name}" not found')
        return 200, obj


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def pod(
    namespace: str, name: str, *, uid: str = "", pull_secrets: tuple[str, ...] = (), service_account: str = "default"
) -> dict:
    meta = {"namespace": namespace, "name": name, **({"uid": uid} if uid else {})}
    spec = {"serviceAccountName": service_account, "containers": [{"name": "app", "image": "busybox"}]}
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    return {"metadata": meta, "spec": spec}


def secret(namespace: str, name: str, type_: str, data: dict[str, bytes]) -> dict:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    return {"metadata": {"namespace": namespace, "name": name}, "type": type_, "data": encoded}


def dockerconfigjson(namespace: str, name: str, auths: dict) -> dict:
    data = {".dockerconfigjson": json.dumps({"auths": auths}).encode()}
    return secret(namespace, name, "kubernetes.io/dockerconfigjson", data)


def dockercfg(namespace: str, name: str, auths: dict) -> dict:
    return secret(namespace, name, "kubernetes.io/dockercfg", {".dockercfg": json.dumps(auths).encode()})


def service_account(namespace: str, name: str, annotations: dict[str, str] | None = None) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "annotations": annotations or {}}}


def _common_name(cert: dict) -> str:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


@contextlib.contextmanager
def serve_kube_api(pki: PKI) -> Iterator[KubeAPI]:
    """The stub on a fresh loopback port, HTTPS with ``pki.server``; ``url`` is ``https://127.0.0.1:PORT``."""
    api = KubeAPI()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            user = _common_name(self.connection.getpeercert() or {})
            bearer = self.headers.get("Authorization", "")
            if not user and bearer.startswith("Bearer "):
                user = api.tokens.get(bearer.removeprefix("Bearer "), "")
            api.seen.append(Request(url.path, parse_qs(url.query), user))
            self.answer_json(*api.answer(url.path, user))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    context.load_verify_locations(cafile=pki.ca.cert)
    context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate or a bearer token
    with serving(Handler, wrap=lambda sock: context.wrap_socket(sock, server_side=True)) as server:
        api.url = f"https://127.0.0.1:{server.server_address[1]}"
        yield api

"""The network: the OCI distribution API, read only (resolve a tag, fetch a manifest, a blob).

Requests go straight through ``requests`` rather than through ``oras.provider.Registry``,
because what this driver needs from the network is exactly where oras falls short:

* ``Registry.do_request`` is wrapped in a retry decorator that makes five more attempts with
  sleeps of 2 + 3**n seconds (about two minutes) after *any* exception: a refused connection,
  a DNS failure, even the ``ValueError`` it raises itself when it cannot answer an auth
  challenge (so wrong credentials also take minutes to fail). It retries HTTP 500 but not
  502/503, and passes no timeout to requests, so a registry that stops sending hangs forever.
  A kubelet waiting on NodePublishVolume needs a quick, bounded answer.
* ``get_manifest`` returns parsed JSON; the raw bytes are gone, so the manifest digest can
  neither be computed nor verified, and nothing bounds its size.
* Its auth backends read the node's ``~/.docker/config.json`` and credential helpers
  (``load_configs``); a pod would then pull with the node's credentials, which defeats
  checking each pod's own ``nodePublishSecretRef``. ``TokenAuth`` keeps one token for every
  repository, and answers a ``Basic`` challenge by fetching the realm as if it were a URL.
* Errors are bare ``ValueError``s or raw responses, with no status to map to a gRPC code.

From oras we keep the media-type constants and Docker Hub's API host, and copy one habit:
cookies are ignored (Harbor takes a cookie as a sign of a browser and starts CSRF checks).

Auth follows the distribution token spec: a request goes out with whatever authorization
worked before for its scope; on ``401`` with ``WWW-Authenticate: Bearer realm=...`` a token
is fetched from the realm (with the pod's basic credentials if any, anonymously otherwise)
and the request is retried once; on ``Basic`` the credentials are sent. What worked is
cached per scope in a session pooled per (registry, credentials), so warm calls skip TLS
and token round trips. Credentials only ever travel in headers; no message carries them,
nor any URL query (a blob redirect's pre-signed URL is a credential too).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import urlencode, urljoin, urlsplit

import oras.defaults
import requests

from csi_driver import errors
from csi_driver.reference import DOCKER_HUB, Reference, valid_digest

MANIFEST_ACCEPT = ", ".join(oras.defaults.default_manifest_accepted_media_types)
DOCKER_HUB_API = oras.defaults.registry.default_v2_registry["host"]
BLOB_CHUNK = 1024 * 1024
_SMALL_CHUNK = 64 * 1024
_MAX_TOKEN_BYTES = 1024 * 1024
_MAX_REDIRECTS = 5
_BACKOFF = 0.25
_MEDIA_TYPE_RE = re.compile(r"[\w.+-]+/[\w.+-]+")
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')


@dataclass(frozen=True)
class RegistryConfig:
    """Network policy, from the command line (``--insecure-registry``, ``--registry-timeout``)."""

    insecure_hosts: frozenset[str] = frozenset()
    timeout: float = 30.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    retries: int = 2


@dataclass(frozen=True)
class Manifest:
    """A manifest's raw bytes, kept so the caller can store exactly what the digest covers."""

    digest: str
    media_type: str
    data: bytes


@dataclass
class _Session:
    """One registry, one set of credentials: a connection pool and the authorization that worked.

    ``authorization`` maps a scope (``repository:<name>:pull``) to the Authorization header
    value the registry accepted for it, Bearer token or Basic credentials.
    """

    http: requests.Session
    basic: str | None
    authorization: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_SESSIONS: dict[tuple[str, str], _Session] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(host: str, credentials: tuple[str, str] | None) -> _Session:
    """The pooled session for ``host`` and these credentials (keyed by a hash, not the secret)."""
    fingerprint = ""
    basic = None
    if credentials is not None:
        user, password = credentials
        fingerprint = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get((host, fingerprint))
        if session is None:
            http = requests.Session()
            http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            session = _SESSIONS[(host, fingerprint)] = _Session(http=http, basic=basic)
        return session


class RegistryClient:
    """Read access to registries for one pod's credentials (or none)."""

    def __init__(self, config: RegistryConfig, credentials: tuple[str, str] | None = None) -> None:
        self.config = config
        self._credentials = credentials

    def resolve(self, ref: Reference) -> str:
        """The manifest digest ``ref`` names now; a digest in ``ref`` is returned as it is.

        Asks with HEAD, which costs no manifest transfer and does not count against Docker
        Hub's pull limit; a registry that sends no usable ``Docker-Content-Digest`` is asked
        again with GET, and the manifest is hashed here.
        """
        if ref.digest is not None:
            return ref.digest
        tag = ref.tag or "latest"
        subject = f"{ref.registry}/{ref.repository}:{tag}"
        path = f"manifests/{tag}"
        with self._request(ref, "HEAD", path, MANIFEST_ACCEPT, subject) as response:
            header = response.headers.get("Docker-Content-Digest", "")
        if valid_digest(header):
            return header
        with self._request(ref, "GET", path, MANIFEST_ACCEPT, subject) as response:
            data = self._read_manifest(response, subject)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def fetch_manifest(self, ref: Reference, digest: str) -> Manifest:
        """The manifest ``digest`` of ``ref``'s repository, size-capped and verified."""
        subject = f"manifest {digest} of {ref}"
        _check_digest_argument(digest, subject)
        with self._request(ref, "GET", f"manifests/{digest}", MANIFEST_ACCEPT, subject) as response:
            media_type = _media_type(response.headers.get("Content-Type", ""))
            data = self._read_manifest(response, subject)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise errors.DataLoss(
                f"{subject}: registry {ref.registry} sent content with digest {actual}; "
                "the registry or a proxy on the way altered it; retry, and report it if it persists"
            )
        return Manifest(digest=digest, media_type=media_type, data=data)

    @contextlib.contextmanager
    def open_blob(self, ref: Reference, digest: str) -> Iterator[Iterator[bytes]]:
        """Stream blob ``digest`` in chunks of up to 1 MiB; the store hashes and verifies them.

        Redirects (registries hand blobs to object storage) are followed; the connection is
        released when the block exits, read to the end or not.
        """
        subject = f"blob {digest} of {ref}"
        _check_digest_argument(digest, subject)
        with self._request(ref, "GET", f"blobs/{digest}", None, subject) as response:
            yield _chunks(response, BLOB_CHUNK, subject)

    def _read_manifest(self, response: requests.Response, subject: str) -> bytes:
        limit = self.config.max_manifest_bytes
        too_big = errors.ResourceExhausted(
            f"{subject} is larger than the limit of {limit} bytes: raise --max-manifest-bytes "
            "if the manifest is legitimate"
        )
        return _read_capped(response, limit, subject, too_big)

    def _request(
        self, ref: Reference, method: str, path: str, accept: str | None, subject: str
    ) -> requests.Response:
        """Send ``method`` to ``/v2/<repository>/<path>``, answering one auth challenge.

        Returns a 2xx streaming response (the caller closes it); any other status becomes
        the matching driver error.
        """
        host = DOCKER_HUB_API if ref.registry == DOCKER_HUB else ref.registry
        url = f"{self._scheme(ref.registry)}://{host}/v2/{ref.repository}/{path}"
        scope = f"repository:{ref.repository}:pull"
        session = _session(host, self._credentials)
        headers = {"Accept": accept} if accept else {}
        with session.lock:
            cached = session.authorization.get(scope)
        response = self._follow(session, method, url, _with_auth(headers, cached), subject)
        if response.status_code == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            authorization = self._answer(session, challenge, scope, ref, subject)
            if authorization is not None:
                response = self._follow(
                    session, method, url, _with_auth(headers, authorization), subject
                )
                if response.status_code not in (401, 403):
                    with session.lock:
                        session.authorization[scope] = authorization
        self._check_status(response, ref.registry, subject)
        return response

    def _answer(
        self, session: _Session, challenge: str, scope: str, ref: Reference, subject: str
    ) -> str | None:
        """The Authorization value answering ``challenge``, or None if we have nothing to offer."""
        scheme, _, rest = challenge.strip().partition(" ")
        params = {m[0].lower(): m[1] or m[2] for m in _CHALLENGE_PARAM_RE.findall(rest)}
        if scheme.lower() == "basic":
            return session.basic
        if scheme.lower() != "bearer" or not params.get("realm"):
            return None
        realm = params["realm"]
        self._refuse_plain_http(realm, subject)
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = _with_auth({"Accept": "application/json"}, session.basic)
        with self._follow(session, "GET", token_url, headers, subject) as response:
            if response.status_code in (401, 403):
                raise errors.PermissionDenied(
                    f"the token service of registry {ref.registry} refused the credentials for "
                    f"{subject}: check the pod's nodePublishSecretRef (a dockerconfigjson Secret "
                    f"with an entry for {ref.registry})"
                )
            self._check_status(response, ref.registry, f"a token for {subject}")
            too_big = errors.Unavailable(
                f"the token service of registry {ref.registry} sent more than "
                f"{_MAX_TOKEN_BYTES} bytes for {subject}"
            )
            body = _read_capped(response, _MAX_TOKEN_BYTES, subject, too_big)
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise errors.Unavailable(
                f"the token service of registry {ref.registry} sent no token for {subject}"
            )
        return f"Bearer {token}"

    def _follow(
        self,
        session: _Session,
        method: str,
        url: str,
        headers: dict[str, str],
        subject: str,
    ) -> requests.Response:
        """Send and follow redirects by hand, so each hop passes the plain-HTTP rule.

        Authorization goes only to the host it was meant for (object storage refuses a second
        auth mechanism next to its pre-signed URL anyway).
        """
        origin = urlsplit(url).netloc
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._send(session, method, url, headers, subject)
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers["Location"])
            response.close()
            self._refuse_plain_http(target, subject)
            if urlsplit(target).netloc != origin:
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
            url = target
        raise errors.Unavailable(
            f"registry {origin} redirected more than {_MAX_REDIRECTS} times for {subject}"
        )

    def _send(
        self,
        session: _Session,
        method: str,
        url: str,
        headers: dict[str, str],
        subject: str,
    ) -> requests.Response:
        """One request with bounded retries, for 5xx answers and broken connections only.

        A timeout is not retried: it has already cost ``timeout`` seconds, and the kubelet
        retries the whole publish anyway.
        """
        host = urlsplit(url).netloc
        timeout = self.config.timeout
        attempt = 0
        while True:
            try:
                response = session.http.request(
                    method,
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(timeout, timeout),
                )
            except requests.exceptions.SSLError as exc:
                raise errors.Unavailable(
                    f"TLS with registry {host} failed for {subject} ({_reason(exc)}): if the "
                    f"registry serves plain HTTP, start the driver with --insecure-registry {host}"
                ) from exc
            except requests.Timeout as exc:
                raise errors.Unavailable(
                    f"registry {host} sent nothing for {timeout:g} s for {subject}: check the "
                    "registry and the network, or raise --registry-timeout"
                ) from exc
            except requests.ConnectionError as exc:
                if attempt >= self.config.retries:
                    raise errors.Unavailable(
                        f"cannot reach registry {host} for {subject} ({_reason(exc)}): check the "
                        "registry's address, DNS and the node's network"
                    ) from exc
            except requests.RequestException as exc:
                raise errors.Unavailable(
                    f"request to registry {host} for {subject} failed ({_reason(exc)})"
                ) from exc
            else:
                if response.status_code < 500 or attempt >= self.config.retries:
                    return response
                response.close()
            time.sleep(_BACKOFF * 2**attempt)
            attempt += 1

    def _check_status(self, response: requests.Response, registry: str, subject: str) -> None:
        """Turn a non-2xx answer into the driver error DESIGN.md's table names."""
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = _error_detail(response)
        response.close()
        if status == 404:
            raise errors.NotFound(
                f"{subject} not found in registry {registry}{detail}: check the repository, "
                "the tag and the digest"
            )
        if status in (401, 403):
            given = "refused the credentials" if self._credentials else "wants credentials"
            raise errors.PermissionDenied(
                f"registry {registry} {given} for {subject}{detail}: check the pod's "
                f"nodePublishSecretRef (a dockerconfigjson Secret with an entry for {registry}); "
                "some registries answer so for a repository that does not exist"
            )
        if status == 429:
            raise errors.Unavailable(
                f"registry {registry} is rate-limiting pulls of {subject}{detail}: retry later, "
                "or pull with credentials that have a higher limit"
            )
        raise errors.Unavailable(
            f"registry {registry} answered HTTP {status} for {subject}{detail}"
        )

    def _scheme(self, registry: str) -> str:
        return "http" if registry in self.config.insecure_hosts else "https"

    def _refuse_plain_http(self, url: str, subject: str) -> None:
        """Only hosts named by --insecure-registry are ever spoken to in plain HTTP."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise errors.Unavailable(
                f"the registry sent {subject} to an URL with scheme {parts.scheme!r}, not https"
            )
        if parts.scheme == "http" and parts.netloc not in self.config.insecure_hosts:
            raise errors.Unavailable(
                f"the registry sent {subject} to plain-HTTP host {parts.netloc}, which is "
                f"refused: start the driver with --insecure-registry {parts.netloc} if intended"
            )


def _with_auth(headers: dict[str, str], authorization: str | None) -> dict[str, str]:
    if authorization is None:
        return headers
    return {**headers, "Authorization": authorization}


def _check_digest_argument(digest: str, subject: str) -> None:
    """A digest goes into a URL path; only the verified form may."""
    if not valid_digest(digest):
        raise errors.InvalidArgument(f"{subject}: not a sha256 digest (sha256:<64 hex digits>)")


def _error_detail(response: requests.Response) -> str:
    """`` (CODE: message)`` from a registry's JSON error body, or "" if there is none."""
    try:
        body = next(response.iter_content(4096), b"")
        first = json.loads(body)["errors"][0]
        return f" ({first['code']}: {first.get('message', '')})"
    except (requests.RequestException, ValueError, LookupError, TypeError):
        return ""


def _read_capped(
    response: requests.Response, limit: int, subject: str, too_big: errors.DriverError
) -> bytes:
    """Read a small body whole, refusing early when it announces or grows past ``limit``."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    data = bytearray()
    for chunk in _chunks(response, _SMALL_CHUNK, subject):
        data += chunk
        if len(data) > limit:
            raise too_big
    return bytes(data)


def _chunks(response: requests.Response, size: int, subject: str) -> Iterator[bytes]:
    """The body in chunks; a connection that breaks mid-body is Unavailable, like one that fails."""
    try:
        yield from response.iter_content(size)
    except requests.RequestException as exc:
        host = urlsplit(response.url).netloc
        raise errors.Unavailable(
            f"download of {subject} from {host} broke off ({_reason(exc)}): retry"
        ) from exc


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type header, without parameters; "" if it is not one."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type if _MEDIA_TYPE_RE.fullmatch(media_type) else ""


def _reason(exc: BaseException) -> str:
    """The innermost cause requests wraps, without the URL (which may carry a signed query)."""
    reason: object = exc
    while isinstance(reason, BaseException) and reason.args:
        inner = getattr(reason.args[0], "reason", None) or reason.args[0]
        if inner is reason or not isinstance(inner, BaseException):
            break
        reason = inner
    return str(reason)

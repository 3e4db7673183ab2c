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
cached per scope in a session pooled per (endpoint, credentials), so warm calls skip TLS
and token round trips; an expired token is answered with a 401 and replaced the same way.
Credentials only ever travel in headers, and only to the registry itself: never to a mirror,
never across a redirect to another host; no message or log line carries them, nor any URL
query (a blob redirect's pre-signed URL is a credential too).

Where requests go comes from containerd's ``hosts.toml`` (``hosts.py``): mirrors in order,
then the upstream server, each with its own CAs, client certificates and headers. Plain HTTP
is spoken only to hosts named by ``--insecure-registry`` or by an ``http://`` entry there.

Time is bounded three ways: each connect and each wait for bytes by ``--registry-timeout``
(a hosts.toml ``dial_timeout`` for connects to that host), retries by a count, and a whole
pull by ``--pull-timeout``, which also cuts off a body trickled too slowly for any read
timeout to notice, so a hung registry never holds a gRPC thread past the budget.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import netrc  # noqa: F401 - requests imports it at its first request (~0.8 ms of the first pull)
import re
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import oras.defaults
import requests
import urllib3
from requests.adapters import HTTPAdapter

from csi_driver import errors, metrics
from csi_driver.reference import Reference, valid_digest
from csi_driver.registry import hosts
from csi_driver.registry.hosts import Endpoint

REFERRERS_ACCEPT = "application/vnd.oci.image.index.v1+json"  # the referrers API answers an OCI index
MANIFEST_ACCEPT = ", ".join(oras.defaults.default_manifest_accepted_media_types)
BLOB_CHUNK = 1024 * 1024
_SMALL_CHUNK = 64 * 1024
_MAX_TOKEN_BYTES = 1024 * 1024
_MAX_REDIRECTS = 5
_BACKOFF = 0.25
_MEDIA_TYPE_RE = re.compile(r"[\w.+-]+/[\w.+-]+")
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')
# What a mirror may pass on to the next host: it lacks the repository, refuses, or is down.
_FALLBACK = (errors.NotFound, errors.PermissionDenied, errors.Unavailable)

log = logging.getLogger(__name__)
# urllib3 logs each request line, query included, at DEBUG; a redirect's pre-signed query is a
# credential, and --log-level DEBUG must not print it.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)
# skip_verify is the admin's explicit choice in hosts.toml; urllib3 would warn on every request.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


@dataclass(frozen=True)
class RegistryConfig:
    """Network policy, from the command line (``--insecure-registry``, ``--registry-timeout``,
    ``--pull-timeout``, ``--registry-config-dir``; None reads no hosts.toml)."""

    insecure_hosts: frozenset[str] = frozenset()
    timeout: float = 30.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    retries: int = 2
    pull_timeout: float = 300.0
    config_dir: Path | None = None


@dataclass(frozen=True)
class Manifest:
    """A manifest's raw bytes, kept so the caller can store exactly what the digest covers."""

    digest: str
    media_type: str
    data: bytes


@dataclass
class _Session:
    """One endpoint, one set of credentials: a connection pool and the authorization that worked.

    ``authorization`` maps a scope (``repository:<name>:pull``) to the Authorization header
    value the registry accepted for it, Bearer token or Basic credentials.
    """

    http: requests.Session
    basic: str | None
    authorization: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _TLSAdapter(HTTPAdapter):
    """HTTPS with one endpoint's TLS context (the documented way to give requests an SSLContext)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        pool["ssl_context"] = self._context
        return host, pool


_SESSIONS: dict[tuple[Endpoint, str], _Session] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(endpoint: Endpoint, credentials: tuple[str, str] | None) -> _Session:
    """The pooled session for ``endpoint`` and these credentials (keyed by a hash, not the secret)."""
    fingerprint = ""
    basic = None
    if credentials is not None:
        user, password = credentials
        fingerprint = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get((endpoint, fingerprint))
        if session is None:
            http = requests.Session()
            http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            http.mount("https://", _TLSAdapter(hosts.ssl_context(endpoint.tls)))
            if endpoint.tls.skip_verify:
                log.warning("the certificate of registry host %s is not verified (skip_verify)", endpoint.host)
            session = _SESSIONS[(endpoint, fingerprint)] = _Session(http=http, basic=basic)
        return session


class _Budget:
    """The time one pull may spend on registries (``--pull-timeout``), counted from its start."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return self.ends - time.monotonic()

    def spent(self, host: str, subject: str) -> errors.Unavailable:
        return errors.Unavailable(
            f"gave up on registry {host} for {subject}: the pull took longer than its budget of "
            f"{self.seconds:g} s (--pull-timeout); the registry is slow or stalled: check it, or raise "
            "--pull-timeout for very large artifacts"
        )


class _Reaper:
    """Shuts down responses still being read when their pull's budget ends.

    The read timeout bounds each wait for bytes, not a body trickled a few bytes at a time, so
    without this a trickling registry could hold a gRPC thread for ever. Shutting the socket
    down from another thread (urllib3's ``HTTPResponse.shutdown``) wakes the blocked read at
    once. One daemon thread serves every pull; closed responses are skipped.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, weakref.ref]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, response: requests.Response, deadline: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (deadline, next(self._order), weakref.ref(response.raw)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="registry-reaper", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                raw = heapq.heappop(self._due)[2]()
            if raw is not None and not raw.closed:
                with contextlib.suppress(Exception):  # released to the pool or closed meanwhile
                    raw.shutdown()


_REAPER = _Reaper()


class RegistryClient:
    """Read access to registries for one pull, with one pod's credentials (or none).

    A client serves one pull: the pull's budget (``--pull-timeout``) starts when the client is
    made, and a mirror it found unreachable is not asked again during that pull.
    """

    def __init__(self, config: RegistryConfig, credentials: tuple[str, str] | None = None) -> None:
        self.config = config
        self._credentials = credentials
        self._budget = _Budget(config.pull_timeout)
        self._routes: dict[str, tuple[Endpoint, ...]] = {}
        self._down: set[Endpoint] = set()

    def resolve(self, ref: Reference) -> str:
        """The manifest digest ``ref`` names now; a digest in ``ref`` is returned as it is.

        Asks with HEAD, which costs no manifest transfer and does not count against Docker
        Hub's pull limit; a registry that sends no usable ``Docker-Content-Digest`` is asked
        again with GET, and the manifest is hashed here. Only hosts with the ``resolve``
        capability are asked: a tag is a claim that only a trusted host may make.
        """
        if ref.digest is not None:
            return ref.digest
        tag = ref.tag or "latest"
        subject = f"{ref.registry}/{ref.repository}:{tag}"
        path = f"manifests/{tag}"
        with self._request(ref, "HEAD", path, MANIFEST_ACCEPT, subject, "resolve") as response:
            header = response.headers.get("Docker-Content-Digest", "")
        if valid_digest(header):
            return header
        return self.fetch_tagged(ref).digest

    def fetch_tagged(self, ref: Reference) -> Manifest:
        """The manifest the tag of ``ref`` names now, by one GET: ``resolve`` and
        ``fetch_manifest`` in one round trip, for a reference whose manifest is needed anyway.

        Its digest is the hash of the bytes; a ``Docker-Content-Digest`` that disagrees is
        ``DATA_LOSS`` (the registry, or a proxy on the way, altered them).
        """
        tag = ref.tag or "latest"
        subject = f"{ref.registry}/{ref.repository}:{tag}"
        with self._request(ref, "GET", f"manifests/{tag}", MANIFEST_ACCEPT, subject, "resolve") as response:
            header = response.headers.get("Docker-Content-Digest", "")
            media_type = _media_type(response.headers.get("Content-Type", ""))
            data = self._read_manifest(response, subject)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if valid_digest(header) and header != digest:
            raise errors.DataLoss(
                f"{subject}: registry {ref.registry} says the manifest is {header} but sent content with "
                f"digest {digest}; the registry or a proxy on the way altered it; retry, and report it if it persists"
            )
        return Manifest(digest=digest, media_type=media_type, data=data)

    def fetch_manifest(self, ref: Reference, digest: str) -> Manifest:
        """The manifest ``digest`` of ``ref``'s repository, size-capped and verified."""
        subject = f"manifest {digest} of {ref}"
        _check_digest_argument(digest, subject)
        with self._request(ref, "GET", f"manifests/{digest}", MANIFEST_ACCEPT, subject, "pull") as response:
            media_type = _media_type(response.headers.get("Content-Type", ""))
            data = self._read_manifest(response, subject)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise errors.DataLoss(
                f"{subject}: registry {ref.registry} sent content with digest {actual}; "
                "the registry or a proxy on the way altered it; retry, and report it if it persists"
            )
        return Manifest(digest=digest, media_type=media_type, data=data)

    def fetch_referrers(self, ref: Reference, digest: str) -> bytes | None:
        """The OCI 1.1 referrers index of ``digest`` (``GET /v2/<repo>/referrers/<digest>``), or
        None where the registry has no referrers API.

        A 404 is such a registry's normal answer (distribution 2.8, Debian's ``docker-registry``,
        gives it), not an error: the caller falls back to the referrers tag schema. The index is
        size-capped like a manifest; the registry builds it, so it has no digest to verify, and
        the caller filters it by artifact type (a registry may ignore the ``artifactType`` query).
        """
        subject = f"referrers of {digest} in {ref.registry}/{ref.repository}"
        _check_digest_argument(digest, subject)
        try:
            with self._request(ref, "GET", f"referrers/{digest}", REFERRERS_ACCEPT, subject, "pull") as response:
                return self._read_manifest(response, subject)
        except errors.NotFound:
            return None

    @contextlib.contextmanager
    def open_blob(self, ref: Reference, digest: str) -> Iterator[Iterator[bytes]]:
        """Stream blob ``digest`` in chunks of up to 1 MiB; the store hashes and verifies them.

        Redirects (registries hand blobs to object storage) are followed; the connection is
        released when the block exits, read to the end or not.
        """
        subject = f"blob {digest} of {ref}"
        _check_digest_argument(digest, subject)
        with self._request(ref, "GET", f"blobs/{digest}", None, subject, "pull") as response:
            yield self._chunks(response, BLOB_CHUNK, subject)

    def _read_manifest(self, response: requests.Response, subject: str) -> bytes:
        limit = self.config.max_manifest_bytes
        too_big = errors.ResourceExhausted(
            f"{subject} is larger than the limit of {limit} bytes: raise --max-manifest-bytes "
            "if the manifest is legitimate"
        )
        return self._read_capped(response, limit, subject, too_big)

    def _endpoints(self, registry: str) -> tuple[Endpoint, ...]:
        """hosts.toml's answer for ``registry``, read once per pull (so edits apply to the next)."""
        if registry not in self._routes:
            self._routes[registry] = hosts.endpoints(self.config.config_dir, registry, self.config.insecure_hosts)
        return self._routes[registry]

    @contextlib.contextmanager
    def _request(
        self, ref: Reference, method: str, path: str, accept: str | None, subject: str, capability: str
    ) -> Iterator[requests.Response]:
        """The 2xx streaming response of the first endpoint that gives one; closed on exit.

        Mirrors are tried in hosts.toml order, then the upstream server, as containerd does: a
        mirror that lacks the repository, refuses, fails or cannot be reached passes the request
        on, so it costs time, never the pull. The last endpoint's error is the one raised.
        """
        candidates = [e for e in self._endpoints(ref.registry) if capability in e.capabilities]
        if not candidates:
            raise errors.Unavailable(
                f"no host configured for registry {ref.registry} under --registry-config-dir has the "
                f"capability {capability!r} needed for {subject}: add it to the server or a [host] entry"
            )
        for endpoint in candidates:
            last = endpoint is candidates[-1]
            if endpoint in self._down and not last:
                continue
            try:
                response = self._request_at(endpoint, ref, method, path, accept, subject)
            except _FALLBACK as exc:
                if last or self._budget.left() <= 0:
                    raise
                if isinstance(exc, errors.Unavailable):
                    self._down.add(endpoint)
                log.info("host %s failed for %s, trying the next one: %s", endpoint.host, subject, exc.message)
                continue
            with response:
                yield response
            return

    def _request_at(
        self, endpoint: Endpoint, ref: Reference, method: str, path: str, accept: str | None, subject: str
    ) -> requests.Response:
        """Send ``method`` to ``<root>/<repository>/<path>`` at ``endpoint``, answering one auth challenge.

        The pod's credentials go only to the registry itself: a mirror is another party, and the
        pod's Secret names the registry (containerd, too, gives the kubelet's credentials only to
        the host they were issued for). Any status but 2xx becomes the matching driver error.
        """
        url = f"{endpoint.root}/{ref.repository}/{path}"
        if endpoint.ns:
            url += "?" + urlencode({"ns": endpoint.ns})
        scope = f"repository:{ref.repository}:pull"
        own = endpoint.host in (ref.registry, hosts.api_host(ref.registry))
        session = _session(endpoint, self._credentials if own else None)
        headers = dict(endpoint.headers)
        if accept:
            headers["Accept"] = accept
        with session.lock:
            cached = session.authorization.get(scope)
        response = self._follow(session, endpoint, method, url, _with_auth(headers, cached), subject)
        if response.status_code == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            authorization = self._answer(session, endpoint, challenge, scope, subject)
            if authorization is not None:
                response = self._follow(session, endpoint, method, url, _with_auth(headers, authorization), subject)
                if response.status_code not in (401, 403):
                    with session.lock:
                        session.authorization[scope] = authorization
        where = ref.registry if own else f"{endpoint.host} (a mirror of {ref.registry})"
        _check_status(response, where, subject, session.basic is not None)
        return response

    def _answer(
        self, session: _Session, endpoint: Endpoint, challenge: str, scope: str, subject: str
    ) -> str | None:
        """The Authorization value answering ``challenge``, or None if we have nothing to offer."""
        scheme, _, rest = challenge.strip().partition(" ")
        params = {m[0].lower(): m[1] or m[2] for m in _CHALLENGE_PARAM_RE.findall(rest)}
        if scheme.lower() == "basic":
            return session.basic
        if scheme.lower() != "bearer" or not params.get("realm"):
            return None
        realm = params["realm"]
        self._refuse_plain_http(endpoint, realm, subject)
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = _with_auth({**dict(endpoint.headers), "Accept": "application/json"}, session.basic)
        with self._follow(session, endpoint, "GET", token_url, headers, subject) as response:
            if response.status_code in (401, 403):
                raise errors.CredentialsRefused(
                    f"the token service of registry {endpoint.host} refused the credentials for "
                    f"{subject}: check the pod's nodePublishSecretRef (a dockerconfigjson Secret "
                    f"with an entry for {endpoint.host})"
                )
            _check_status(response, endpoint.host, f"a token for {subject}", session.basic is not None)
            too_big = errors.Unavailable(
                f"the token service of registry {endpoint.host} sent more than "
                f"{_MAX_TOKEN_BYTES} bytes for {subject}"
            )
            body = self._read_capped(response, _MAX_TOKEN_BYTES, subject, too_big)
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise errors.Unavailable(
                f"the token service of registry {endpoint.host} sent no token for {subject}"
            )
        return f"Bearer {token}"

    def _follow(
        self,
        session: _Session,
        endpoint: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        subject: str,
    ) -> requests.Response:
        """Send and follow redirects by hand, so each hop passes the plain-HTTP rule.

        Only ``Accept`` travels to another host: Authorization and hosts.toml headers are meant
        for the registry (object storage refuses a second auth mechanism next to its
        pre-signed URL anyway).
        """
        origin = urlsplit(url).netloc
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._send(session, endpoint, method, url, headers, subject)
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers["Location"])
            response.close()
            self._refuse_plain_http(endpoint, target, subject)
            if urlsplit(target).netloc != origin:
                headers = {k: v for k, v in headers.items() if k == "Accept"}
            url = target
        raise errors.Unavailable(
            f"registry {origin} redirected more than {_MAX_REDIRECTS} times for {subject}"
        )

    def _send(
        self,
        session: _Session,
        endpoint: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        subject: str,
    ) -> requests.Response:
        """One request with bounded retries, for 5xx answers and broken connections only.

        Every wait is cut to what is left of the pull's budget, and the response is handed to
        the reaper, which cuts its body off when the budget ends. A timeout is not retried: it
        has already cost ``timeout`` seconds, and the kubelet retries the whole publish anyway.
        """
        host = urlsplit(url).netloc
        attempt = 0
        while True:
            left = self._budget.left()
            if left <= 0:
                raise self._budget.spent(host, subject)
            connect = min(endpoint.dial_timeout or self.config.timeout, left)
            read = min(self.config.timeout, left)
            sent = time.monotonic()
            try:
                response = session.http.request(
                    method,
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(connect, read),
                    # per request: a session's verify=False loses to $REQUESTS_CA_BUNDLE
                    verify=not endpoint.tls.skip_verify,
                )
            except requests.exceptions.SSLError as exc:
                _observe(host, "tls-error", sent)
                raise _tls_failure(host, subject, exc) from exc
            except requests.Timeout as exc:
                _observe(host, "timeout", sent)
                if self._budget.left() <= 0:
                    raise self._budget.spent(host, subject) from exc
                waited = connect if isinstance(exc, requests.ConnectTimeout) else read
                raise errors.Unavailable(
                    f"registry {host} sent nothing for {waited:g} s for {subject}: check the "
                    "registry and the network, or raise --registry-timeout"
                ) from exc
            except requests.ConnectionError as exc:
                _observe(host, "connection-error", sent)
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
                _observe(host, str(response.status_code), sent)
                log.debug("%s %s%s: HTTP %d", method, host, urlsplit(url).path, response.status_code)
                if response.status_code < 500 or attempt >= self.config.retries:
                    _REAPER.watch(response, self._budget.ends)
                    return response
                response.close()
            time.sleep(max(0.0, min(_BACKOFF * 2**attempt, self._budget.left())))
            attempt += 1

    def _refuse_plain_http(self, endpoint: Endpoint, url: str, subject: str) -> None:
        """Plain HTTP only to hosts named by --insecure-registry or by an http:// hosts.toml entry."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise errors.Unavailable(
                f"the registry sent {subject} to an URL with scheme {parts.scheme!r}, not https"
            )
        configured = endpoint.scheme == "http" and parts.netloc == endpoint.host
        if parts.scheme == "http" and not configured and parts.netloc not in self.config.insecure_hosts:
            raise errors.Unavailable(
                f"the registry sent {subject} to plain-HTTP host {parts.netloc}, which is "
                f"refused: start the driver with --insecure-registry {parts.netloc} if intended"
            )

    def _read_capped(
        self, response: requests.Response, limit: int, subject: str, too_big: errors.DriverError
    ) -> bytes:
        """Read a small body whole, refusing early when it announces or grows past ``limit``."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        data = bytearray()
        for chunk in self._chunks(response, _SMALL_CHUNK, subject):
            data += chunk
            if len(data) > limit:
                raise too_big
        return bytes(data)

    def _chunks(self, response: requests.Response, size: int, subject: str) -> Iterator[bytes]:
        """The body in chunks; a body that breaks off, or outlives the budget, is Unavailable."""
        host = urlsplit(response.url).netloc
        try:
            yield from response.iter_content(size)
        except requests.RequestException as exc:
            if self._budget.left() <= 0:
                raise self._budget.spent(host, subject) from exc
            raise errors.Unavailable(
                f"download of {subject} from {host} broke off ({_reason(exc)}): retry"
            ) from exc
        if self._budget.left() <= 0:  # the reaper may have cut a body that announced no length
            raise self._budget.spent(host, subject)


def _check_status(response: requests.Response, where: str, subject: str, sent_credentials: bool) -> None:
    """Turn a non-2xx answer into the driver error docs/errors.md names."""
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = _error_detail(response)
    response.close()
    if status == 404:
        raise errors.NotFound(
            f"{subject} not found in registry {where}{detail}: check the repository, "
            "the tag and the digest"
        )
    if status in (401, 403):
        given = "refused the credentials" if sent_credentials else "wants credentials"
        raise errors.CredentialsRefused(
            f"registry {where} {given} for {subject}{detail}: check the pod's "
            f"nodePublishSecretRef (a dockerconfigjson Secret with an entry for {where}); "
            "some registries answer so for a repository that does not exist"
        )
    if status == 429:
        raise errors.Unavailable(
            f"registry {where} is rate-limiting pulls of {subject}{detail}: retry later, "
            "or pull with credentials that have a higher limit"
        )
    raise errors.Unavailable(f"registry {where} answered HTTP {status} for {subject}{detail}")


def _tls_failure(host: str, subject: str, exc: requests.exceptions.SSLError) -> errors.Unavailable:
    """A failed TLS handshake, with the hint that fits: an untrusted certificate, or another cause."""
    if isinstance(_innermost(exc), ssl.SSLCertVerificationError):
        hint = (
            f"if {host} has a certificate from a private CA, name the CA as `ca` in its hosts.toml "
            "under --registry-config-dir"
        )
    else:
        hint = (
            f"if the registry serves plain HTTP, start the driver with --insecure-registry {host}; "
            "if it wants a client certificate, name it as `client` in its hosts.toml"
        )
    return errors.Unavailable(f"TLS with registry {host} failed for {subject} ({_reason(exc)}): {hint}")


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
    except (requests.RequestException, ValueError, LookupError, TypeError, RecursionError):
        return ""


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type header, without parameters; "" if it is not one."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type if _MEDIA_TYPE_RE.fullmatch(media_type) else ""


def _innermost(exc: BaseException) -> BaseException:
    """The innermost exception requests wraps (urllib3's, then ssl's or the socket's)."""
    reason: BaseException = exc
    while reason.args:
        inner = getattr(reason.args[0], "reason", None)  # MaxRetryError's; ssl's is a str
        if not isinstance(inner, BaseException):
            inner = reason.args[0]
        if inner is reason or not isinstance(inner, BaseException):
            break
        reason = inner
    return reason


def _observe(host: str, status: str, sent: float) -> None:
    metrics.REGISTRY_SECONDS.labels(metrics.host_label(host), status).observe(time.monotonic() - sent)


def _reason(exc: BaseException) -> str:
    """The innermost cause, without the URL (which may carry a signed query)."""
    return str(_innermost(exc))

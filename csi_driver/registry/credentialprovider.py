"""Kubelet credential-provider plugins: the kubelet's config file and exec protocol, and its cache.

Clusters on ECR, GCR/Artifact Registry or ACR get their pull credentials from a plugin binary
that the kubelet runs (``--image-credential-provider-config``, ``--image-credential-provider-bin-dir``).
Reading the same files and speaking the same protocol lets this driver pull whatever the
kubelet can pull, with no second set of credentials to manage:

* the config is a ``CredentialProviderConfig`` (``kubelet.config.k8s.io/v1``, YAML or JSON):
  ``providers[]`` with ``name`` (the executable in the bin dir), ``matchImages`` (registry globs,
  matched as ``dockerconfig`` matches keys), ``defaultCacheDuration``, ``apiVersion``
  (``credentialprovider.kubelet.k8s.io/v1``), ``args`` and ``env``;
* a plugin whose ``matchImages`` match the image is run with ``args``, the driver's environment
  plus ``env``, and a ``CredentialProviderRequest`` for the image (``host/repository``, as the
  kubelet sends it) on stdin; it answers a ``CredentialProviderResponse`` on stdout whose ``auth``
  keys are matched against the image like docker config keys;
* the answer is cached per image, per registry or globally (``cacheKeyType``) for
  ``cacheDuration``, else ``defaultCacheDuration``; a duration of 0 is not cached;
* concurrent lookups of one image run the plugin once; a plugin gets ``timeout`` seconds (the
  kubelet's one minute by default), then its whole process group is killed.

Providers with ``tokenAttributes`` (KEP-4412: the plugin swaps the pod's service-account token for
registry credentials, e.g. ECR or ACR workload identity) get what the kubelet gives them: the
request carries ``serviceAccountToken`` (a token of ``serviceAccountTokenAudience`` bound to the
pod, which the kubelet hands the driver because the CSIDriver object asks for it in
``spec.tokenRequests``) and ``serviceAccountAnnotations`` (the service account's annotations the
config names). Their answers are cached per service account as well (namespace, name, uid and
those annotations, as the kubelet keys them), so one account's credentials never serve another.
Which account and token a lookup is for is the caller's business (:class:`ServiceAccount`).
A plugin's stdout and stderr are never logged or put in a message, since both may hold
credentials; neither is the token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from csi_driver import errors
from csi_driver.registry.dockerconfig import AuthIndex, Credentials, Pattern, matches, pattern

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
CONFIG_API_VERSIONS = frozenset(f"kubelet.config.k8s.io/{v}" for v in ("v1", "v1beta1", "v1alpha1"))
PLUGIN_API_VERSIONS = frozenset(f"credentialprovider.kubelet.k8s.io/{v}" for v in ("v1", "v1beta1", "v1alpha1"))
_CACHE_KEY_TYPES = ("Image", "Registry", "Global")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)"


def parse_duration(text: str) -> float:
    """A Go duration (``1h30m``, ``300ms``, ``0``) in seconds; ValueError otherwise."""
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    if body == "0":
        return 0.0
    if not body or not re.fullmatch(f"(?:{_DURATION_PART})+", body):
        raise ValueError(f"{text!r} is not a duration like 10m, 1h30m or 0s")
    return sign * sum(float(n) * _DURATION_UNITS[unit] for n, unit in re.findall(_DURATION_PART, body))


@dataclass(frozen=True)
class TokenAttributes:
    """A provider's ``tokenAttributes``: it wants the pod's service-account token of ``audience``."""

    audience: str
    require_service_account: bool
    required_annotation_keys: tuple[str, ...] = ()
    optional_annotation_keys: tuple[str, ...] = ()
    cache_type: str = "ServiceAccount"  # or "Token": answers are cached per token, not per account


@dataclass(frozen=True)
class ProviderSpec:
    """One ``providers[]`` entry, validated."""

    name: str
    executable: Path
    match_images: tuple[Pattern, ...]
    default_cache_duration: float
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    token_attributes: TokenAttributes | None = None


@dataclass(frozen=True)
class ServiceAccount:
    """The service account a lookup is for: what keys the cache, and what the request carries.

    ``token`` is empty for a provider that runs without one (no ``requireServiceAccount`` and no
    token); ``annotations`` holds only the keys the provider's config names.
    """

    namespace: str
    name: str
    uid: str
    annotations: tuple[tuple[str, str], ...] = ()  # sorted
    token: str = field(default="", repr=False, compare=False)

    def cache_key(self, cache_type: str) -> tuple[str, ...]:
        """What the kubelet keys a service-account provider's answers by, besides the image."""
        key = (self.namespace, self.name, self.uid, *(f"{k}={v}" for k, v in self.annotations))
        if cache_type == "Token":
            key += ("token", hashlib.sha256(self.token.encode()).hexdigest() if self.token else "")
        return key


def load_config(config: Path, bin_dir: Path) -> list[ProviderSpec]:
    """Read and check a CredentialProviderConfig; raise FailedPrecondition saying what is wrong."""

    def bad(what: str) -> errors.FailedPrecondition:
        return errors.FailedPrecondition(f"credential provider config {config}: {what}")

    try:
        doc = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise bad(f"cannot be read as YAML or JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "CredentialProviderConfig":
        raise bad("kind is not CredentialProviderConfig")
    if doc.get("apiVersion") not in CONFIG_API_VERSIONS:
        raise bad(f"apiVersion {doc.get('apiVersion')!r} is not one of {sorted(CONFIG_API_VERSIONS)}")
    providers = doc.get("providers")
    if not isinstance(providers, list) or not providers:
        raise bad("providers must list at least one provider")
    specs: list[ProviderSpec] = []
    for index, entry in enumerate(providers):
        try:
            spec = _provider(entry, bin_dir)
        except (errors.DriverError, ValueError, TypeError) as exc:
            raise bad(f"providers[{index}]: {getattr(exc, 'message', exc)}") from None
        if any(s.name == spec.name for s in specs):
            raise bad(f"provider name {spec.name!r} appears twice")
        specs.append(spec)
    return specs


def _provider(entry: object, bin_dir: Path) -> ProviderSpec:
    """Validate one provider as the kubelet does."""
    if not isinstance(entry, dict):
        raise TypeError("not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or " " in name or name in (".", ".."):
        raise ValueError(f"name {name!r} must be a file name in the bin dir (no '/', no spaces)")
    if entry.get("apiVersion") not in PLUGIN_API_VERSIONS:
        raise ValueError(f"{name}: apiVersion {entry.get('apiVersion')!r} is not one of {sorted(PLUGIN_API_VERSIONS)}")
    tokens = _token_attributes(name, entry)
    match_images = entry.get("matchImages")
    if not isinstance(match_images, list) or not match_images:
        raise ValueError(f"{name}: matchImages must list at least one registry")
    if entry.get("defaultCacheDuration") is None:
        raise ValueError(f"{name}: defaultCacheDuration is required")
    default = parse_duration(str(entry["defaultCacheDuration"]))
    if default < 0:
        raise ValueError(f"{name}: defaultCacheDuration must not be negative")
    args, env = entry.get("args") or [], entry.get("env") or []
    if not isinstance(args, list) or not isinstance(env, list):
        raise TypeError(f"{name}: args and env must be lists")
    executable = bin_dir / name
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        raise ValueError(f"{name}: {executable} is not an executable file")
    return ProviderSpec(
        name=name,
        executable=executable,
        match_images=tuple(pattern(str(m)) for m in match_images),
        default_cache_duration=default,
        api_version=entry["apiVersion"],
        args=tuple(str(a) for a in args),
        env=tuple(_env_var(name, e) for e in env),
        token_attributes=tokens,
    )


def _token_attributes(name: str, entry: dict) -> TokenAttributes | None:
    """``tokenAttributes`` checked as the kubelet checks them (its validateCredentialProviderConfig)."""
    attributes = entry.get("tokenAttributes")
    if attributes is None:
        return None
    if not isinstance(attributes, dict):
        raise TypeError(f"{name}: tokenAttributes must be an object")
    if entry["apiVersion"] != "credentialprovider.kubelet.k8s.io/v1":
        raise ValueError(f"{name}: tokenAttributes needs apiVersion credentialprovider.kubelet.k8s.io/v1")
    audience = attributes.get("serviceAccountTokenAudience")
    if not isinstance(audience, str) or not audience.strip():
        raise ValueError(f"{name}: tokenAttributes.serviceAccountTokenAudience is required")
    require = attributes.get("requireServiceAccount")
    if not isinstance(require, bool):
        raise ValueError(f"{name}: tokenAttributes.requireServiceAccount is required (true or false)")
    keys = {}
    for field_name in ("requiredServiceAccountAnnotationKeys", "optionalServiceAccountAnnotationKeys"):
        listed = attributes.get(field_name) or []
        if not isinstance(listed, list) or not all(isinstance(k, str) and k for k in listed):
            raise ValueError(f"{name}: tokenAttributes.{field_name} must list annotation keys")
        if len(set(listed)) != len(listed):
            raise ValueError(f"{name}: tokenAttributes.{field_name} names a key twice")
        keys[field_name] = tuple(listed)
    both = set(keys["requiredServiceAccountAnnotationKeys"]) & set(keys["optionalServiceAccountAnnotationKeys"])
    if both:
        raise ValueError(f"{name}: annotation keys {sorted(both)} are both required and optional")
    if keys["requiredServiceAccountAnnotationKeys"] and not require:
        raise ValueError(f"{name}: requiredServiceAccountAnnotationKeys needs requireServiceAccount: true")
    cache_type = attributes.get("cacheType") or "ServiceAccount"  # required from 1.34 on; 1.33 had none
    if cache_type not in ("ServiceAccount", "Token"):
        raise ValueError(f"{name}: tokenAttributes.cacheType {cache_type!r} is not ServiceAccount or Token")
    return TokenAttributes(
        audience,
        require,
        keys["requiredServiceAccountAnnotationKeys"],
        keys["optionalServiceAccountAnnotationKeys"],
        cache_type,
    )


def _env_var(provider: str, entry: object) -> tuple[str, str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ValueError(f"{provider}: every env entry needs a name and a value")
    return entry["name"], str(entry.get("value", ""))


@dataclass(frozen=True)
class Response:
    """A plugin's answer, checked."""

    cache_key_type: str
    cache_duration: float | None
    auth: AuthIndex


def run_plugin(spec: ProviderSpec, image: str, timeout: float, account: ServiceAccount | None = None) -> Response:
    """Exec the plugin for ``image``; raise Unavailable/FailedPrecondition naming it, never its output.

    With ``account``, the request carries its token and annotations, each only when there is
    one (the kubelet's fields are ``omitempty``).
    """
    request: dict[str, object] = {"apiVersion": spec.api_version, "kind": "CredentialProviderRequest", "image": image}
    if account is not None and account.token:
        request["serviceAccountToken"] = account.token
    if account is not None and account.annotations:
        request["serviceAccountAnnotations"] = dict(account.annotations)
    try:
        process = subprocess.Popen(
            [str(spec.executable), *spec.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **dict(spec.env)},
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as exc:
        raise errors.FailedPrecondition(f"credential provider {spec.name} cannot be run: {exc.strerror}") from None
    try:
        stdout, _ = process.communicate(json.dumps(request).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise errors.Unavailable(
            f"credential provider {spec.name} gave no answer for {image} within {timeout:g} s; it was killed"
        ) from None
    if process.returncode != 0:
        raise errors.Unavailable(
            f"credential provider {spec.name} failed for {image} with exit status {process.returncode} "
            "(its output is not logged as it may hold secrets; run it by hand to see why)"
        )
    return _response(spec, stdout)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=5)  # reap it; a child that left the group may hold the pipes


def _response(spec: ProviderSpec, stdout: bytes) -> Response:
    def bad(what: str) -> errors.Unavailable:
        return errors.Unavailable(f"credential provider {spec.name} answered {what}")

    try:
        doc = json.loads(stdout)
    except ValueError:
        raise bad("something that is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != "CredentialProviderResponse":
        raise bad("with a kind other than CredentialProviderResponse")
    if doc.get("apiVersion") != spec.api_version:
        raise bad(f"apiVersion {doc.get('apiVersion')!r}, not the configured {spec.api_version}")
    if doc.get("cacheKeyType") not in _CACHE_KEY_TYPES:
        raise bad(f"cacheKeyType {doc.get('cacheKeyType')!r}, not one of {', '.join(_CACHE_KEY_TYPES)}")
    duration = None
    if doc.get("cacheDuration") is not None:
        try:
            duration = max(0.0, parse_duration(str(doc["cacheDuration"])))
        except ValueError as exc:
            raise bad(f"a cacheDuration that is not a duration: {exc}") from None
    try:
        auth = AuthIndex.parse(doc.get("auth"))
    except errors.DriverError as exc:
        raise bad(f"an unusable auth map: {exc.message}") from None
    return Response(cache_key_type=doc["cacheKeyType"], cache_duration=duration, auth=auth)


@dataclass
class Provider:
    """A configured plugin with its answer cache; safe to share between threads."""

    spec: ProviderSpec
    timeout: float = DEFAULT_TIMEOUT
    _cache: dict[tuple[str, str, object], tuple[float, AuthIndex]] = field(default_factory=dict, init=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False)
    _flights: dict[tuple[str, object], threading.Lock] = field(default_factory=dict, init=False)

    def applies_to(self, image: str) -> bool:
        return any(matches(glob, image) for glob in self.spec.match_images)

    def lookup(self, image: str, account: ServiceAccount | None = None) -> list[Credentials]:
        """Credentials for ``image`` (``host[:port]/repository``), from the cache or one plugin run.

        ``account`` is the service account a ``tokenAttributes`` provider runs for; every cache
        key then includes it, as the kubelet's do.
        """
        if not self.applies_to(image):
            return []
        tokens = self.spec.token_attributes
        scope = account.cache_key(tokens.cache_type) if account is not None and tokens is not None else None
        with self._flight(image, scope):
            auth = self._cached(image, scope)
            if auth is None:
                response = run_plugin(self.spec, image, self.timeout, account)
                if account is not None and account.token and tokens is not None and tokens.cache_type != "Token":
                    self._refuse_echoed_token(image, account.token, response.auth)
                auth = self._store(image, scope, response)
        return auth.lookup(image)

    def _refuse_echoed_token(self, image: str, token: str, auth: AuthIndex) -> None:
        """The token itself as the password lives only as long as the token: caching it for the
        whole account would hand one pod's token to the next, so the kubelet refuses it."""
        if any(password == token for _, (_, password) in auth.entries):
            raise errors.Unavailable(
                f"credential provider {self.spec.name} answered {image} with the service-account token as the "
                "password, which needs tokenAttributes.cacheType: Token in the provider config"
            )

    @contextlib.contextmanager
    def _flight(self, image: str, scope: object) -> Iterator[None]:
        """One plugin run per image (and service account) at a time: the others wait, then find
        its answer in the cache.

        The locks are kept, one per repository name (and account) ever looked up: a few bytes
        each, and dropping them safely would cost more code than they cost memory.
        """
        with self._guard:
            lock = self._flights.setdefault((image, scope), threading.Lock())
        with lock:
            yield

    @staticmethod
    def _keys(image: str, scope: object) -> dict[str, tuple[str, str, object]]:
        return {
            "Image": ("Image", image, scope),
            "Registry": ("Registry", image.split("/", 1)[0], scope),
            "Global": ("Global", "", scope),
        }

    def _cached(self, image: str, scope: object) -> AuthIndex | None:
        """The freshest answer that covers ``image``: cached for it, for its registry, or for all."""
        now = time.monotonic()
        with self._guard:
            for key in self._keys(image, scope).values():
                hit = self._cache.get(key)
                if hit is not None and hit[0] > now:
                    return hit[1]
        return None

    def _store(self, image: str, scope: object, response: Response) -> AuthIndex:
        duration = self.spec.default_cache_duration if response.cache_duration is None else response.cache_duration
        if duration > 0:
            now = time.monotonic()
            with self._guard:
                for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                    del self._cache[key]
                self._cache[self._keys(image, scope)[response.cache_key_type]] = (now + duration, response.auth)
        return response.auth

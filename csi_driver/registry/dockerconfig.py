"""Docker config ``auths`` entries, and which of them apply to an image, the way the kubelet decides.

The same rules serve a pod's pull secret, the node's docker config files and the ``auth`` map of a
credential-provider response, so that a file an admin wrote for the kubelet means the same here
(the kubelet's ``pkg/credentialprovider`` keyring):

* a key may carry a scheme (``https://r.example``) or not; the scheme is ignored;
* a key's path narrows it (``r.example/team`` applies to ``r.example/team/app``); ``/v1/`` and
  ``/v2/`` at the start of a path mean the registry itself (``https://index.docker.io/v1/``);
  the path is compared as a string prefix, as the kubelet does (``r.example/team`` also applies
  to ``r.example/teammates/app``);
* host labels may be globs, each matching exactly one label: ``*.r.example`` applies to
  ``eu.r.example`` but neither to ``r.example`` nor to ``a.eu.r.example``;
* the port must be the same on both sides (none and none, or the same number);
* every entry that applies is returned, most specific first: keys in reverse lexicographic order,
  which puts ``r.example/team`` before ``r.example`` and ``eu.r.example`` before ``*.r.example``;
* when nothing applies to a Docker Hub image, an ``index.docker.io`` entry does.

Unlike the kubelet, host names are compared case-insensitively (DNS names are), and an entry with
no user name, password or ``auth`` gives no credentials rather than empty ones. Nothing here logs,
and error messages name keys, never values.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from fnmatch import fnmatchcase

from csi_driver import errors
from csi_driver.reference import DOCKER_HUB

Credentials = tuple[str, str]

_LEGACY_DOCKER_HUB_KEY = "index.docker.io"


@dataclass(frozen=True)
class Pattern:
    """A registry key or ``matchImages`` entry, split the way it is compared."""

    key: str  # normalised host[:port][/path], the sort key
    labels: tuple[str, ...]
    port: str
    path: str


def _split(text: str) -> tuple[str, str, str]:
    """``[scheme://]host[:port][/path]`` → (lower-case host, port, path); a bad port is no port (as Go's)."""
    rest = text.split("://", 1)[1] if "://" in text else text
    netloc, slash, path = rest.partition("/")
    host, port = netloc, ""
    if netloc.startswith("["):  # [v6 address]:port
        end = netloc.find("]")
        if end > 0 and netloc[end + 1 : end + 2] == ":":
            host, port = netloc[1:end], netloc[end + 2 :]
    elif netloc.count(":") == 1:
        host, port = netloc.split(":")
    return host.lower(), port, slash + path


def pattern(text: str) -> Pattern:
    """Parse a registry key; raise InvalidArgument when it names no host."""
    host, port, path = _split(text)
    if not host:
        raise errors.InvalidArgument(f"registry key {text!r} names no host")
    if path.startswith(("/v1/", "/v2/")):
        path = path[3:]
    if path == "/":
        path = ""
    netloc = f"{host}:{port}" if port else host
    return Pattern(key=netloc + path, labels=tuple(host.split(".")), port=port, path=path)


def matches(glob: Pattern, image: str) -> bool:
    """Whether ``glob`` applies to ``image`` (``host[:port]/repository``)."""
    host, port, path = _split(image)
    labels = host.split(".")
    return (
        glob.port == port
        and len(glob.labels) == len(labels)
        and path.startswith(glob.path)
        and all(g == label or fnmatchcase(label, g) for g, label in zip(glob.labels, labels))
    )


def _decode_entry(key: str, entry: object) -> Credentials | None:
    """One ``auths`` value → (user, password); ``auth`` (base64 ``user:password``) wins, as in docker."""
    if not isinstance(entry, dict):
        raise errors.InvalidArgument(f"the entry for {key!r} is not an object")
    if entry.get("auth"):
        try:
            user, colon, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            colon = ""
        if not colon:
            raise errors.InvalidArgument(f"the entry for {key!r} has an 'auth' value that is not base64 'user:password'")
        return user, password
    user, password = entry.get("username"), entry.get("password")
    if not user and not password:
        return None
    return str(user or ""), str(password or "")


@dataclass(frozen=True)
class AuthIndex:
    """Parsed ``auths`` entries, most specific key first."""

    entries: tuple[tuple[Pattern, Credentials], ...] = ()

    @classmethod
    def parse(cls, auths: object) -> AuthIndex:
        """Index a docker config's ``auths`` map (None is empty); raise InvalidArgument naming a bad key."""
        if auths is None:
            return cls()
        if not isinstance(auths, dict):
            raise errors.InvalidArgument("'auths' is not an object mapping registries to credentials")
        found = []
        for key, entry in auths.items():
            credentials = _decode_entry(str(key), entry)
            if credentials is not None:
                found.append((pattern(str(key)), credentials))
        # sorted() is stable: entries with the same key keep their order.
        return cls(tuple(sorted(found, key=lambda item: item[0].key, reverse=True)))

    def lookup(self, image: str) -> list[Credentials]:
        """Every credential that applies to ``image`` (``host[:port]/repository``), most specific first."""
        found = [credentials for glob, credentials in self.entries if matches(glob, image)]
        if not found and _split(image)[0] == DOCKER_HUB:
            found = [credentials for glob, credentials in self.entries if glob.key == _LEGACY_DOCKER_HUB_KEY]
        return found

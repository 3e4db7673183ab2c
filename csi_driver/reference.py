"""Image reference names: ``registry/repository[:tag][@digest]`` as a pod author writes them.

The grammar is the distribution reference grammar, normalised the way Docker does it, so a
reference means here what it means to ``docker pull``, containerd and the kubelet:

* the first path component is a registry only if it contains ``.`` or ``:``, is
  ``localhost``, or has an upper-case letter; otherwise the name is on Docker Hub
  (``docker.io``), and a single-component Docker Hub name gets ``library/``;
* ``index.docker.io`` is the legacy spelling of ``docker.io``;
* repository components are lower case; a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``;
* a digest must be ``sha256:`` and 64 lower-case hex digits, the only algorithm the
  content store verifies.

The grammar is written here rather than taken from ``oras.container.Container``: that parser
accepts almost any string, treats ``localhost/x`` as a Docker Hub name, fills in the tag
``latest`` (which would hide the difference the default pull policy depends on), checks no
digest, and reports problems as bare ``ValueError``s. A pod event must say what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from csi_driver import errors

DOCKER_HUB = "docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
_NAME_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")
_EXPECTED = "expected [registry/]repository[:tag][@sha256:<64 hex digits>]"


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``tag`` is None when none was written (no implicit ``latest``)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def valid_digest(text: str) -> bool:
    """True for ``sha256:<64 lower-case hex>``, the only digest form the store verifies.

    The registry client also checks digests that come from a registry with this before
    putting them in a URL or trusting them.
    """
    return _DIGEST_RE.fullmatch(text) is not None


def valid_host(text: str) -> bool:
    """True for a registry as a reference names it: ``host[:port]``, no scheme, no path."""
    return _DOMAIN_RE.fullmatch(text) is not None


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text``; raise InvalidArgument naming it and what is wrong."""
    if not text:
        raise _invalid(text, "it is empty")
    if _IMAGE_ID_RE.fullmatch(text):
        raise _invalid(text, "a bare 64-hex string is an image id, not a repository")
    name, at, digest = text.partition("@")
    if at:
        _check_digest(text, digest)
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(
                text,
                f"tag {tag!r} is not valid (letters, digits, '_', '.', '-', at most 128, "
                "not starting with '.' or '-')",
            )
    registry, repository = _split_registry(name)
    if not valid_host(registry):
        raise _invalid(text, f"registry {registry!r} is not a valid host[:port]")
    if repository.lower() != repository:
        raise _invalid(text, f"repository {repository!r} must be lower case")
    if not _PATH_RE.fullmatch(repository):
        raise _invalid(
            text,
            f"repository {repository!r} is not valid (lower-case letters and digits, "
            "separated by '.', '_', '__' or '-', components joined by '/')",
        )
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        raise _invalid(text, f"the name is longer than {_NAME_MAX} characters")
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest or None)


def default_pull_policy(ref: Reference) -> str:
    """The pull policy a pod gets when it names none, as for native image volumes (KEP-4639).

    A floating name (no tag, or ``latest``, and no digest) is looked up every time; anything
    pinned is pulled only when missing.
    """
    if ref.digest is None and ref.tag in (None, "latest"):
        return "Always"
    return "IfNotPresent"


def _invalid(text: str, what: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"invalid image reference {text!r}: {what}; {_EXPECTED}")


def _check_digest(text: str, digest: str) -> None:
    """Say which part of a digest is wrong: the algorithm or the hex."""
    algorithm, colon, _ = digest.partition(":")
    if not colon:
        raise _invalid(text, f"digest {digest!r} has no algorithm (sha256:...)")
    if algorithm != "sha256":
        raise _invalid(text, f"digest algorithm {algorithm!r} is not supported (only sha256)")
    if not valid_digest(digest):
        raise _invalid(text, f"digest {digest!r} must be sha256: and 64 lower-case hex digits")


def _split_registry(name: str) -> tuple[str, str]:
    """Split off the registry as Docker does (splitDockerDomain) and normalise Docker Hub."""
    first, slash, rest = name.partition("/")
    if slash and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    ):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == _LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return registry, repository


def digest_hex(digest: str) -> str:
    """The hex part of a sha256 digest; anything else could name a path outside the store."""
    if not valid_digest(digest):
        raise errors.InvalidArgument(f"unsupported digest {digest!r}: only sha256:<64 lowercase hex digits> is supported")
    return digest.removeprefix("sha256:")

"""Pull credentials for one registry, from the pod's ``nodePublishSecretRef``.

The kubelet hands the Secret's data over as ``secrets``: a
``kubernetes.io/dockerconfigjson`` Secret (``.dockerconfigjson``), a legacy
``.dockercfg``, or plain ``username`` + ``password`` keys. Registry keys in a
docker config may carry a scheme or a path (``https://host/v1/``); only the host
part is compared, as the kubelet does. Nothing here is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from . import errors

Credentials = tuple[str, str]


def _host_of(key: str) -> str:
    key = key.split("://", 1)[-1]
    return key.split("/", 1)[0].lower()


def _registry_hosts(registry: str) -> set[str]:
    if registry == "docker.io":
        return {"docker.io", "index.docker.io", "registry-1.docker.io"}
    return {registry.lower()}


def _from_auths(auths: object, registry: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    hosts = _registry_hosts(registry)
    for key, entry in auths.items():
        if _host_of(str(key)) not in hosts or not isinstance(entry, dict):
            continue
        if entry.get("username") is not None and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise errors.InvalidArgument(
                    f"the pull secret's entry for {key} has an 'auth' value that is not base64 'user:password'"
                ) from None
            return user, password
    return None


def from_secrets(secrets: Mapping[str, str], registry: str) -> Credentials | None:
    """Credentials for ``registry`` from the pod's secret, or None to pull anonymously."""
    if not secrets:
        return None
    if "username" in secrets and "password" in secrets:
        return secrets["username"], secrets["password"]
    for key in (".dockerconfigjson", ".dockercfg"):
        if key not in secrets:
            continue
        try:
            doc = json.loads(secrets[key])
        except ValueError:
            raise errors.InvalidArgument(f"the pull secret's {key} is not valid JSON") from None
        auths = doc.get("auths") if key == ".dockerconfigjson" and isinstance(doc, dict) else doc
        return _from_auths(auths, registry)
    raise errors.InvalidArgument(
        "the pull secret has none of .dockerconfigjson, .dockercfg or username+password; "
        "use a kubernetes.io/dockerconfigjson Secret"
    )

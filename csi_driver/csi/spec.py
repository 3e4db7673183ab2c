"""NodePublishVolume request → a validated :class:`VolumeSpec`.

This is the only place that reads the request's raw fields, so every later step
works on checked values: an absolute target path without ``..``, a mount (not
block) capability, a parsed reference and a known pull policy. Unknown volume
attributes are refused by name (a typo such as ``pullpolicy`` must not be silently
ignored); keys under ``csi.storage.k8s.io/`` are the kubelet's pod info, among them the
service-account tokens the CSIDriver object's ``spec.tokenRequests`` asks for.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from csi_driver import errors
from csi_driver.reference import Reference, default_pull_policy, parse_reference
from csi_driver.registry.kubeapi import Pod

ATTRIBUTES = ("reference", "pullPolicy", "platform")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
POD_INFO_PREFIX = "csi.storage.k8s.io/"
TOKENS_KEY = POD_INFO_PREFIX + "serviceAccount.tokens"


@dataclass(frozen=True)
class VolumeSpec:
    volume_id: str
    target_path: str
    reference: Reference
    pull_policy: str
    pod: Pod
    platform: str = ""  # os/arch[/variant] overriding the node's; "" = the node's
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


def check_volume_id(volume_id: str) -> str:
    if not volume_id:
        raise errors.InvalidArgument("volume_id is missing from the request")
    return volume_id


def check_target_path(target: str) -> str:
    """An absolute, normalised path: the kubelet never sends anything else."""
    if not target:
        raise errors.InvalidArgument("target_path is missing from the request")
    if not target.startswith("/") or ".." in target.split("/") or "\0" in target:
        raise errors.InvalidArgument(f"target_path {target!r} must be an absolute path without '..'")
    return posixpath.normpath(target)


def check_volume_path(path: str) -> str:
    """NodeGetVolumeStats' ``volume_path``, normalised as a published target is.

    Only its presence is checked here: the volume id is looked up first, so an unknown id is
    NOT_FOUND whatever the path (as csi-sanity expects), and the path is then judged by
    comparing it with the publication's target, never by its shape.
    """
    if not path:
        raise errors.InvalidArgument("volume_path is missing from the request")
    return posixpath.normpath(path)


def check_platform(text: str) -> str:
    """``os/arch[/variant]`` as Go names them, e.g. linux/arm64 or linux/arm/v7."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(p and p.replace("_", "").isalnum() for p in parts):
        raise errors.InvalidArgument(f"platform {text!r} is not os/architecture[/variant], e.g. linux/arm64")
    return text


def service_account_tokens(text: str) -> dict[str, str]:
    """``{"<audience>": {"token": ..., "expirationTimestamp": ...}}`` → audience → token.

    The kubelet writes this; a value it would never write is INVALID_ARGUMENT that quotes no token.
    """
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("token"), str) for v in doc.values()
    ):
        raise errors.InvalidArgument(
            f"{TOKENS_KEY} is not the kubelet's JSON map of audience to {{token, expirationTimestamp}}"
        )
    return {str(audience): value["token"] for audience, value in doc.items()}


def _check_capability(request) -> None:  # type: ignore[no-untyped-def]
    if not request.HasField("volume_capability"):
        raise errors.InvalidArgument("volume_capability is missing: this driver serves mount volumes")
    if not request.volume_capability.HasField("mount"):
        raise errors.InvalidArgument(
            "only mount volumes are supported, not block: an OCI artifact is a directory tree"
        )


def from_publish_request(request) -> VolumeSpec:  # type: ignore[no-untyped-def]
    """Validate a ``csi.v1.NodePublishVolumeRequest``."""
    volume_id = check_volume_id(request.volume_id)
    target = check_target_path(request.target_path)
    _check_capability(request)
    context = dict(request.volume_context)
    unknown = sorted(k for k in context if k not in ATTRIBUTES and not k.startswith(POD_INFO_PREFIX))
    if unknown:
        raise errors.InvalidArgument(
            f"unknown volume attribute(s) {', '.join(unknown)}; supported: {', '.join(ATTRIBUTES)}"
        )
    text = context.get("reference", "").strip()
    if not text:
        raise errors.InvalidArgument("volume attribute 'reference' is required (e.g. registry.example/repo:tag)")
    reference = parse_reference(text)
    policy = context.get("pullPolicy") or default_pull_policy(reference)
    if policy not in PULL_POLICIES:
        raise errors.InvalidArgument(f"pullPolicy {policy!r} is not one of {', '.join(PULL_POLICIES)}")
    pod = Pod(
        namespace=context.get(POD_INFO_PREFIX + "pod.namespace", ""),
        name=context.get(POD_INFO_PREFIX + "pod.name", ""),
        uid=context.get(POD_INFO_PREFIX + "pod.uid", ""),
        service_account=context.get(POD_INFO_PREFIX + "serviceAccount.name", ""),
        tokens=service_account_tokens(context.get(TOKENS_KEY, "")),
    )
    platform = check_platform(context["platform"]) if context.get("platform") else ""
    return VolumeSpec(volume_id, target, reference, policy, pod, platform, dict(request.secrets))

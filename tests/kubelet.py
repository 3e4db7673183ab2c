"""Requests shaped exactly as a kubelet sends them for an ephemeral inline CSI volume.

See DESIGN.md "What the kubelet sends": a ``csi-<64 hex>`` volume id, a target
``.../pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`` whose parent exists, a
mount capability with empty fs type and flags, pod info in the volume context,
and ``readonly`` left unset (absent on the wire) when false.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from csi_driver._pb import csi_pb2


def volume_id(seed: str) -> str:
    return "csi-" + hashlib.sha256(seed.encode()).hexdigest()


def target_for(kubelet_root: Path, pod_uid: str, volume_name: str) -> Path:
    """Create the volume dir as the kubelet does and return the ``mount`` path inside it."""
    parent = kubelet_root / "pods" / pod_uid / "volumes" / "kubernetes.io~csi" / volume_name
    parent.mkdir(parents=True, exist_ok=True)
    return parent / "mount"


def publish_request(
    target: Path,
    attributes: dict[str, str],
    *,
    vol_id: str | None = None,
    pod_name: str = "agent-0",
    namespace: str = "default",
    pod_uid: str | None = None,
    secrets: dict[str, str] | None = None,
    readonly: bool = True,
    access_mode: int = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER,
) -> csi_pb2.NodePublishVolumeRequest:
    context = dict(attributes)
    context.update(
        {
            "csi.storage.k8s.io/pod.name": pod_name,
            "csi.storage.k8s.io/pod.namespace": namespace,
            "csi.storage.k8s.io/pod.uid": pod_uid or str(uuid.uuid4()),
            "csi.storage.k8s.io/serviceAccount.name": "",
            "csi.storage.k8s.io/ephemeral": "true",
        }
    )
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=vol_id or volume_id(str(target)),
        target_path=str(target),
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=access_mode),
        ),
        readonly=readonly,
        volume_context=context,
        secrets=secrets or {},
    )


def unpublish_request(request: csi_pb2.NodePublishVolumeRequest) -> csi_pb2.NodeUnpublishVolumeRequest:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id=request.volume_id, target_path=request.target_path)

"""Requests shaped exactly as a kubelet sends them for an ephemeral inline CSI volume.

What a real kubelet (1.26, 1.34) sends: a ``csi-<64 hex>`` volume id, a target
``.../pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`` whose parent exists, a
mount capability with empty fs type and flags, pod info in the volume context,
and ``readonly`` left unset (absent on the wire) when false. The requests are the
ones ``oci-volume-csi publish`` sends (``csi_driver/cli/publish.py``); this adds the
kubelet's directory layout.
"""

from __future__ import annotations

from pathlib import Path

from csi_driver.cli.publish import publish_request, unpublish_request

__all__ = ["publish_request", "target_for", "unpublish_request"]


def target_for(kubelet_root: Path, pod_uid: str, volume_name: str) -> Path:
    """Create the volume dir as the kubelet does and return the ``mount`` path inside it."""
    parent = kubelet_root / "pods" / pod_uid / "volumes" / "kubernetes.io~csi" / volume_name
    parent.mkdir(parents=True, exist_ok=True)
    return parent / "mount"

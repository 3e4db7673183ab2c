"""``publish`` and ``unpublish``: a kubelet's requests to a running driver, for trying it by hand.

The requests are shaped exactly as the kubelet sends them (a ``csi-<64 hex>``
volume id, a mount capability with empty fs type and flags, ``readonly`` absent when false,
pod info in the volume context), so what works here works from a kubelet. The test suite
builds its kubelet requests with the same functions.

The volume id is derived from the target path, so ``unpublish TARGET`` finds what
``publish REF TARGET`` made without being told the id, and tells it from a kubelet's volume.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import grpc

from csi_driver import errors
from csi_driver._pb import csi_pb2, csi_pb2_grpc
from csi_driver.cli.output import emit, fields, progress, pulling
from csi_driver.cli.state import open_state
from csi_driver.csi.server import socket_path
from csi_driver.mounts import kernel
from csi_driver.progress import ask
from csi_driver.reference import parse_reference


def volume_id(target: str) -> str:
    """``csi-`` and the sha256 of the target: the kubelet's id shape, stable per target."""
    return "csi-" + hashlib.sha256(target.encode()).hexdigest()


def publish_request(
    target: Path | str,
    attributes: Mapping[str, str],
    *,
    vol_id: str | None = None,
    pod_name: str = "oci-volume-csi-cli",  # what a hand-made publish is recorded for (--pod)
    namespace: str = "default",
    pod_uid: str | None = None,
    secrets: Mapping[str, str] | None = None,
    readonly: bool = True,
    access_mode: int = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER,
) -> csi_pb2.NodePublishVolumeRequest:
    """A NodePublishVolume for an ephemeral inline volume with ``podInfoOnMount: true``."""
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
        secrets=dict(secrets or {}),
    )


def unpublish_request(request: csi_pb2.NodePublishVolumeRequest) -> csi_pb2.NodeUnpublishVolumeRequest:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id=request.volume_id, target_path=request.target_path)


def publish(args: argparse.Namespace) -> int:
    target = os.path.abspath(args.target)
    attributes = {"reference": args.reference}
    if args.pull_policy:
        attributes["pullPolicy"] = args.pull_policy
    if args.platform:
        attributes["platform"] = args.platform
    pod = {"namespace": args.pod[0], "pod_name": args.pod[1]} if args.pod else {}
    request = publish_request(target, attributes, **pod)
    _call(args.endpoint, args.timeout, "NodePublishVolume", request, str(parse_reference(args.reference)))
    result = {"volume_id": request.volume_id, "target": target, "reference": args.reference}
    emit(args.output, result, lambda r: f"published {r['reference']} at {r['target']}\n" + _volume_id_line(r))
    return 0


def unpublish(args: argparse.Namespace) -> int:
    """Undo a ``publish``; anything else at TARGET only with ``--force``.

    The volume's record (``--state-dir``) says who published it: a volume id other than the one
    ``publish`` derives from TARGET is the kubelet's, whose pod still wants it. Forced, the request
    carries the record's own volume id, so the driver drops that record with the mount: nothing
    re-binds it at the next start, and its content becomes collectable.
    """
    target = os.path.abspath(args.target)
    _, publications = open_state(args.state_dir)
    pub = publications.by_target(target)
    vol_id = pub.volume_id if pub else volume_id(target)
    if pub is None and not kernel.is_mount_point(target):
        raise errors.NotFound(
            f"nothing is published at {target} (state dir {args.state_dir}); `oci-volume-csi inspect` lists what is"
        )
    if not args.force:
        if pub is None:
            raise errors.FailedPrecondition(
                f"{target} is a mount the driver has no record of: not unmounting what it may not have "
                "mounted; --force unmounts it anyway"
            )
        if vol_id != volume_id(target):
            pod = f"pod {pub.pod_namespace}/{pub.pod_name}" if pub.pod_name else "a pod"
            raise errors.FailedPrecondition(
                f"{target} is the volume of {pod} (volume id {vol_id}), "
                "published by the kubelet: delete the pod and the kubelet unpublishes it; "
                "--force unmounts it now and drops its record"
            )
    request = csi_pb2.NodeUnpublishVolumeRequest(volume_id=vol_id, target_path=target)
    _call(args.endpoint, args.timeout, "NodeUnpublishVolume", request)
    result = {"volume_id": vol_id, "target": target, "forced": args.force}
    emit(args.output, result, lambda r: f"unpublished {r['target']}\n" + _volume_id_line(r))
    return 0


def _volume_id_line(result: dict[str, str]) -> str:
    return fields([("volume id", result["volume_id"])])


def _call(endpoint: str, timeout: float, method: str, request: object, reference: str = "") -> None:
    """Send one Node RPC and wait for it, with a progress line: a publish may pull for minutes,
    and the driver says how far its pull of ``reference`` has got.

    A missing socket or a driver that does not answer fails at once with what to check,
    not after the RPC's whole timeout.
    """
    path = socket_path(endpoint)
    if not os.path.exists(path):
        raise errors.Unavailable(
            f"no driver socket at {path}: is `oci-volume-csi serve --endpoint {endpoint}` running?"
        )
    with grpc.insecure_channel(f"unix://{path}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            raise errors.Unavailable(
                f"the driver at {path} does not answer: is `oci-volume-csi serve` running?"
            ) from None
        call = getattr(csi_pb2_grpc.NodeStub(channel), method).future(request, timeout=timeout)

        def label(elapsed: float) -> str:
            pulls = [p for p in ask(channel) if reference and p["reference"] == reference]
            return pulling(reference, pulls, elapsed, "waiting for the driver…")

        with progress(label):
            call.result()

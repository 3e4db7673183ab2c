"""The CSI Node service: thin glue from requests to the data-flow steps.

NodePublishVolume runs spec → pull → view → mount → record; NodeUnpublishVolume
undoes the mount and the record. The pull tries the pod's and the node's credentials in the
kubelet's order, then anonymously, and the first the registry accepts wins. Idempotency is decided from the mount table and
the publication records, never from guesses. Operations on one volume id are
serialised by a lock that is never waited on: a second call while one is in
flight answers ABORTED, which the kubelet retries.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator

from csi_driver import errors, logs
from csi_driver._pb import csi_pb2, csi_pb2_grpc
from csi_driver.content.pull import PullConfig, pull
from csi_driver.content.store import Store
from csi_driver.csi.spec import (
    VolumeSpec, check_target_path, check_volume_id, check_volume_path, from_publish_request,
)  # fmt: skip
from csi_driver.mounts import kernel
from csi_driver.mounts.publications import Publication, Publications
from csi_driver.registry.authorize import AccessChecks
from csi_driver.registry.credentials import Keyring
from csi_driver.views.choose import View


class VolumeLocks:
    """One non-blocking lock per volume id."""

    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, volume_id: str) -> Iterator[None]:
        with self._guard:
            if volume_id in self._busy:
                raise errors.Aborted(f"an operation on volume {volume_id} is already in progress; retry later")
            self._busy.add(volume_id)
        try:
            yield
        finally:
            with self._guard:
                self._busy.discard(volume_id)


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(
        self,
        node_id: str,
        store: Store,
        publications: Publications,
        view: View,
        pull_config: PullConfig,
        keyring: Keyring,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.publications = publications
        self.view = view
        self.pull_config = pull_config
        self.keyring = keyring
        self.locks = VolumeLocks()
        self.access = AccessChecks()
        self.content_added = threading.Event()  # wakes the cache collector after a publish

    def NodeGetInfo(self, request, context):  # noqa: N802 (gRPC method names)
        return csi_pb2.NodeGetInfoResponse(node_id=self.node_id)

    def NodeGetCapabilities(self, request, context):  # noqa: N802
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=rpc(type=kind))
                for kind in (rpc.GET_VOLUME_STATS, rpc.VOLUME_CONDITION)
            ]
        )

    def NodeGetVolumeStats(self, request, context):  # noqa: N802
        """Bytes and inodes of the volume's tree; abnormal when its mount is gone or its view dead."""
        volume_id = check_volume_id(request.volume_id)
        path = check_volume_path(request.volume_path)
        pub = self.publications.by_volume(volume_id)
        if pub is None:
            raise errors.NotFound(f"volume {volume_id} is not published on this node")
        if pub.target != path:
            raise errors.NotFound(
                f"volume {volume_id} is published at {pub.target} on this node, not at {request.volume_path!r}"
            )
        size, entries = self.store.usage(pub.digest)
        state = kernel.target_state(pub.target)
        message = f"{pub.reference} ({pub.digest}) via the {pub.mode} view"
        if state != "ok":
            message = f"{message}: the mount is {'dead' if state == 'dead' else state}; the driver is repairing it"
        unit = csi_pb2.VolumeUsage
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                unit(total=size, used=size, available=0, unit=unit.BYTES),
                unit(total=entries, used=entries, available=0, unit=unit.INODES),
            ],
            volume_condition=csi_pb2.VolumeCondition(abnormal=state != "ok", message=message),
        )

    def NodePublishVolume(self, request, context):  # noqa: N802
        spec = from_publish_request(request)
        with self.locks.hold(spec.volume_id):
            existing = self.publications.by_target(spec.target_path)
            if existing and existing.reference != str(spec.reference):
                raise errors.AlreadyExists(
                    f"target {spec.target_path} already holds {existing.reference} "
                    f"(volume {existing.volume_id}); unpublish it first"
                )
            if existing and kernel.is_mount_point(spec.target_path):
                return csi_pb2.NodePublishVolumeResponse()
            digest = self._pull(spec)
            logs.annotate(digest=digest, mode=self.view.mode)
            self._mount(self.view.path_for(digest), spec.target_path, digest)
            self.publications.record(
                Publication(
                    volume_id=spec.volume_id,
                    target=spec.target_path,
                    reference=str(spec.reference),
                    digest=digest,
                    mode=self.view.mode,
                    pod_namespace=spec.pod.namespace,
                    pod_name=spec.pod.name,
                    pod_uid=spec.pod.uid,
                )
            )
            self.store.touch(digest)
        self.content_added.set()
        return csi_pb2.NodePublishVolumeResponse()

    def _pull(self, spec: VolumeSpec) -> str:
        """Pull with the first credentials the registry accepts: the kubelet's order, then anonymous.

        A refusal (a 401 or 403 from the registry or its token service) moves on to the next
        candidate, as the kubelet does; any other failure ends the publish. Content already on the
        node is handed out with the same candidates, since each attempt checks the pod's access.
        """
        notes: list[str] = []
        candidates = self.keyring.candidates(spec.secrets, spec.reference, spec.pod, notes)
        refused: list[errors.CredentialsRefused] = []
        for creds in itertools.chain(candidates, [None]):
            try:
                return pull(
                    self.store, spec.reference, spec.pull_policy, creds, self.pull_config, self.access, spec.platform
                )
            except errors.CredentialsRefused as exc:
                refused.append(exc)
        message = refused[0].message
        if len(refused) > 1:
            message += f" ({len(refused) - 1} credential(s) tried in the kubelet's order, then anonymous: all refused)"
        if notes:
            message += "; not used: " + "; ".join(notes)
        raise errors.CredentialsRefused(message)

    @staticmethod
    def _mount(source: str, target: str, digest: str) -> None:
        """Bind the view onto the target; a target we created is removed again on failure."""
        created = kernel.make_target(target)
        if not created and kernel.is_mount_point(target):
            return
        try:
            kernel.bind_readonly(source, target)
        except OSError as exc:
            if created:
                os.rmdir(target)
            raise errors.Internal(f"could not mount {digest} onto {target}: {exc.strerror}") from None

    def NodeUnpublishVolume(self, request, context):  # noqa: N802
        volume_id = check_volume_id(request.volume_id)
        target = check_target_path(request.target_path)
        with self.locks.hold(volume_id):
            while kernel.is_mount_point(target):
                kernel.unmount(target)
            try:
                os.rmdir(target)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise errors.Internal(f"could not remove target {target}: {exc.strerror}") from None
            self.publications.drop(volume_id)
        return csi_pb2.NodeUnpublishVolumeResponse()

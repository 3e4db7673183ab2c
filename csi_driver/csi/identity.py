"""The CSI Identity service: who we are, and whether we are ready to serve."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from csi_driver import __version__
from csi_driver._pb import csi_pb2, csi_pb2_grpc
from csi_driver.content.store import Store
from csi_driver.views.choose import View


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver_name: str, store: Store, view: View) -> None:
        self.driver_name = driver_name
        self.store = store
        self.view = view

    def GetPluginInfo(self, request, context):  # noqa: N802 (gRPC method names)
        return csi_pb2.GetPluginInfoResponse(name=self.driver_name, vendor_version=__version__, manifest={"mode": self.view.mode})

    def GetPluginCapabilities(self, request, context):  # noqa: N802
        # A node-only plugin for ephemeral inline volumes: no controller service,
        # no topology constraints. An empty list is what the sidecars expect then.
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=[])

    def Probe(self, request, context):  # noqa: N802
        ready = self.store.healthy() and self.view.healthy()
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=ready))

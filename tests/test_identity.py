"""Identity and the Node RPCs the kubelet calls at registration, against the real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from csi_driver import DEFAULT_DRIVER_NAME, __version__
from csi_driver._pb import csi_pb2
from driver import run_driver


@pytest.fixture(params=["bind", "fuse", "erofs"])
def driver(request: pytest.FixtureRequest, tmp_path: Path, registry: str):
    with run_driver(tmp_path, registry, request.param) as d:
        yield d


def test_plugin_info_names_the_driver_version_and_view(driver) -> None:
    info = driver.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DEFAULT_DRIVER_NAME, __version__)
    assert dict(info.manifest) == {"mode": driver.process.args[driver.process.args.index("--mode") + 1]}


def test_probe_is_ready_when_store_and_view_are_healthy(driver) -> None:
    assert driver.identity.Probe(csi_pb2.ProbeRequest()).ready.value is True


def test_plugin_capabilities_offer_no_controller(driver) -> None:
    caps = driver.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    assert list(caps.capabilities) == []


def test_node_info_reports_the_node_id(driver) -> None:
    assert driver.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "node-1"


def test_node_capabilities_need_no_staging(driver) -> None:
    caps = driver.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    types = {c.rpc.type for c in caps.capabilities}
    assert csi_pb2.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME not in types


def test_other_node_rpcs_are_unimplemented(driver) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        driver.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id="v"))
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED

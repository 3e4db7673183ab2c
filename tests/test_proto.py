"""The generated gRPC stubs match proto/csi.proto, and proto/csi.proto matches csi.v1.

The field numbers and enum values checked here are the CSI spec's (csi.v1, as
the kubelet and the kubernetes-csi sidecars encode them); a mismatch means a
real kubelet would silently send us something else.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from csi_driver._pb import csi_pb2, csi_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = ROOT / "scripts" / "gen_proto.py"
COMMITTED = ROOT / "csi_driver" / "_pb"


def test_generated_stubs_match_proto(tmp_path):
    out = tmp_path / "_pb"
    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), str(out)],
        cwd=tmp_path,  # the script must not depend on the cwd
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"scripts/gen_proto.py failed:\n{proc.stdout}\n{proc.stderr}"

    fresh = {p.name for p in out.iterdir() if p.is_file()}
    committed = {
        p.name for p in COMMITTED.iterdir() if p.is_file() and not p.name.endswith(".pyc")
    }
    assert fresh, "scripts/gen_proto.py wrote nothing"
    hint = "run `python scripts/gen_proto.py` and commit csi_driver/_pb/"
    missing = sorted(fresh - committed)
    assert not missing, f"csi_driver/_pb/ lacks generated {missing}: {hint}"
    extra = sorted(committed - fresh)
    assert not extra, f"csi_driver/_pb/ holds {extra}, which the generator does not make: remove them"
    for name in sorted(fresh):
        if (out / name).read_bytes() != (COMMITTED / name).read_bytes():
            pytest.fail(
                f"csi_driver/_pb/{name} differs from what proto/csi.proto generates "
                f"(edited by hand, or the .proto changed, or another grpcio-tools): {hint}"
            )


def test_generated_grpc_import_is_package_qualified():
    text = (COMMITTED / "csi_pb2_grpc.py").read_text(encoding="utf-8")
    assert "from csi_driver._pb import csi_pb2 as csi__pb2\n" in text
    assert "\nimport csi_pb2" not in text
    for name in ("csi_pb2.py", "csi_pb2_grpc.py", "csi_pb2.pyi", "__init__.py"):
        head = (COMMITTED / name).read_text(encoding="utf-8")[:400]
        assert "scripts/gen_proto.py" in head, f"{name} lacks the generated-by header"


# --------------------------------------------------------------- wire checks


def _fields(message) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def _enum(enum_wrapper) -> dict[str, int]:
    return {v.name: v.number for v in enum_wrapper.DESCRIPTOR.values}


def test_wire_field_numbers_match_csi_v1():
    pb = csi_pb2
    assert pb.DESCRIPTOR.package == "csi.v1"

    # Identity
    assert _fields(pb.GetPluginInfoResponse) == {"name": 1, "vendor_version": 2, "manifest": 3}
    assert _fields(pb.GetPluginCapabilitiesResponse) == {"capabilities": 1}
    assert _fields(pb.ProbeResponse) == {"ready": 1}
    ready = pb.ProbeResponse.DESCRIPTOR.fields_by_name["ready"]
    assert ready.message_type.full_name == "google.protobuf.BoolValue"
    assert _fields(pb.PluginCapability) == {"service": 1, "volume_expansion": 2}
    assert [f.name for f in pb.PluginCapability.DESCRIPTOR.oneofs_by_name["type"].fields] == [
        "service",
        "volume_expansion",
    ]
    assert _fields(pb.PluginCapability.Service) == {"type": 1}
    assert _enum(pb.PluginCapability.Service.Type) == {
        "UNKNOWN": 0,
        "CONTROLLER_SERVICE": 1,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3,
        "SNAPSHOT_METADATA_SERVICE": 4,
    }
    assert _fields(pb.PluginCapability.VolumeExpansion) == {"type": 1}
    assert _enum(pb.PluginCapability.VolumeExpansion.Type) == {
        "UNKNOWN": 0,
        "ONLINE": 1,
        "OFFLINE": 2,
    }

    # What the kubelet sends on publish/unpublish
    assert _fields(pb.NodePublishVolumeRequest) == {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "target_path": 4,
        "volume_capability": 5,
        "readonly": 6,
        "secrets": 7,
        "volume_context": 8,
    }
    publish = pb.NodePublishVolumeRequest.DESCRIPTOR.fields_by_name
    for name in ("publish_context", "secrets", "volume_context"):
        assert publish[name].message_type.GetOptions().map_entry, f"{name} must be a map"
    assert publish["readonly"].type == publish["readonly"].TYPE_BOOL
    assert publish["volume_capability"].message_type.full_name == "csi.v1.VolumeCapability"
    assert _fields(pb.NodeUnpublishVolumeRequest) == {"volume_id": 1, "target_path": 2}
    assert _fields(pb.NodePublishVolumeResponse) == {}
    assert _fields(pb.NodeUnpublishVolumeResponse) == {}

    assert _fields(pb.VolumeCapability) == {"block": 1, "mount": 2, "access_mode": 3}
    assert [f.name for f in pb.VolumeCapability.DESCRIPTOR.oneofs_by_name["access_type"].fields] == [
        "block",
        "mount",
    ]
    assert _fields(pb.VolumeCapability.MountVolume) == {
        "fs_type": 1,
        "mount_flags": 2,
        "volume_mount_group": 3,
    }
    assert _fields(pb.VolumeCapability.AccessMode) == {"mode": 1}
    assert _enum(pb.VolumeCapability.AccessMode.Mode) == {
        "UNKNOWN": 0,
        "SINGLE_NODE_WRITER": 1,
        "SINGLE_NODE_READER_ONLY": 2,
        "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4,
        "MULTI_NODE_MULTI_WRITER": 5,
        "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    }

    # Registration and capabilities
    assert _fields(pb.NodeGetInfoResponse) == {
        "node_id": 1,
        "max_volumes_per_node": 2,
        "accessible_topology": 3,
    }
    assert _fields(pb.Topology) == {"segments": 1}
    assert _fields(pb.NodeGetCapabilitiesResponse) == {"capabilities": 1}
    assert _fields(pb.NodeServiceCapability) == {"rpc": 1}
    assert _fields(pb.NodeServiceCapability.RPC) == {"type": 1}
    assert _enum(pb.NodeServiceCapability.RPC.Type) == {
        "UNKNOWN": 0,
        "STAGE_UNSTAGE_VOLUME": 1,
        "GET_VOLUME_STATS": 2,
        "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4,
        "SINGLE_NODE_MULTI_WRITER": 5,
        "VOLUME_MOUNT_GROUP": 6,
    }

    # The rest of the Node service
    assert _fields(pb.NodeStageVolumeRequest) == {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "volume_capability": 4,
        "secrets": 5,
        "volume_context": 6,
    }
    assert _fields(pb.NodeUnstageVolumeRequest) == {"volume_id": 1, "staging_target_path": 2}
    assert _fields(pb.NodeGetVolumeStatsRequest) == {
        "volume_id": 1,
        "volume_path": 2,
        "staging_target_path": 3,
    }
    assert _fields(pb.NodeGetVolumeStatsResponse) == {"usage": 1, "volume_condition": 2}
    assert _fields(pb.VolumeUsage) == {"available": 1, "total": 2, "used": 3, "unit": 4}
    assert _enum(pb.VolumeUsage.Unit) == {"UNKNOWN": 0, "BYTES": 1, "INODES": 2}
    assert _fields(pb.VolumeCondition) == {"abnormal": 1, "message": 2}
    assert _fields(pb.NodeExpandVolumeRequest) == {
        "volume_id": 1,
        "volume_path": 2,
        "capacity_range": 3,
        "staging_target_path": 4,
        "volume_capability": 5,
        "secrets": 6,
    }
    assert _fields(pb.NodeExpandVolumeResponse) == {"capacity_bytes": 1}
    assert _fields(pb.CapacityRange) == {"required_bytes": 1, "limit_bytes": 2}


def test_wire_bytes_of_a_kubelet_publish_request():
    """Field tags on the wire, not just in the descriptor."""
    req = csi_pb2.NodePublishVolumeRequest(volume_id="v", target_path="/t", readonly=True)
    req.volume_capability.mount.SetInParent()
    req.volume_capability.access_mode.mode = (
        csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    )
    req.secrets["k"] = "s"
    data = req.SerializeToString(deterministic=True)
    assert data == (
        b"\x0a\x01v"  # 1: volume_id
        b"\x22\x02/t"  # 4: target_path
        b"\x2a\x06\x12\x00\x1a\x02\x08\x01"  # 5: volume_capability{2: mount{}, 3: access_mode{1: 1}}
        b"\x30\x01"  # 6: readonly
        b"\x3a\x06\x0a\x01k\x12\x01s"  # 7: secrets entry
    )


IDENTITY_METHODS = ["GetPluginInfo", "GetPluginCapabilities", "Probe"]
NODE_METHODS = [
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
]


class _RecordingChannel:
    """Stands in for grpc.Channel; records the method paths a stub binds."""

    def __init__(self):
        self.paths = []

    def _bind(self, path, *args, **kwargs):
        self.paths.append(path)
        return lambda *a, **k: None

    unary_unary = unary_stream = stream_unary = stream_stream = _bind


def test_service_method_names_match_csi_v1():
    services = csi_pb2.DESCRIPTOR.services_by_name
    assert sorted(services) == ["Identity", "Node"]
    for service, methods in (("Identity", IDENTITY_METHODS), ("Node", NODE_METHODS)):
        desc = services[service]
        assert desc.full_name == f"csi.v1.{service}"
        assert [m.name for m in desc.methods] == methods
        for m in desc.methods:
            assert not m.client_streaming and not m.server_streaming
            assert m.input_type.full_name == f"csi.v1.{m.name}Request"
            assert m.output_type.full_name == f"csi.v1.{m.name}Response"

    # The HTTP/2 paths the stubs put on the wire (what the kubelet calls).
    channel = _RecordingChannel()
    csi_pb2_grpc.IdentityStub(channel)
    csi_pb2_grpc.NodeStub(channel)
    expected = [f"/csi.v1.Identity/{m}" for m in IDENTITY_METHODS] + [
        f"/csi.v1.Node/{m}" for m in NODE_METHODS
    ]
    assert sorted(channel.paths) == sorted(expected)
    assert "/csi.v1.Identity/Probe" in channel.paths
    assert "/csi.v1.Node/NodePublishVolume" in channel.paths
    assert "/csi.v1.Node/NodeUnpublishVolume" in channel.paths
    assert "/csi.v1.Node/NodeGetInfo" in channel.paths
    assert "/csi.v1.Node/NodeGetCapabilities" in channel.paths

"""examples/: what pod authors copy. Valid for every supported Kubernetes version, using the driver
deploy/ installs, with volume attributes the driver accepts (checked by the driver's own request
validation), and each one documented in the README.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from csi_driver.convert import pod_specs
from csi_driver.csi import spec
from kubelet import publish_request
from manifests import EXAMPLES, KUBERNETES_VERSIONS, ROOT, deploy_object, documents, kubernetes_files, validate

EXAMPLE_FILES = kubernetes_files(EXAMPLES)


def csi_volumes(path: Path) -> list[dict]:
    return [v for doc in documents(path) for _, pod in pod_specs(doc) for v in pod["volumes"] if "csi" in v]


def test_there_is_an_example_for_each_thing_the_issue_names() -> None:
    names = {p.stem for p in EXAMPLE_FILES}
    assert names == {"klaus", "toolhive-plugin", "oras-skill", "toolchain", "private-registry", "subpath"}
    everything = [v["csi"] for p in EXAMPLE_FILES for v in csi_volumes(p)]
    used = {key for v in everything for key in v["volumeAttributes"]}
    assert used == set(spec.ATTRIBUTES), "every volume attribute appears in some example"
    assert any("nodePublishSecretRef" in v for v in everything)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_valid_for_kubernetes(path: Path, version: str) -> None:
    for doc in documents(path):
        validate(doc, version)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_volumes_are_ones_the_driver_accepts(path: Path, tmp_path: Path) -> None:
    driver = deploy_object("CSIDriver")
    assert "Ephemeral" in driver["spec"]["volumeLifecycleModes"]  # inline csi volumes need it
    volumes = csi_volumes(path)
    assert volumes, f"{path.name} mounts no csi volume"
    for volume in volumes:
        csi = volume["csi"]
        assert csi["driver"] == driver["metadata"]["name"]
        assert csi["readOnly"] is True
        assert set(csi) <= {"driver", "readOnly", "volumeAttributes", "nodePublishSecretRef"}
        attributes = csi["volumeAttributes"]
        assert all(isinstance(value, str) for value in attributes.values()), "attribute values are strings"
        # The request the kubelet would send for this volume passes the driver's own validation
        # (it raises INVALID_ARGUMENT on an unknown attribute, a bad reference, policy or platform).
        spec.from_publish_request(publish_request(tmp_path / volume["name"] / "mount", attributes))


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_mounts_are_read_only_and_name_declared_volumes(path: Path) -> None:
    for doc in documents(path):
        for _, pod in pod_specs(doc):
            declared = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in declared, f"{container['name']} mounts undeclared {mount['name']}"
                    if "csi" in declared[mount["name"]]:
                        assert mount.get("readOnly") is True, f"{mount['name']} must be mounted readOnly"


def test_whole_volume_mounts_use_host_to_container_propagation() -> None:
    """README: the examples mount whole volumes with HostToContainer, so a container sees the
    driver repair a replaced FUSE view; a subPath mount cannot see it, and does not ask for it."""
    for path in EXAMPLE_FILES:
        for doc in documents(path):
            for _, pod in pod_specs(doc):
                csi = {v["name"] for v in pod["volumes"] if "csi" in v}
                for container in pod["containers"]:
                    for mount in container.get("volumeMounts", []):
                        if mount["name"] in csi and "subPath" not in mount:
                            assert mount.get("mountPropagation") == "HostToContainer", f"{path.name}: {mount['name']}"


def test_examples_name_placeholder_registries_except_the_real_golang_image() -> None:
    """README: the examples use registry.example names, except toolchain.yaml's golang image."""
    for path in EXAMPLE_FILES:
        for volume in csi_volumes(path):
            reference = volume["csi"]["volumeAttributes"]["reference"]
            if path.name == "toolchain.yaml":
                assert reference.startswith("docker.io/library/golang:"), reference
            else:
                assert reference.startswith("registry.example/"), f"{path.name}: {reference}"


def test_klaus_plugin_dirs_are_the_plugin_mounts() -> None:
    (deployment,) = documents(EXAMPLES / "klaus.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    plugins = [m["mountPath"] for m in container["volumeMounts"] if m["name"].startswith("plugin-")]
    assert len(plugins) == 2
    assert env["CLAUDE_PLUGIN_DIRS"].split(",") == plugins
    assert all(p == f"/var/lib/klaus/plugins/{p.rsplit('/', 1)[1]}" for p in plugins)


def test_every_example_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    for path in EXAMPLE_FILES:
        assert f"examples/{path.name}" in section, f"README's Examples section does not mention {path.name}"


def test_examples_need_no_conversion() -> None:
    for path in EXAMPLE_FILES:
        done = subprocess.run(
            [sys.executable, "-m", "csi_driver", "convert", "--check", str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr

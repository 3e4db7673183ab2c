"""End to end: a pod with no pull secret pulls private content with the node's credentials.

The real ``serve`` process, a real registry demanding htpasswd basic auth, and the node's
credentials given the two ways the kubelet takes them: a docker config file (``--docker-config``)
and a credential-provider plugin (``--image-credential-provider-config`` and ``-bin-dir``).
The driver's log must never show the password.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest
from artifacts import PLUGIN_TREE
from driver import run_driver, walk
from kubelet import publish_request, target_for, unpublish_request
from private_registry import PASSWORD, USER
from test_publish import expected_walk

PROVIDER = f"""#!{sys.executable}
import json, sys
request = json.load(sys.stdin)
registry = request["image"].split("/", 1)[0]
print(json.dumps({{
    "apiVersion": request["apiVersion"],
    "kind": "CredentialProviderResponse",
    "cacheKeyType": "Registry",
    "cacheDuration": "5m",
    "auth": {{registry: {{"username": sys.argv[1], "password": sys.argv[2]}}}},
}}))
"""


def docker_config_flags(tmp_path: Path, registry: str) -> list[str]:
    path = tmp_path / "kubelet-config.json"
    path.write_text(json.dumps({"auths": {f"https://{registry}": {"username": USER, "password": PASSWORD}}}))
    return ["--docker-config", str(path)]


def provider_flags(tmp_path: Path, registry: str) -> list[str]:
    bin_dir = tmp_path / "credential-provider-bin"
    bin_dir.mkdir()
    plugin = bin_dir / "node-provider"
    plugin.write_text(PROVIDER)
    plugin.chmod(0o755)
    config = tmp_path / "credential-provider-config.yaml"
    config.write_text(
        "apiVersion: kubelet.config.k8s.io/v1\n"
        "kind: CredentialProviderConfig\n"
        "providers:\n"
        "  - name: node-provider\n"
        f"    matchImages: ['{registry}']\n"
        "    defaultCacheDuration: 1m\n"
        "    apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
        f"    args: ['{USER}', '{PASSWORD}']\n"
    )
    return ["--image-credential-provider-config", str(config), "--image-credential-provider-bin-dir", str(bin_dir)]


@pytest.mark.parametrize("flags", [docker_config_flags, provider_flags], ids=["docker-config", "credential-provider"])
def test_pod_without_a_secret_pulls_with_the_nodes_credentials(
    tmp_path: Path, private_registry: str, private_plugin, flags
) -> None:
    """Passes once NodeService takes its credentials from ``Keyring.for_pod``."""
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=flags(tmp_path, private_registry)) as d:
        target = target_for(tmp_path / "kubelet", "pod-1", "plugin")
        request = publish_request(target, {"reference": private_plugin.reference})
        d.publish(request)
        assert walk(target) == expected_walk(PLUGIN_TREE)
        d.unpublish(unpublish_request(request))
        assert PASSWORD not in d.log.read_text()


def test_without_node_credentials_the_pull_is_refused(tmp_path: Path, private_registry: str, private_plugin) -> None:
    missing = tmp_path / "no-such-config.json"
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=["--docker-config", str(missing)]) as d:
        target = target_for(tmp_path / "kubelet", "pod-1", "plugin")
        with pytest.raises(grpc.RpcError) as excinfo:
            d.publish(publish_request(target, {"reference": private_plugin.reference}))
        assert excinfo.value.code() == grpc.StatusCode.PERMISSION_DENIED

"""Per-pod authorization: cached private content goes only to pods the registry accepts."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from artifacts import PLUGIN_TREE, push_klaus
from driver import Driver, run_driver, walk
from kubelet import publish_request, target_for
from private_registry import PASSWORD, USER
from registry_server import run_registry
from test_publish import expected_walk


def pull_secret(user: str, password: str, registry: str) -> dict[str, str]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {".dockerconfigjson": json.dumps({"auths": {registry: {"auth": auth}}})}


@pytest.fixture
def driver(tmp_path: Path, private_registry: str) -> Iterator[Driver]:
    with run_driver(tmp_path, private_registry, "bind") as d:
        yield d


def publish(driver: Driver, kubelet_root: Path, pod: str, reference: str, secrets: dict[str, str] | None):
    target = target_for(kubelet_root, pod, "plugin")
    driver.publish(publish_request(target, {"reference": reference}, secrets=secrets))
    return target


def refused(driver: Driver, kubelet_root: Path, pod: str, reference: str, secrets) -> grpc.RpcError:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as excinfo:
        publish(driver, kubelet_root, pod, reference, secrets)
    assert time.monotonic() - start < 10, "a refusal must come within seconds, not after retries"
    return excinfo.value


def test_pod_with_the_right_secret_pulls_private_content(
    driver: Driver, private_registry: str, private_plugin, kubelet_root: Path
) -> None:
    target = publish(driver, kubelet_root, "pod-1", private_plugin.reference, pull_secret(USER, PASSWORD, private_registry))
    assert walk(target) == expected_walk(PLUGIN_TREE)


@pytest.mark.parametrize("secrets", [None, "wrong"], ids=["no-secret", "wrong-password"])
def test_cached_private_content_is_refused_to_a_pod_the_registry_refuses(
    driver: Driver, private_registry: str, private_plugin, kubelet_root: Path, secrets
) -> None:
    publish(driver, kubelet_root, "owner", private_plugin.reference, pull_secret(USER, PASSWORD, private_registry))
    if secrets == "wrong":
        secrets = pull_secret(USER, "not-the-password", private_registry)
    err = refused(driver, kubelet_root, "intruder", private_plugin.reference, secrets)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert private_registry in err.details()
    assert not target_for(kubelet_root, "intruder", "plugin").exists()
    assert PASSWORD not in driver.log.read_text()


def test_cached_private_content_by_digest_is_also_checked(
    driver: Driver, private_registry: str, private_plugin, kubelet_root: Path
) -> None:
    pinned = private_plugin.reference.replace(":v1", f"@{private_plugin.digest}")
    publish(driver, kubelet_root, "owner", pinned, pull_secret(USER, PASSWORD, private_registry))
    err = refused(driver, kubelet_root, "intruder", pinned, None)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_another_pod_with_valid_credentials_gets_the_cached_content(
    driver: Driver, private_registry: str, private_plugin, kubelet_root: Path
) -> None:
    secret = pull_secret(USER, PASSWORD, private_registry)
    publish(driver, kubelet_root, "owner", private_plugin.reference, secret)
    target = publish(driver, kubelet_root, "friend", private_plugin.reference, secret)
    assert walk(target) == expected_walk(PLUGIN_TREE)


def test_anonymously_pulled_content_needs_no_check(tmp_path: Path, kubelet_root: Path) -> None:
    with run_registry(tmp_path / "public") as public:
        pushed = push_klaus(public, "public/plugin:v1", PLUGIN_TREE, tmp_path / "push")
        with run_driver(tmp_path / "driver", public, "bind") as driver:
            publish(driver, kubelet_root, "first", pushed.reference, None)
    # The registry is gone: a check would fail, and none is needed.
    with run_driver(tmp_path / "driver", public, "bind") as driver:
        target = publish(driver, kubelet_root, "second", pushed.reference, None)
        assert walk(target) == expected_walk(PLUGIN_TREE)

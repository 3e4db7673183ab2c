"""End to end: ``serve --pod-pull-secrets`` pulls with the secrets the pod's spec names (issue 22).

The real ``serve`` process reads pods and secrets from the stub Kubernetes API
(tests/kube_api_stub.py, over HTTPS with a token kubeconfig) and pulls from real registries:
the htpasswd one of conftest.py and, for the several-secrets case, one behind a token service
(tests/token_server.py). Credential providers with ``tokenAttributes`` get the pod's
service-account token from the volume context, as the kubelet hands it over when the CSIDriver
object asks for it. No secret or token ever appears in the driver's log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest
from artifacts import PLUGIN_TREE
from driver import run_driver, walk
from kube_api_stub import KubeAPI, dockerconfigjson, pod, service_account
from kubelet import publish_request, target_for, unpublish_request
from private_registry import PASSWORD, USER
from test_kubeapi import NS, TOKEN, api, kubeconfig, pki  # noqa: F401 - fixtures
from test_publish import expected_walk
from test_registry_auth import CONTENT, token_registry  # noqa: F401 - fixture
from test_registry_auth import PASSWORD as TOKEN_PASSWORD
from test_registry_auth import USER as TOKEN_USER

WRONG = "wrong-password-Jj4k"
AUDIENCE = "registry.example/exchange"
POD_TOKEN = "pod-bound-token-Vb6n"
UIDS = {"app-0": "0b5d1a6e-0000-4000-8000-000000000000", "app-1": "0b5d1a6e-1111-4111-8111-111111111111"}


def driver_flags(tmp_path: Path, api: KubeAPI, pki, *more: str) -> list[str]:
    config = kubeconfig(tmp_path, {"server": api.url, "certificate-authority": str(pki.ca.cert)}, {"token": TOKEN})
    # -v: the DEBUG lines (whole requests, every API and registry request) must hold no secret either
    return ["-v", "--pod-pull-secrets", "--kubeconfig", str(config), "--docker-config", str(tmp_path / "none.json"), *more]


def put_secret(api: KubeAPI, name: str, registry: str, user: str, password: str) -> None:
    api.put("secrets", dockerconfigjson(NS, name, {registry: {"username": user, "password": password}}))


def request_for(tmp_path: Path, reference: str, name: str = "app-0", **options):
    target = target_for(tmp_path / "kubelet", UIDS[name], "plugin")
    return publish_request(target, {"reference": reference, **options.pop("attributes", {})},
                           pod_name=name, namespace=NS, pod_uid=UIDS[name], **options)  # fmt: skip


def put_pod(api: KubeAPI, *secrets: str, name: str = "app-0", uid: str = "") -> None:
    api.put("pods", pod(NS, name, uid=uid or UIDS[name], pull_secrets=secrets))


def refused(driver, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        driver.publish(request)
    return caught.value


def no_secret_in(text: str, *more: str) -> None:
    for value in (PASSWORD, WRONG, TOKEN, TOKEN_PASSWORD, POD_TOKEN, *more):
        assert value not in text


def test_pod_secret_accepted_refused_or_missing(tmp_path: Path, api: KubeAPI, pki, private_registry: str,
                                                private_plugin) -> None:  # fmt: skip
    put_secret(api, "regcred", private_registry, USER, PASSWORD)
    put_secret(api, "stale", private_registry, USER, WRONG)
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=driver_flags(tmp_path, api, pki)) as d:
        put_pod(api, "gone", "regcred")  # a missing secret is skipped with a warning
        request = request_for(tmp_path, private_plugin.reference)
        d.publish(request)
        assert walk(Path(request.target_path)) == expected_walk(PLUGIN_TREE)
        d.unpublish(unpublish_request(request))

        put_pod(api, "stale", name="app-1")
        error = refused(d, request_for(tmp_path, private_plugin.reference, name="app-1"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert private_registry in error.details() and "then anonymous: all refused" in error.details()
        log = d.log.read_text()
    assert f"image pull secret {NS}/gone does not exist; trying the next one" in log
    no_secret_in(log)


def test_pod_that_is_gone_or_recreated_is_failed_precondition(tmp_path: Path, api: KubeAPI, pki,
                                                              private_registry: str, private_plugin) -> None:  # fmt: skip
    put_secret(api, "regcred", private_registry, USER, PASSWORD)
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=driver_flags(tmp_path, api, pki)) as d:
        gone = refused(d, request_for(tmp_path, private_plugin.reference))
        assert gone.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not exist" in gone.details()
        put_pod(api, "regcred", uid="another-uid")
        recreated = refused(d, request_for(tmp_path, private_plugin.reference))
        assert recreated.code() == grpc.StatusCode.FAILED_PRECONDITION and "another-uid" in recreated.details()
        api.fail_with = 500
        down = refused(d, request_for(tmp_path, private_plugin.reference))
        assert down.code() == grpc.StatusCode.UNAVAILABLE and api.url in down.details()


def test_of_several_secrets_only_the_second_is_right(tmp_path: Path, api: KubeAPI, pki, token_registry) -> None:
    host = token_registry.host
    token_host = token_registry.tokens.realm.split("/")[2]
    put_secret(api, "first", host, TOKEN_USER, WRONG)
    put_secret(api, "second", host, TOKEN_USER, TOKEN_PASSWORD)
    put_pod(api, "first", "second")
    flags = driver_flags(tmp_path, api, pki, "--insecure-registry", token_host)
    with run_driver(tmp_path / "driver", host, "bind", extra=flags) as d:
        request = request_for(tmp_path, f"{host}/private/art:v1")
        d.publish(request)
        assert (Path(request.target_path) / "notes.bin").read_bytes() == CONTENT
        log = d.log.read_text()
    no_secret_in(log, *token_registry.tokens.issued)


def test_node_publish_secret_ref_comes_before_the_pods_secrets(tmp_path: Path, api: KubeAPI, pki,
                                                               private_registry: str, private_plugin) -> None:  # fmt: skip
    right = {"username": USER, "password": PASSWORD}
    wrong = {"username": USER, "password": WRONG}
    put_secret(api, "regcred", private_registry, USER, PASSWORD)
    put_pod(api, "regcred")
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=driver_flags(tmp_path, api, pki)) as d:
        d.publish(request_for(tmp_path, private_plugin.reference, secrets=right))
        assert api.count("pods", NS, "app-0") == 0  # accepted first: the API was never asked
        put_pod(api, "regcred", name="app-1")
        d.publish(request_for(tmp_path, private_plugin.reference, name="app-1", secrets=wrong))
        assert api.count("pods", NS, "app-1") == 1 and api.count("secrets", NS, "regcred") == 1


def test_cached_private_content_needs_the_pods_own_secret(tmp_path: Path, api: KubeAPI, pki,
                                                          private_registry: str, private_plugin) -> None:  # fmt: skip
    put_secret(api, "regcred", private_registry, USER, PASSWORD)
    put_pod(api, "regcred")
    put_pod(api, name="app-1")  # names no secret
    attributes = {"pullPolicy": "IfNotPresent"}
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=driver_flags(tmp_path, api, pki)) as d:
        d.publish(request_for(tmp_path, private_plugin.reference, attributes=attributes))
        error = refused(d, request_for(tmp_path, private_plugin.reference, name="app-1", attributes=attributes))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        put_pod(api, "regcred", name="app-1")
        d.publish(request_for(tmp_path, private_plugin.reference, name="app-1", attributes=attributes))


PROVIDER = f"""#!{sys.executable}
import json, sys
request = json.load(sys.stdin)
if request.get("serviceAccountToken") != sys.argv[3]:
    sys.exit(1)
print(json.dumps({{
    "apiVersion": request["apiVersion"], "kind": "CredentialProviderResponse", "cacheKeyType": "Registry",
    "cacheDuration": "5m", "auth": {{request["image"].split("/", 1)[0]: {{"username": sys.argv[1], "password": sys.argv[2]}}}},
}}))
"""


def test_credential_provider_gets_the_pods_service_account_token(tmp_path: Path, api: KubeAPI, pki,
                                                                 private_registry: str, private_plugin) -> None:  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "exchange").write_text(PROVIDER)
    (bin_dir / "exchange").chmod(0o755)
    config = tmp_path / "providers.json"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{
            "name": "exchange", "matchImages": [private_registry], "defaultCacheDuration": "1m",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "args": [USER, PASSWORD, POD_TOKEN],
            "tokenAttributes": {"serviceAccountTokenAudience": AUDIENCE, "requireServiceAccount": True},
        }],
    }))  # fmt: skip
    api.put("serviceaccounts", service_account(NS, "builder"))
    put_pod(api)
    put_pod(api, name="app-1")
    flags = driver_flags(tmp_path, api, pki, "--image-credential-provider-config", str(config),
                         "--image-credential-provider-bin-dir", str(bin_dir))  # fmt: skip
    tokens = json.dumps({AUDIENCE: {"token": POD_TOKEN, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
    with run_driver(tmp_path / "driver", private_registry, "bind", extra=flags) as d:
        without = request_for(tmp_path, private_plugin.reference, name="app-1")
        without.volume_context["csi.storage.k8s.io/serviceAccount.name"] = "builder"
        error = refused(d, without)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"add {{audience: {AUDIENCE}}} to spec.tokenRequests" in error.details()

        request = request_for(tmp_path, private_plugin.reference)
        request.volume_context["csi.storage.k8s.io/serviceAccount.name"] = "builder"
        request.volume_context["csi.storage.k8s.io/serviceAccount.tokens"] = tokens
        d.publish(request)
        assert walk(Path(request.target_path)) == expected_walk(PLUGIN_TREE)
        log = d.log.read_text()
    assert 'value: "(redacted)"' in log  # the DEBUG request line masks the tokens
    no_secret_in(log)

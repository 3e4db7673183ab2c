"""The pod's imagePullSecrets, read through the Kubernetes API (issue 22, part 1), against tests/kube_api_stub.py."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from certs import issue, make_ca
from kube_api_stub import (
    PKI, KubeAPI, dockercfg, dockerconfigjson, make_pki, pod, secret, serve_kube_api, service_account,
)  # fmt: skip

from csi_driver import errors
from csi_driver.registry import kubeapi
from csi_driver.registry.kubeapi import Pod

NS, POD, UID = "team-a", "app-0", "6f1c0a52-3f7e-4a44-9d3b-6d0f8f0c2a11"
TOKEN = "sa-token-Kq3vZ"
PASSWORD = "registry-pw-Xr7w"
PASSWORD2 = "legacy-pw-Mn2b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("kube-pki"))


@pytest.fixture
def api(pki: PKI) -> KubeAPI:
    with serve_kube_api(pki) as served:
        served.tokens[TOKEN] = "system:serviceaccount:oci-volume-csi:oci-volume-csi-node"
        yield served


def service_account_dir(tmp_path: Path, pki: PKI, token: str = TOKEN) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(token)
    shutil.copy(pki.ca.cert, directory / "ca.crt")
    (directory / "namespace").write_text("oci-volume-csi")
    return directory


def in_cluster_env(api: KubeAPI) -> dict[str, str]:
    host, port = api.url.removeprefix("https://").split(":")
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}


def client(api: KubeAPI, pki: PKI, tmp_path: Path, **options) -> kubeapi.Client:
    """A client with the in-cluster configuration, as the driver's pod has it."""
    config = kubeapi.in_cluster(in_cluster_env(api), service_account_dir(tmp_path, pki))
    return kubeapi.Client(config, **options)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(tmp_path: Path, cluster: dict, user: dict) -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "contexts": [{"name": "node", "context": {"cluster": "local", "user": "kubelet"}}],
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "kubelet", "user": user}],
    }  # fmt: skip
    path = tmp_path / "kubelet.conf"
    path.write_text(yaml.safe_dump(doc))
    return path


def kubelet_pem(pki: PKI, path: Path) -> Path:
    """The kubelet's kubelet-client-current.pem: certificate and key in one file."""
    path.write_bytes(pki.client.cert.read_bytes() + pki.client.key.read_bytes())
    return path


def published(uid: str = UID) -> Pod:
    return Pod(namespace=NS, name=POD, uid=uid, service_account="default")


def put_pod(api: KubeAPI, *pull_secrets: str, uid: str = UID) -> None:
    api.put("pods", pod(NS, POD, uid=uid, pull_secrets=pull_secrets))


def lookups(indexes, image: str = "r.example/app") -> list:
    return [index.lookup(image) for index in indexes]


# --- configuration ---------------------------------------------------------------------------


def test_in_cluster_config_reads_the_service_account_directory(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    directory = service_account_dir(tmp_path, pki)
    config = kubeapi.in_cluster(in_cluster_env(api), directory)
    assert (config.server, config.ca_file, config.token_file) == (api.url, directory / "ca.crt", directory / "token")
    put_pod(api)
    assert kubeapi.Client(config).pod(NS, POD).uid == UID
    assert api.seen[-1].user == "system:serviceaccount:oci-volume-csi:oci-volume-csi-node"


def test_in_cluster_config_brackets_an_ipv6_service_host(pki: PKI, tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert kubeapi.in_cluster(env, service_account_dir(tmp_path, pki)).server == "https://[fd00:10:96::1]:443"


def test_in_cluster_config_outside_a_pod_says_to_give_a_kubeconfig(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="--kubeconfig"):
        kubeapi.in_cluster({}, service_account_dir(tmp_path, pki))


def test_in_cluster_config_without_a_mounted_token_says_so(api: KubeAPI, tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="automountServiceAccountToken"):
        kubeapi.in_cluster(in_cluster_env(api), tmp_path)


def test_rotated_service_account_token_is_used_without_restart(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    c = client(api, pki, tmp_path)
    put_pod(api)
    c.pod(NS, POD)
    api.tokens = {"rotated-token": "system:serviceaccount:oci-volume-csi:oci-volume-csi-node"}
    (tmp_path / "serviceaccount" / "token").write_text("rotated-token\n")
    assert c.pod(NS, POD).uid == UID


def test_kubeconfig_with_the_kubelets_client_certificate_files(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pem = kubelet_pem(pki, pki_dir / "kubelet-client-current.pem")
    shutil.copy(pki.ca.cert, tmp_path / "ca.crt")
    path = kubeconfig(
        tmp_path,
        {"server": api.url, "certificate-authority": "ca.crt"},  # relative to the kubeconfig
        {"client-certificate": str(pem), "client-key": str(pem)},
    )
    put_pod(api)
    assert kubeapi.Client(kubeapi.load(path)).pod(NS, POD).uid == UID
    assert api.seen[-1].user == "system:node:node-1"


def test_kubeconfig_with_inline_certificate_data(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path,
        {"server": api.url, "certificate-authority-data": b64(pki.ca.cert.read_text())},
        {
            "client-certificate-data": b64(pki.client.cert.read_text()),
            "client-key-data": b64(pki.client.key.read_text()),
        },
    )
    put_pod(api)
    assert kubeapi.Client(kubeapi.from_kubeconfig(path)).pod(NS, POD).uid == UID
    assert api.seen[-1].user == "system:node:node-1"


def test_kubeconfig_with_a_token(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": api.url, "certificate-authority": str(pki.ca.cert)}, {"token": TOKEN})
    put_pod(api)
    assert kubeapi.Client(kubeapi.from_kubeconfig(path)).pod(NS, POD).uid == UID


def test_kubeconfig_token_file_is_read_again_when_it_rotates(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    path = kubeconfig(tmp_path, {"server": api.url, "certificate-authority": str(pki.ca.cert)}, {"tokenFile": "token"})
    c = kubeapi.Client(kubeapi.from_kubeconfig(path))
    put_pod(api)
    c.pod(NS, POD)
    api.tokens = {"next-token": "someone"}
    token_file.write_text("next-token")
    assert c.pod(NS, POD).uid == UID


def test_rotated_client_certificate_is_presented_without_restart(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    first = kubelet_pem(pki, pki_dir / "kubelet-client-2026-01-01.pem")
    current = pki_dir / "kubelet-client-current.pem"
    current.symlink_to(first.name)
    path = kubeconfig(
        tmp_path,
        {"server": api.url, "certificate-authority": str(pki.ca.cert)},
        {"client-certificate": str(current), "client-key": str(current)},
    )
    c = kubeapi.Client(kubeapi.from_kubeconfig(path))
    put_pod(api)
    c.pod(NS, POD)
    assert api.seen[-1].user == "system:node:node-1"
    # the kubelet writes the renewed pair to a new file and moves the symlink
    renewed = issue(pki.ca, tmp_path / "renewed", "system:node:node-1-renewed", client=True)
    second = pki_dir / "kubelet-client-2026-06-01.pem"
    second.write_bytes(renewed.cert.read_bytes() + renewed.key.read_bytes())
    (pki_dir / "tmp-link").symlink_to(second.name)
    (pki_dir / "tmp-link").replace(current)
    c.pod(NS, POD)
    assert api.seen[-1].user == "system:node:node-1-renewed"


def test_kubeconfig_insecure_skip_tls_verify_is_refused(api: KubeAPI, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": api.url, "insecure-skip-tls-verify": True}, {"token": TOKEN})
    with pytest.raises(errors.FailedPrecondition, match="insecure-skip-tls-verify is refused") as excinfo:
        kubeapi.from_kubeconfig(path)
    assert str(path) in excinfo.value.message and TOKEN not in excinfo.value.message


@pytest.mark.parametrize("plugin", ["exec", "auth-provider"])
def test_kubeconfig_login_plugins_are_refused(api: KubeAPI, tmp_path: Path, plugin: str) -> None:
    path = kubeconfig(tmp_path, {"server": api.url}, {plugin: {"command": "aws"}})
    with pytest.raises(errors.FailedPrecondition, match=f"uses {plugin}"):
        kubeapi.from_kubeconfig(path)


def test_kubeconfig_plain_http_server_is_refused(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": "http://127.0.0.1:8001"}, {"token": TOKEN})
    with pytest.raises(errors.FailedPrecondition, match="not an https:// URL"):
        kubeapi.from_kubeconfig(path)


def test_kubeconfig_naming_a_missing_context_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({"current-context": "gone", "contexts": []}))
    with pytest.raises(errors.FailedPrecondition, match="has no context named 'gone'"):
        kubeapi.from_kubeconfig(path)


def test_unreadable_client_certificate_fails_at_start_naming_it(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    missing = tmp_path / "kubelet-client-current.pem"
    path = kubeconfig(
        tmp_path, {"server": api.url, "certificate-authority": str(pki.ca.cert)},
        {"client-certificate": str(missing), "client-key": str(missing)},
    )  # fmt: skip
    with pytest.raises(errors.FailedPrecondition, match="cannot load the client certificate") as excinfo:
        kubeapi.Client(kubeapi.from_kubeconfig(path))
    assert str(path) in excinfo.value.message


# --- the pod's pull secrets ---------------------------------------------------------------------


def test_pull_secrets_come_in_spec_order(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.put("secrets", dockerconfigjson(NS, "first", {"r.example": {"username": "one", "password": PASSWORD}}))
    api.put("secrets", dockerconfigjson(NS, "second", {"https://r.example/v1/": {"auth": b64(f"two:{PASSWORD2}")}}))
    put_pod(api, "second", "first")
    indexes = kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert lookups(indexes) == [[("two", PASSWORD2)], [("one", PASSWORD)]]


def test_legacy_dockercfg_secret_is_read(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.put("secrets", dockercfg(NS, "legacy", {"https://r.example": {"auth": b64(f"old:{PASSWORD2}")}}))
    api.put("secrets", dockerconfigjson(NS, "modern", {"r.example": {"username": "new", "password": PASSWORD}}))
    put_pod(api, "legacy", "modern")
    indexes = kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert lookups(indexes) == [[("old", PASSWORD2)], [("new", PASSWORD)]]


def test_entries_apply_only_to_their_registry(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.put("secrets", dockerconfigjson(NS, "regcred", {"other.example": {"username": "u", "password": PASSWORD}}))
    put_pod(api, "regcred")
    indexes = kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert lookups(indexes, "r.example/app") == [[]]
    assert lookups(indexes, "other.example/app") == [[("u", PASSWORD)]]


def test_a_pod_without_pull_secrets_reads_no_secret(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    put_pod(api)
    assert kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published()) == []
    assert [r.path for r in api.seen] == [f"/api/v1/namespaces/{NS}/pods/{POD}"]


def test_pod_of_another_uid_is_failed_precondition(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.put("secrets", dockerconfigjson(NS, "regcred", {"r.example": {"username": "u", "password": PASSWORD}}))
    put_pod(api, "regcred", uid="0c9e2b1d-recreated")
    with pytest.raises(errors.FailedPrecondition, match="recreated under the same name") as excinfo:
        kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert f"{NS}/{POD}" in excinfo.value.message and UID in excinfo.value.message
    assert api.count("secrets", NS, "regcred") == 0  # nothing of the new pod was read


def test_pod_is_read_again_for_every_publish(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    c = client(api, pki, tmp_path, secret_ttl=3600)
    put_pod(api)
    kubeapi.pod_pull_secrets(c, published())
    put_pod(api, uid="0c9e2b1d-recreated")
    with pytest.raises(errors.FailedPrecondition):
        kubeapi.pod_pull_secrets(c, published())


def test_missing_pod_is_failed_precondition(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match=f"pod {NS}/{POD} does not exist"):
        kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())


def test_missing_pod_info_is_failed_precondition_naming_pod_info_on_mount(
    api: KubeAPI, pki: PKI, tmp_path: Path
) -> None:
    with pytest.raises(errors.FailedPrecondition, match="podInfoOnMount: true"):
        kubeapi.pod_pull_secrets(client(api, pki, tmp_path), Pod())
    assert api.seen == []


@pytest.mark.parametrize(
    ("skipped", "warning"),
    [
        (None, f"image pull secret {NS}/skipped does not exist; trying the next one"),
        (secret(NS, "skipped", "Opaque", {"password": PASSWORD.encode()}), f"{NS}/skipped is of type 'Opaque'"),
    ],
    ids=["missing", "another-type"],
)
def test_skipped_secret_is_a_warning_and_the_next_one_is_used(
    api: KubeAPI, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture, skipped: dict | None, warning: str
) -> None:
    if skipped is not None:
        api.put("secrets", skipped)
    api.put("secrets", dockerconfigjson(NS, "regcred", {"r.example": {"username": "u", "password": PASSWORD}}))
    put_pod(api, "skipped", "regcred")
    with caplog.at_level(logging.WARNING, logger="oci-volume-csi"):
        indexes = kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert lookups(indexes) == [[("u", PASSWORD)]]
    assert warning in caplog.text


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{not json", ".dockerconfigjson is not valid JSON"),
        (b'["a list"]', ".dockerconfigjson is not a JSON object"),
        (b'{"auths": {"r.example": {"auth": "bm90LWJhc2U2NCEh!"}}}', "'auth' value that is not base64"),
    ],
)
def test_malformed_secret_is_invalid_argument_naming_it(
    api: KubeAPI, pki: PKI, tmp_path: Path, data: bytes, says: str
) -> None:
    api.put("secrets", secret(NS, "broken", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": data}))
    put_pod(api, "broken")
    with pytest.raises(errors.InvalidArgument, match=f"image pull secret {NS}/broken") as excinfo:
        kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert says in excinfo.value.message


def test_service_account_annotations_are_read(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    annotations = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/puller"}
    api.put("serviceaccounts", service_account(NS, "puller", annotations))
    found = client(api, pki, tmp_path).service_account(NS, "puller")
    assert (found.namespace, found.name, dict(found.annotations)) == (NS, "puller", annotations)
    assert found.uid
    assert client(api, pki, tmp_path).service_account(NS, "nobody") is None


def test_pod_names_its_service_account(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.put("pods", pod(NS, POD, uid=UID, service_account="puller"))
    assert client(api, pki, tmp_path).pod(NS, POD).service_account == "puller"


# --- API errors ----------------------------------------------------------------------------------


def test_api_server_down_is_unavailable_naming_it(pki: PKI, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    c = kubeapi.Client(kubeapi.in_cluster(env, service_account_dir(tmp_path, pki)))
    down = f"Kubernetes API server https://127.0.0.1:{port} is unreachable"
    with pytest.raises(errors.Unavailable, match=down) as excinfo:
        kubeapi.pod_pull_secrets(c, published())
    assert "Connection refused" in excinfo.value.message


def test_api_server_error_is_unavailable_naming_it(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.fail_with = 500
    with pytest.raises(errors.Unavailable, match=f"{api.url} answered HTTP 500 for pod {NS}/{POD}") as excinfo:
        kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    assert "etcdserver: request timed out" in excinfo.value.message


def test_untrusted_api_server_certificate_is_unavailable(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    directory = service_account_dir(tmp_path, pki)
    other = make_ca(tmp_path / "other", "other-ca")
    shutil.copy(other.cert, directory / "ca.crt")
    c = kubeapi.Client(kubeapi.in_cluster(in_cluster_env(api), directory))
    with pytest.raises(errors.Unavailable, match="CERTIFICATE_VERIFY_FAILED") as excinfo:
        c.pod(NS, POD)
    assert "check the certificate authority in the in-cluster configuration" in excinfo.value.message


def test_forbidden_secret_is_permission_denied_naming_the_rbac(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    api.put("secrets", dockerconfigjson(NS, "regcred", {"r.example": {"username": "u", "password": PASSWORD}}))
    put_pod(api, "regcred")
    api.forbidden.add(("secrets", NS))
    with pytest.raises(errors.PermissionDenied) as excinfo:
        kubeapi.pod_pull_secrets(client(api, pki, tmp_path), published())
    message = excinfo.value.message
    assert f"{api.url} forbids reading secret {NS}/regcred" in message
    assert 'User "system:serviceaccount:oci-volume-csi:oci-volume-csi-node" cannot get' in message
    assert "get on pods, secrets and serviceaccounts" in message


def test_rejected_credentials_are_permission_denied(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    c = client(api, pki, tmp_path)
    api.tokens.clear()
    with pytest.raises(errors.PermissionDenied, match="did not accept the driver's credentials for pod"):
        c.pod(NS, POD)


# --- the cache -----------------------------------------------------------------------------------


def test_secret_answers_are_reused_for_the_ttl_then_read_again(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    clock = Clock()
    c = client(api, pki, tmp_path, secret_ttl=10, clock=clock)
    api.put("secrets", dockerconfigjson(NS, "regcred", {"r.example": {"username": "u", "password": PASSWORD}}))
    put_pod(api, "regcred")
    for _ in range(3):  # three volumes of one pod
        kubeapi.pod_pull_secrets(c, published())
    assert api.count("secrets", NS, "regcred") == 1
    assert api.count("pods", NS, POD) == 3
    api.put("secrets", dockerconfigjson(NS, "regcred", {"r.example": {"username": "u", "password": PASSWORD2}}))
    clock.now += 9.9
    assert lookups(kubeapi.pod_pull_secrets(c, published())) == [[("u", PASSWORD)]]
    clock.now += 0.1
    assert lookups(kubeapi.pod_pull_secrets(c, published())) == [[("u", PASSWORD2)]]
    assert api.count("secrets", NS, "regcred") == 2


def test_secret_cache_holds_a_bounded_number_of_secrets(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    c = client(api, pki, tmp_path, max_cached=2, clock=Clock())
    for name in ("a", "b", "c"):
        api.put("secrets", dockerconfigjson(NS, name, {}))
        c.secret(NS, name)
    c.secret(NS, "c")
    c.secret(NS, "a")  # pushed out by c
    assert [api.count("secrets", NS, name) for name in "abc"] == [2, 1, 1]


def test_missing_secret_is_not_cached(api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    c = client(api, pki, tmp_path, clock=Clock())
    assert c.secret(NS, "later") is None
    api.put("secrets", dockerconfigjson(NS, "later", {}))
    assert c.secret(NS, "later") is not None


# --- secrets stay secret -------------------------------------------------------------------------


def test_no_secret_value_in_any_log_line_or_message(
    api: KubeAPI, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = b64(f"u:{PASSWORD2}")
    api.put("secrets", dockerconfigjson(NS, "good", {"r.example": {"username": "u", "password": PASSWORD}}))
    api.put("secrets", dockercfg(NS, "legacy", {"r.example": {"auth": auth}}))
    api.put("secrets", secret(NS, "opaque", "Opaque", {"token": PASSWORD.encode()}))
    broken = b'{"auths": {"r.example": {"auth": "' + PASSWORD.encode() + b'"}}}'
    api.put("secrets", secret(NS, "broken", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": broken}))
    messages = []
    with caplog.at_level(logging.DEBUG):
        c = client(api, pki, tmp_path)
        put_pod(api, "good", "gone", "legacy", "opaque")
        indexes = kubeapi.pod_pull_secrets(c, published())
        for pull_secrets, uid in ((("good", "broken"), UID), ((), "other-uid")):
            put_pod(api, *pull_secrets, uid=uid)
            with pytest.raises(errors.DriverError) as excinfo:
                kubeapi.pod_pull_secrets(c, published())
            messages.append(excinfo.value.message)
        api.forbidden.add(("secrets", NS))
        with pytest.raises(errors.PermissionDenied) as excinfo:
            c.secret(NS, "other")
        messages.append(excinfo.value.message)
        shown = repr(c.secret(NS, "good")) + repr(c.config)
    assert len(indexes) == 2 and "urllib3" in {r.name.split(".")[0] for r in caplog.records}
    everything = caplog.text + "\n".join(messages) + shown
    for value in (PASSWORD, PASSWORD2, auth, TOKEN, b64(PASSWORD)):
        assert value not in everything

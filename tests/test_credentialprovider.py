"""Kubelet credential-provider plugins: real executables, the kubelet's config file and protocol.

Every plugin here is a real executable in a bin dir, named by a real CredentialProviderConfig
file, and run through ``Keyring`` exactly as the driver runs it. The plugin appends each request
it gets (with its arguments) to a calls file, which is how the tests count plugin runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from csi_driver import errors
from csi_driver.registry.kubeapi import Pod
from kube_api_stub import PKI, KubeAPI, service_account
from test_kubeapi import NS, TOKEN, api, kubeconfig, pki  # noqa: F401 - fixtures
from csi_driver.reference import Reference, parse_reference
from csi_driver.registry.credentialprovider import load_config, parse_duration, run_plugin
from csi_driver.registry.credentials import CredentialSources, Keyring

PLUGIN = f"""#!{sys.executable}
import json, os, sys, time
request = json.load(sys.stdin)
with open(os.environ["CALLS"], "a") as calls:
    calls.write(json.dumps({{"request": request, "args": sys.argv[1:]}}) + "\\n")
time.sleep(float(os.environ.get("SLEEP", "0")))
if os.environ.get("FAIL"):
    print("leaked-token-in-stdout")
    sys.stderr.write("leaked-token-in-stderr\\n")
    sys.exit(3)
response = {{
    "apiVersion": os.environ.get("ANSWER_API_VERSION", request["apiVersion"]),
    "kind": "CredentialProviderResponse",
    "cacheKeyType": os.environ.get("CACHE_KEY_TYPE", "Image"),
    "auth": {{
        os.environ.get("AUTH_KEY", "*.example.com"): {{
            "username": os.environ["PLUGIN_USER"],
            "password": request["serviceAccountToken"] if os.environ.get("ECHO_TOKEN")
            else sys.argv[sys.argv.index("--password") + 1],
        }}
    }},
}}
if "CACHE_DURATION" in os.environ:
    response["cacheDuration"] = os.environ["CACHE_DURATION"]
print(json.dumps(response))
"""

HANGS = "#!/bin/sh\nsleep 30\n"  # the child sleep holds stdout: only a group kill ends it

PASSWORD = "pl4gin-s3cret"
AUDIENCE = "registry.example/credential-exchange"
TOKENS = {"serviceAccountTokenAudience": AUDIENCE, "requireServiceAccount": True}
POD_TOKEN = "pod-sa-token-Lw9q"
ROLE_KEY, HINT_KEY = "registry.example/role", "registry.example/region"


class Setup:
    """A bin dir with a plugin, its calls file, and the config that names it."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin_dir = tmp_path / "bin"
        self.bin_dir.mkdir()
        self.calls = tmp_path / "calls.jsonl"
        self.config = tmp_path / "credential-provider-config.yaml"

    def write(
        self,
        *,
        name: str = "fake-provider",
        script: str = PLUGIN,
        match_images: tuple[str, ...] = ("*.example.com", "r.example:5000"),
        default_cache_duration: str = "0s",
        env: dict[str, str] | None = None,
        as_json: bool = False,
        **provider: object,
    ) -> CredentialSources:
        plugin = self.bin_dir / name
        plugin.write_text(script)
        plugin.chmod(0o755)
        entry = {
            "name": name,
            "matchImages": list(match_images),
            "defaultCacheDuration": default_cache_duration,
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "args": ["--password", PASSWORD],
            "env": [
                {"name": k, "value": v}
                for k, v in {"CALLS": str(self.calls), "PLUGIN_USER": "plugin-user", **(env or {})}.items()
            ],
            **provider,
        }
        doc = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig", "providers": [entry]}
        self.config.write_text(json.dumps(doc) if as_json else yaml.safe_dump(doc))
        return self.sources()

    def sources(self, timeout: float = 10.0) -> CredentialSources:
        return CredentialSources(provider_config=self.config, provider_bin_dir=self.bin_dir, provider_timeout=timeout)

    def requests(self) -> list[dict]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def ref(text: str) -> Reference:
    return parse_reference(text)


CREDS = ("plugin-user", PASSWORD)


@pytest.mark.parametrize("as_json", [False, True], ids=["yaml", "json"])
def test_plugin_gets_the_kubelets_request_with_args_and_env(setup: Setup, as_json: bool) -> None:
    keyring = Keyring(setup.write(as_json=as_json))
    assert keyring.for_pod({}, ref("eu.example.com/team/app:v1")) == CREDS
    [call] = setup.requests()
    assert call["request"] == {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": "eu.example.com/team/app",
    }
    assert call["args"] == ["--password", PASSWORD]


def test_images_outside_match_images_do_not_run_the_plugin(setup: Setup) -> None:
    keyring = Keyring(setup.write())
    assert keyring.for_pod({}, ref("example.com/app:v1")) is None  # the glob needs one more label
    assert keyring.for_pod({}, ref("r.example:5001/app:v1")) is None  # another port
    assert keyring.for_pod({}, ref("a.eu.example.com/app:v1")) is None
    assert setup.requests() == []
    assert keyring.for_pod({}, ref("r.example:5000/app:v1")) is None  # ran, but its auth key is *.example.com
    assert len(setup.requests()) == 1


def test_answer_auth_keys_are_matched_against_the_image(setup: Setup) -> None:
    keyring = Keyring(setup.write(env={"AUTH_KEY": "eu.example.com/team"}))
    assert keyring.for_pod({}, ref("eu.example.com/team/app:v1")) == CREDS
    assert keyring.for_pod({}, ref("eu.example.com/other/app:v1")) is None


def test_pod_secret_and_node_file_come_before_the_plugin(setup: Setup, tmp_path: Path) -> None:
    node = tmp_path / "config.json"
    node.write_text(json.dumps({"auths": {"node.example.com": {"username": "node", "password": "n"}}}))
    sources = setup.write()
    keyring = Keyring(CredentialSources(docker_configs=(node,), provider_config=sources.provider_config,
                                        provider_bin_dir=sources.provider_bin_dir))  # fmt: skip
    pod = {"username": "pod", "password": "p"}
    assert keyring.for_pod(pod, ref("eu.example.com/app:v1")) == ("pod", "p")
    assert keyring.for_pod({}, ref("node.example.com/app:v1")) == ("node", "n")
    assert setup.requests() == []  # an earlier source answered: the plugin was never run
    assert list(keyring.candidates(pod, ref("node.example.com/app:v1"))) == [("pod", "p"), ("node", "n"), CREDS]


def test_answer_is_cached_for_its_duration_then_asked_again(setup: Setup) -> None:
    keyring = Keyring(setup.write(env={"CACHE_DURATION": "1s"}))
    image = ref("eu.example.com/app:v1")
    assert keyring.for_pod({}, image) == CREDS
    assert keyring.for_pod({}, image) == CREDS
    assert len(setup.requests()) == 1
    time.sleep(1.1)
    assert keyring.for_pod({}, image) == CREDS
    assert len(setup.requests()) == 2


def test_image_cache_key_covers_only_that_image(setup: Setup) -> None:
    keyring = Keyring(setup.write(env={"CACHE_DURATION": "1h", "CACHE_KEY_TYPE": "Image"}))
    keyring.for_pod({}, ref("eu.example.com/app:v1"))
    keyring.for_pod({}, ref("eu.example.com/app:v2"))  # same repository: the kubelet's image key
    keyring.for_pod({}, ref("eu.example.com/other:v1"))
    assert [c["request"]["image"] for c in setup.requests()] == ["eu.example.com/app", "eu.example.com/other"]


def test_registry_cache_key_covers_the_whole_registry(setup: Setup) -> None:
    keyring = Keyring(setup.write(env={"CACHE_DURATION": "1h", "CACHE_KEY_TYPE": "Registry"}))
    keyring.for_pod({}, ref("eu.example.com/app:v1"))
    assert keyring.for_pod({}, ref("eu.example.com/other:v1")) == CREDS
    keyring.for_pod({}, ref("us.example.com/app:v1"))
    assert [c["request"]["image"] for c in setup.requests()] == ["eu.example.com/app", "us.example.com/app"]


def test_global_cache_key_covers_every_image(setup: Setup) -> None:
    keyring = Keyring(setup.write(env={"CACHE_DURATION": "1h", "CACHE_KEY_TYPE": "Global"}))
    keyring.for_pod({}, ref("eu.example.com/app:v1"))
    assert keyring.for_pod({}, ref("us.example.com/other:v1")) == CREDS
    assert len(setup.requests()) == 1


def test_zero_cache_duration_is_not_cached(setup: Setup) -> None:
    keyring = Keyring(setup.write(default_cache_duration="1h", env={"CACHE_DURATION": "0s"}))
    for _ in range(2):
        keyring.for_pod({}, ref("eu.example.com/app:v1"))
    assert len(setup.requests()) == 2


def test_default_cache_duration_applies_when_the_answer_names_none(setup: Setup) -> None:
    keyring = Keyring(setup.write(default_cache_duration="1h"))
    for _ in range(2):
        keyring.for_pod({}, ref("eu.example.com/app:v1"))
    assert len(setup.requests()) == 1


def test_concurrent_lookups_of_one_image_run_the_plugin_once(setup: Setup) -> None:
    keyring = Keyring(setup.write(env={"CACHE_DURATION": "1h", "SLEEP": "0.5"}))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(keyring.for_pod({}, ref("eu.example.com/app:v1"))))
        for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [CREDS] * 5
    assert len(setup.requests()) == 1


def test_plugin_that_hangs_is_killed_after_the_timeout(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    setup.write(script=HANGS)
    keyring = Keyring(setup.sources(timeout=1.0))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert keyring.for_pod({}, ref("eu.example.com/app:v1")) is None  # on to anonymous
    assert time.monotonic() - start < 5
    assert "fake-provider gave no answer for eu.example.com/app within 1 s" in caplog.text


def test_plugin_that_fails_is_unavailable_and_its_output_is_never_shown(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.write(env={"FAIL": "1"})
    [spec] = load_config(setup.config, setup.bin_dir)
    with pytest.raises(errors.Unavailable) as excinfo:
        run_plugin(spec, "eu.example.com/app", timeout=10)
    assert "exit status 3" in excinfo.value.message
    with caplog.at_level(logging.WARNING):
        assert Keyring(setup.sources()).for_pod({}, ref("eu.example.com/app:v1")) is None
    assert "fake-provider failed for eu.example.com/app" in caplog.text
    for text in (excinfo.value.message, caplog.text):
        assert "leaked-token" not in text and PASSWORD not in text


def test_answer_with_another_api_version_is_refused(setup: Setup) -> None:
    setup.write(env={"ANSWER_API_VERSION": "credentialprovider.kubelet.k8s.io/v1beta1"})
    [spec] = load_config(setup.config, setup.bin_dir)
    with pytest.raises(errors.Unavailable, match="not the configured credentialprovider.kubelet.k8s.io/v1"):
        run_plugin(spec, "eu.example.com/app", timeout=10)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"matchImages": []}, "matchImages"),
        ({"defaultCacheDuration": None}, "defaultCacheDuration is required"),
        ({"defaultCacheDuration": "ten minutes"}, "is not a duration"),
        ({"apiVersion": "credentialprovider.kubelet.k8s.io/v2"}, "apiVersion"),
        ({"name": "../escape"}, "must be a file name"),
        ({"name": "absent"}, "is not an executable file"),
        ({"tokenAttributes": {"requireServiceAccount": True}}, "serviceAccountTokenAudience is required"),
        ({"tokenAttributes": {"serviceAccountTokenAudience": "aud"}}, "requireServiceAccount is required"),
        ({"tokenAttributes": {**TOKENS, "cacheType": "Pod"}}, "cacheType 'Pod'"),
        ({"tokenAttributes": {**TOKENS, "requiredServiceAccountAnnotationKeys": ["k"],
                              "optionalServiceAccountAnnotationKeys": ["k"]}}, "both required and optional"),
        ({"tokenAttributes": {**TOKENS, "requireServiceAccount": False,
                              "requiredServiceAccountAnnotationKeys": ["k"]}}, "needs requireServiceAccount: true"),
        ({"tokenAttributes": TOKENS, "apiVersion": "credentialprovider.kubelet.k8s.io/v1beta1"}, "tokenAttributes needs"),
    ],
)
def test_bad_provider_config_is_refused_saying_why(setup: Setup, change: dict, complaint: str) -> None:
    setup.write()
    doc = yaml.safe_load(setup.config.read_text())
    doc["providers"][0].update(change)
    setup.config.write_text(yaml.safe_dump(doc))
    with pytest.raises(errors.FailedPrecondition, match=complaint):
        load_config(setup.config, setup.bin_dir)


def test_broken_provider_config_leaves_the_other_sources_working(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup.config.write_text("providers: [unclosed")
    node = tmp_path / "config.json"
    node.write_text(json.dumps({"auths": {"eu.example.com": {"username": "node", "password": "n"}}}))
    with caplog.at_level(logging.WARNING):
        keyring = Keyring(CredentialSources(docker_configs=(node,), provider_config=setup.config,
                                            provider_bin_dir=setup.bin_dir))  # fmt: skip
    assert "no credential provider will be used" in caplog.text
    assert keyring.for_pod({}, ref("eu.example.com/app:v1")) == ("node", "n")


# --- providers with tokenAttributes (KEP-4412): the pod's service-account token ---------------------


@pytest.fixture
def token_api(api: KubeAPI) -> KubeAPI:
    """The stub API with two service accounts of the namespace, annotated as workload identity would."""
    api.put("serviceaccounts", service_account(NS, "builder", {ROLE_KEY: "arn:role/builder", HINT_KEY: "eu",
                                                               "unrelated": "not-sent"}))  # fmt: skip
    api.put("serviceaccounts", service_account(NS, "deployer", {ROLE_KEY: "arn:role/deployer"}))
    api.put("serviceaccounts", service_account(NS, "plain"))
    return api


def token_keyring(
    setup: Setup, api: KubeAPI, pki: PKI, tmp_path: Path, env: dict[str, str] | None = None, **attributes: object
) -> Keyring:
    """A Keyring whose provider wants tokens of AUDIENCE, reaching the stub API with a token kubeconfig."""
    sources = setup.write(default_cache_duration="1h", env={"CACHE_KEY_TYPE": "Registry", **(env or {})},
                          tokenAttributes={**TOKENS, **attributes})  # fmt: skip
    config = kubeconfig(tmp_path, {"server": api.url, "certificate-authority": str(pki.ca.cert)}, {"token": TOKEN})
    return Keyring(dataclasses.replace(sources, kubeconfig=config))


def pod_of(account: str, token: str | None = POD_TOKEN, name: str = "app-0") -> Pod:
    return Pod(NS, name, f"uid-{name}", account, {AUDIENCE: token} if token else {})


def test_provider_gets_the_pods_token_and_the_annotations_its_config_names(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path
) -> None:
    keyring = token_keyring(setup, token_api, pki, tmp_path, requiredServiceAccountAnnotationKeys=[ROLE_KEY],
                            optionalServiceAccountAnnotationKeys=[HINT_KEY, "absent.example/key"])  # fmt: skip
    assert keyring.for_pod({}, ref("eu.example.com/app:v1"), pod_of("builder")) == CREDS
    [call] = setup.requests()
    assert call["request"] == {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
        "image": "eu.example.com/app", "serviceAccountToken": POD_TOKEN,
        "serviceAccountAnnotations": {ROLE_KEY: "arn:role/builder", HINT_KEY: "eu"},
    }  # fmt: skip


def test_provider_answers_are_cached_per_service_account(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path
) -> None:
    """The kubelet's cache key: the image's (here the registry's) plus namespace, name, uid and annotations."""
    keyring = token_keyring(setup, token_api, pki, tmp_path, requiredServiceAccountAnnotationKeys=[ROLE_KEY])
    image = ref("eu.example.com/app:v1")
    keyring.for_pod({}, image, pod_of("builder"))
    keyring.for_pod({}, ref("eu.example.com/other:v1"), pod_of("builder", token="another-pods-token", name="app-1"))
    assert len(setup.requests()) == 1  # same account, same registry: cached
    keyring.for_pod({}, image, pod_of("deployer"))
    assert len(setup.requests()) == 2  # another account runs the plugin again, with its own token
    token_api.put("serviceaccounts", service_account(NS, "deployer", {ROLE_KEY: "arn:role/deployer"}))  # new uid
    keyring.for_pod({}, image, pod_of("deployer"))
    assert len(setup.requests()) == 3
    token_api.put("serviceaccounts", service_account(NS, "builder", {ROLE_KEY: "arn:role/changed"}))
    keyring.for_pod({}, image, pod_of("builder"))
    assert [c["request"]["serviceAccountAnnotations"][ROLE_KEY] for c in setup.requests()] == [
        "arn:role/builder", "arn:role/deployer", "arn:role/deployer", "arn:role/changed"
    ]  # fmt: skip


def test_token_cache_type_keys_answers_by_token_and_allows_echoing_it(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path
) -> None:
    keyring = token_keyring(setup, token_api, pki, tmp_path, env={"ECHO_TOKEN": "1"}, cacheType="Token")
    image = ref("eu.example.com/app:v1")
    assert keyring.for_pod({}, image, pod_of("plain")) == ("plugin-user", POD_TOKEN)
    assert keyring.for_pod({}, image, pod_of("plain")) == ("plugin-user", POD_TOKEN)
    assert keyring.for_pod({}, image, pod_of("plain", token="t2", name="b")) == ("plugin-user", "t2")
    assert len(setup.requests()) == 2  # one run per token, however many pulls with it


def test_token_echoed_as_the_password_is_refused_unless_cached_per_token(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = token_keyring(setup, token_api, pki, tmp_path, env={"ECHO_TOKEN": "1"})
    notes: list[str] = []
    with caplog.at_level(logging.DEBUG):
        assert list(keyring.candidates({}, ref("eu.example.com/app:v1"), pod_of("plain"), notes)) == []
    assert "needs tokenAttributes.cacheType: Token" in notes[0]
    assert POD_TOKEN not in caplog.text + "".join(notes)


def test_required_service_account_without_a_token_names_the_csidriver_field(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path
) -> None:
    keyring = token_keyring(setup, token_api, pki, tmp_path)
    notes: list[str] = []
    assert list(keyring.candidates({}, ref("eu.example.com/app:v1"), pod_of("builder", token=None), notes)) == []
    assert setup.requests() == []
    assert f"add {{audience: {AUDIENCE}}} to spec.tokenRequests of the driver's CSIDriver object" in notes[0]


def test_optional_service_account_without_a_token_runs_the_provider_without_one(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = token_keyring(setup, token_api, pki, tmp_path, requireServiceAccount=False)
    with caplog.at_level(logging.WARNING):
        assert keyring.for_pod({}, ref("eu.example.com/app:v1"), pod_of("builder", token=None)) == CREDS
    assert "serviceAccountToken" not in setup.requests()[0]["request"]
    assert "spec.tokenRequests" in caplog.text
    assert keyring.for_pod({}, ref("eu.example.com/app:v1"), pod_of("", token=None)) == CREDS  # no account at all


def test_missing_required_annotation_skips_the_provider_and_says_so(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path
) -> None:
    """The kubelet's opt-in: an account without the annotation does not run the plugin."""
    keyring = token_keyring(setup, token_api, pki, tmp_path, requiredServiceAccountAnnotationKeys=[ROLE_KEY])
    notes: list[str] = []
    assert list(keyring.candidates({}, ref("eu.example.com/app:v1"), pod_of("plain"), notes)) == []
    assert setup.requests() == []
    assert f"service account {NS}/plain lacks the required annotation(s) {ROLE_KEY}" in notes[0]


def test_required_service_account_and_none_named(setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path) -> None:
    keyring = token_keyring(setup, token_api, pki, tmp_path)
    notes: list[str] = []
    assert list(keyring.candidates({}, ref("eu.example.com/app:v1"), pod_of("", token=None), notes)) == []
    assert "podInfoOnMount: true" in notes[0]
    missing = pod_of("ghost")
    assert list(keyring.candidates({}, ref("eu.example.com/app:v1"), missing, notes)) == []
    assert f"service account {NS}/ghost of pod {NS}/app-0 does not exist" in notes[1]


def test_token_providers_are_left_out_without_api_access(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    sources = setup.write(tokenAttributes=TOKENS)
    with caplog.at_level(logging.WARNING):
        keyring = Keyring(sources)
    assert "credential providers fake-provider need it and are not used" in caplog.text
    assert keyring.for_pod({}, ref("eu.example.com/app:v1"), pod_of("builder")) is None


def test_no_token_in_any_log_line_or_message(
    setup: Setup, token_api: KubeAPI, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notes: list[str] = []
    with caplog.at_level(logging.DEBUG):
        keyring = token_keyring(setup, token_api, pki, tmp_path, requiredServiceAccountAnnotationKeys=[ROLE_KEY])
        for account in ("builder", "plain", "ghost"):
            list(keyring.candidates({}, ref("eu.example.com/app:v1"), pod_of(account), notes))
        shown = repr(pod_of("builder")) + repr(keyring._providers[0])
    assert POD_TOKEN not in caplog.text + "".join(notes) + shown and TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("0s", 0.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("-1s", -1.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1d", "h", "1h 30m"])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)

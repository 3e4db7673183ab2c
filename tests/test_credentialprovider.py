"""Kubelet credential-provider plugins: real executables, the kubelet's config file and protocol.

Every plugin here is a real executable in a bin dir, named by a real CredentialProviderConfig
file, and run through ``Keyring`` exactly as the driver runs it. The plugin appends each request
it gets (with its arguments) to a calls file, which is how the tests count plugin runs.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from csi_driver import errors
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
            "password": sys.argv[sys.argv.index("--password") + 1],
        }}
    }},
}}
if "CACHE_DURATION" in os.environ:
    response["cacheDuration"] = os.environ["CACHE_DURATION"]
print(json.dumps(response))
"""

HANGS = "#!/bin/sh\nsleep 30\n"  # the child sleep holds stdout: only a group kill ends it

PASSWORD = "pl4gin-s3cret"


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


def test_providers_wanting_service_account_tokens_are_skipped(setup: Setup) -> None:
    setup.write(tokenAttributes={"serviceAccountTokenAudience": "aud", "requireServiceAccount": True})
    assert load_config(setup.config, setup.bin_dir) == []


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

"""Which credentials apply to an image, and from which source, as the kubelet decides (issue 5)."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from csi_driver import errors
from csi_driver.reference import parse_reference
from csi_driver.registry.credentials import CredentialSources, Keyring
from csi_driver.registry.dockerconfig import AuthIndex, matches, pattern


def from_secrets(secrets: dict[str, str], image: str):
    """The credentials a pod with only ``secrets`` (no node sources) gets for ``image``."""
    name = image if "/" in image else f"{image}/app"
    return Keyring(CredentialSources()).for_pod(secrets, parse_reference(name))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# (key as written in a config, image as the kubelet looks it up, applies?)
KUBELET_MATCH_CASES = [
    # globs match exactly one label each
    ("*.kubernetes.io", "prefix.kubernetes.io", True),
    ("prefix.*.io", "prefix.kubernetes.io", True),
    ("prefix.kubernetes.*", "prefix.kubernetes.io", True),
    ("*-good.kubernetes.io", "prefix-good.kubernetes.io", True),
    ("*.kubernetes.io", "kubernetes.io", False),
    ("*.kubernetes.io", "a.prefix.kubernetes.io", False),
    ("*.*.kubernetes.io", "prefix.kubernetes.io", False),
    ("kubernetes.io", "kubernetes.com", False),
    ("k*.io", "quay.io", False),
    # paths are prefixes of the image's path
    ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", True),
    ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", True),
    ("r.example/team", "r.example/team/app", True),
    ("r.example/team", "r.example/teammates/app", True),  # a string prefix, as in the kubelet
    ("r.example/team", "r.example/other/app", False),
    # ports must be equal, and absent on both sides or present on both
    ("*.kubernetes.io:1111/blah", "prefix.kubernetes.io:1111/blah", True),
    ("*.kubernetes.io:1234/blah", "prefix.kubernetes.io:1111/blah", False),
    ("prefix.*.io/foo", "prefix.kubernetes.io:1111/foo/bar", False),
    ("r.example:5000", "r.example/app", False),
    ("127.0.0.1:5000", "127.0.0.1:5000/app", True),
    ("[::1]:5000", "[::1]:5000/app", True),
    # schemes are ignored; /v1/ and /v2/ mean the registry itself
    ("https://hello.kubernetes.io", "hello.kubernetes.io/foo/bar", True),
    ("http://hello.kubernetes.io", "hello.kubernetes.io/foo/bar", True),
    ("https://*.docker.io/v1/", "prefix.docker.io/path/foo", True),
    ("https://*.docker.io/v2/", "prefix.docker.io/path/foo", True),
    ("https://quay.io/v1/", "quay.io/foo/bar", True),
    # host names compare without regard to case
    ("R.Example", "r.example/app", True),
]


@pytest.mark.parametrize(("key", "image", "applies"), KUBELET_MATCH_CASES)
def test_registry_key_matching_follows_the_kubelet(key: str, image: str, applies: bool) -> None:
    assert matches(pattern(key), image) is applies


def test_most_specific_key_comes_first() -> None:
    """The kubelet's TestDockerKeyringLookup: every applicable entry, deepest path first."""
    index = AuthIndex.parse(
        {
            "bar.example.com": {"username": "ada", "password": "smash"},
            "bar.example.com/pong": {"username": "grace", "password": "squash"},
            "*.example.com": {"username": "glob", "password": "g"},
        }
    )
    ada, grace, glob = ("ada", "smash"), ("grace", "squash"), ("glob", "g")
    assert index.lookup("bar.example.com/pong/pang") == [grace, ada, glob]
    assert index.lookup("bar.example.com/ping") == [ada, glob]
    assert index.lookup("foo.example.com/ping") == [glob]
    assert index.lookup("example.com/ping") == []


def test_legacy_docker_hub_key_applies_to_docker_hub_images_only() -> None:
    index = AuthIndex.parse({"https://index.docker.io/v1/": {"auth": b64("hub:pw")}})
    assert index.lookup("docker.io/library/busybox") == [("hub", "pw")]
    assert index.lookup("r.example/library/busybox") == []


def test_auth_field_wins_over_username_and_password() -> None:
    index = AuthIndex.parse({"r.example": {"auth": b64("alice:pa:ss"), "username": "bob", "password": "x"}})
    assert index.lookup("r.example/app") == [("alice", "pa:ss")]


def test_entry_without_credentials_gives_none() -> None:
    """An identitytoken-only entry (docker login with a token) is not basic credentials."""
    assert AuthIndex.parse({"r.example": {"identitytoken": "t0ken"}}).lookup("r.example/app") == []


@pytest.mark.parametrize("auth", ["not base64!", b64("no-colon")])
def test_bad_auth_field_names_the_key_not_the_value(auth: str) -> None:
    with pytest.raises(errors.InvalidArgument) as excinfo:
        AuthIndex.parse({"r.example": {"auth": auth}})
    assert "r.example" in excinfo.value.message
    assert auth not in excinfo.value.message


def test_pod_secret_with_path_keys_picks_the_repository_entry() -> None:
    secrets = {
        ".dockerconfigjson": json.dumps(
            {"auths": {"r.example": {"auth": b64("any:1")}, "r.example/team": {"auth": b64("team:2")}}}
        )
    }
    assert from_secrets(secrets, "r.example/team/app") == ("team", "2")
    assert from_secrets(secrets, "r.example/other/app") == ("any", "1")
    assert from_secrets(secrets, "r.example") == ("any", "1")


def test_bad_pod_secret_entry_is_invalid_argument_naming_the_secret_key() -> None:
    secrets = {".dockerconfigjson": json.dumps({"auths": {"r.example": {"auth": "%%%"}}})}
    with pytest.raises(errors.InvalidArgument, match=r"\.dockerconfigjson.*r\.example"):
        from_secrets(secrets, "r.example/app")


# --- the node's sources, in order ---------------------------------------------------------


def docker_config(path: Path, auths: dict, **extra: object) -> Path:
    path.write_text(json.dumps({"auths": auths, **extra}))
    return path


def secret_for(registry: str, user: str, password: str) -> dict[str, str]:
    return {".dockerconfigjson": json.dumps({"auths": {registry: {"username": user, "password": password}}})}


REF = parse_reference("r.example/team/app:v1")


def test_sources_are_tried_pod_secret_then_node_files_in_order(tmp_path: Path) -> None:
    first = docker_config(tmp_path / "kubelet.json", {"r.example/team": {"auth": b64("kubelet:1")}})
    second = docker_config(tmp_path / "home.json", {"https://r.example": {"username": "home", "password": "2"}})
    keyring = Keyring(CredentialSources(docker_configs=(first, second)))

    pod = secret_for("r.example", "pod", "0")
    assert keyring.for_pod(pod, REF) == ("pod", "0")
    assert list(keyring.candidates(pod, REF)) == [("pod", "0"), ("kubelet", "1"), ("home", "2")]
    assert keyring.for_pod({}, REF) == ("kubelet", "1")
    assert keyring.for_pod(secret_for("other.example", "pod", "0"), REF) == ("kubelet", "1")
    assert keyring.for_pod({}, parse_reference("r.example/elsewhere:v1")) == ("home", "2")
    assert keyring.for_pod({}, parse_reference("other.example/app:v1")) is None


def test_candidates_are_each_given_once(tmp_path: Path) -> None:
    same = {"r.example": {"username": "u", "password": "p"}}
    files = (docker_config(tmp_path / "a.json", same), docker_config(tmp_path / "b.json", same))
    keyring = Keyring(CredentialSources(docker_configs=files))
    assert list(keyring.candidates(secret_for("r.example", "u", "p"), REF)) == [("u", "p")]


def test_missing_node_files_are_fine_and_are_read_once_they_appear(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    keyring = Keyring(CredentialSources(docker_configs=(path,)))
    assert keyring.for_pod({}, REF) is None
    docker_config(path, {"r.example": {"username": "late", "password": "p"}})
    assert keyring.for_pod({}, REF) == ("late", "p")


def test_a_changed_node_file_is_read_again(tmp_path: Path) -> None:
    path = docker_config(tmp_path / "config.json", {"r.example": {"username": "old", "password": "p"}})
    keyring = Keyring(CredentialSources(docker_configs=(path,)))
    assert keyring.for_pod({}, REF) == ("old", "p")
    docker_config(path, {"r.example": {"username": "rotated", "password": "p2"}})
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert keyring.for_pod({}, REF) == ("rotated", "p2")


def test_a_broken_node_file_is_skipped_with_one_warning_and_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = docker_config(tmp_path / "broken.json", {"r.example": {"auth": "hunter2-not-base64"}})
    good = docker_config(tmp_path / "good.json", {"r.example": {"username": "good", "password": "p"}})
    keyring = Keyring(CredentialSources(docker_configs=(broken, good)))
    with caplog.at_level(logging.WARNING):
        assert keyring.for_pod({}, REF) == ("good", "p")
        assert keyring.for_pod({}, REF) == ("good", "p")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(broken) in warnings[0] and "r.example" in warnings[0]
    assert "hunter2" not in caplog.text


def test_node_file_that_is_not_json_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.json").write_text('{"auths": {"r.example": {"auth": "c2VjcmV0')
    keyring = Keyring(CredentialSources(docker_configs=(tmp_path / "config.json",)))
    with caplog.at_level(logging.WARNING):
        assert keyring.for_pod({}, REF) is None
    assert "cannot be read as JSON" in caplog.text
    assert "c2VjcmV0" not in caplog.text


def test_cred_helpers_are_not_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = docker_config(tmp_path / "config.json", {}, credHelpers={"r.example": "ecr-login"})
    with caplog.at_level(logging.WARNING):
        assert Keyring(CredentialSources(docker_configs=(path,))).for_pod({}, REF) is None
    assert "credHelpers" in caplog.text


def test_a_broken_pod_secret_is_the_pods_error_even_when_the_node_has_credentials(tmp_path: Path) -> None:
    node = docker_config(tmp_path / "config.json", {"r.example": {"username": "node", "password": "p"}})
    keyring = Keyring(CredentialSources(docker_configs=(node,)))
    with pytest.raises(errors.InvalidArgument):
        keyring.for_pod({".dockerconfigjson": "{not json"}, REF)


def test_docker_hub_references_use_the_legacy_key(tmp_path: Path) -> None:
    node = docker_config(tmp_path / "config.json", {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}})
    keyring = Keyring(CredentialSources(docker_configs=(node,)))
    assert keyring.for_pod({}, parse_reference("busybox")) == ("hub", "pw")
    assert keyring.for_pod({}, parse_reference("localhost:5000/busybox:v1")) is None

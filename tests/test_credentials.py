"""Pull credentials from the pod's nodePublishSecretRef, in the shapes the kubelet hands over."""

from __future__ import annotations

import base64
import json

import pytest
from test_keyring import from_secrets

from csi_driver import errors


def dockerconfigjson(auths: dict) -> dict[str, str]:
    return {".dockerconfigjson": json.dumps({"auths": auths})}


def test_no_secret_means_anonymous() -> None:
    assert from_secrets({}, "r.example") is None


def test_dockerconfigjson_auth_field_is_decoded() -> None:
    auth = base64.b64encode(b"alice:s3cret:with:colons").decode()
    assert from_secrets(dockerconfigjson({"r.example": {"auth": auth}}), "r.example") == ("alice", "s3cret:with:colons")


def test_dockerconfigjson_key_with_scheme_and_path_matches_host() -> None:
    secrets = dockerconfigjson({"https://r.example:5000/v1/": {"username": "bob", "password": "pw"}})
    assert from_secrets(secrets, "r.example:5000") == ("bob", "pw")


def test_docker_hub_aliases_match() -> None:
    secrets = dockerconfigjson({"https://index.docker.io/v1/": {"username": "u", "password": "p"}})
    assert from_secrets(secrets, "docker.io") == ("u", "p")


def test_other_registry_gets_no_credentials() -> None:
    assert from_secrets(dockerconfigjson({"other.example": {"username": "u", "password": "p"}}), "r.example") is None


def test_legacy_dockercfg_is_read() -> None:
    secrets = {".dockercfg": json.dumps({"r.example": {"username": "u", "password": "p"}})}
    assert from_secrets(secrets, "r.example") == ("u", "p")


def test_username_and_password_keys_are_read() -> None:
    assert from_secrets({"username": "u", "password": "p"}, "r.example") == ("u", "p")


def test_unusable_secret_is_invalid_argument_without_its_value() -> None:
    with pytest.raises(errors.InvalidArgument) as excinfo:
        from_secrets({"token": "hunter2"}, "r.example")
    assert "hunter2" not in str(excinfo.value)

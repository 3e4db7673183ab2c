"""Reference names: Docker's normalisation, the grammar's edges, and the default pull policy."""

from __future__ import annotations

import pytest

from csi_driver import errors
from csi_driver.reference import Reference, default_pull_policy, parse_reference, valid_digest

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository"),
    [
        ("nginx", "docker.io", "library/nginx"),
        ("foo/bar", "docker.io", "foo/bar"),
        ("docker.io/nginx", "docker.io", "library/nginx"),
        ("index.docker.io/foo/bar", "docker.io", "foo/bar"),
        ("library/nginx", "docker.io", "library/nginx"),
    ],
)
def test_docker_hub_names_are_normalised_as_docker_does(text, registry, repository):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository) == (registry, repository)


@pytest.mark.parametrize(
    ("text", "registry", "repository"),
    [
        ("registry.example/klaus-plugins/gs-base", "registry.example", "klaus-plugins/gs-base"),
        ("localhost/foo", "localhost", "foo"),
        ("localhost:5000/foo/bar", "localhost:5000", "foo/bar"),
        ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c"),
        ("myhost:443/x", "myhost:443", "x"),
        ("[::1]:5000/x", "[::1]:5000", "x"),
        ("Registry/foo", "Registry", "foo"),
    ],
)
def test_first_component_is_a_registry_when_it_looks_like_a_host(text, registry, repository):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository) == (registry, repository)


def test_a_port_is_not_mistaken_for_a_tag():
    ref = parse_reference("localhost:5000/foo")
    assert ref.tag is None
    assert parse_reference("localhost:5000/foo:1.0").tag == "1.0"


def test_no_tag_written_means_tag_none_not_latest():
    assert parse_reference("registry.example/app").tag is None


def test_tag_and_digest_are_both_kept():
    ref = parse_reference(f"registry.example/app:v0.6.0@{DIGEST}")
    assert ref == Reference("registry.example", "app", "v0.6.0", DIGEST)


def test_digest_alone():
    ref = parse_reference(f"registry.example/app@{DIGEST}")
    assert (ref.tag, ref.digest) == (None, DIGEST)


@pytest.mark.parametrize(
    "text",
    [
        "docker.io/library/nginx",
        "docker.io/library/nginx:1.25",
        f"registry.example:5000/a/b:v1@{DIGEST}",
        f"localhost/foo@{DIGEST}",
    ],
)
def test_str_is_canonical_and_parses_back_to_itself(text):
    ref = parse_reference(text)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


def test_str_of_a_docker_hub_short_name_is_fully_qualified():
    assert str(parse_reference("nginx:1.25")) == "docker.io/library/nginx:1.25"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("Registry.example/Foo", "lower case"),
        ("registry.example/foo:", "tag"),
        ("registry.example/foo:-bad", "tag"),
        ("registry.example/foo:" + "a" * 129, "tag"),
        ("registry.example/foo@sha256:abc", "64 lower-case hex"),
        ("registry.example/foo@sha256:" + "AB" * 32, "64 lower-case hex"),
        ("registry.example/foo@sha512:" + "ab" * 64, "sha512"),
        ("registry.example/foo@" + "ab" * 32, "no algorithm"),
        ("registry.example/foo@", "no algorithm"),
        ("registry.example/", "repository"),
        ("registry.example/foo//bar", "repository"),
        ("registry.example/foo_-bar", "repository"),
        ("registry.example/-foo", "repository"),
        ("-bad.example:5000/foo", "registry"),
        ("host:port/foo", "registry"),
        ("foo bar", "repository"),
        ("ab" * 32, "image id"),
        ("registry.example/" + "a" * 250, "longer than 255"),
    ],
)
def test_bad_references_are_invalid_argument_naming_the_text(text, complaint):
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_reference(text)
    assert repr(text) in caught.value.message
    assert complaint in caught.value.message


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("nginx:1.25", "IfNotPresent"),
        (f"nginx@{DIGEST}", "IfNotPresent"),
        (f"nginx:latest@{DIGEST}", "IfNotPresent"),
        ("registry.example/app:Latest", "IfNotPresent"),
    ],
)
def test_default_pull_policy_follows_kep_4639(text, policy):
    assert default_pull_policy(parse_reference(text)) == policy


def test_valid_digest_accepts_only_sha256_with_64_lower_hex():
    assert valid_digest(DIGEST)
    assert not valid_digest(DIGEST.upper())
    assert not valid_digest(DIGEST[:-1])
    assert not valid_digest("sha256:../../etc/passwd")

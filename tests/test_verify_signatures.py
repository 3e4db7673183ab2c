"""Verification against the real registry (Debian's docker-registry 2.8: no referrers API).

Every signature is made by the tests in cosign's formats (tests/signing.py) and pushed to the
registry; every keyless one by the tests' own sigstore (tests/sigstore_fakes.py), whose
``trusted_root.json`` sigstore-python loads. The driver's code finds them through the registry
client, as a publish would, and decides.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from artifacts import PLUGIN_TREE, push_klaus
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fixtures_tools import OCI_INDEX, OCI_MANIFEST, put_manifest
from signing import (
    ISSUER,
    SUBJECT,
    attach_bundle,
    dsse_bundle,
    key_attestor,
    keyless_attestor,
    make_policy,
    manifest_size,
    message_bundle,
    sign_legacy,
)
from sigstore_fakes import FakeSigstore

from csi_driver.reference import parse_reference
from csi_driver.registry.client import RegistryClient, RegistryConfig
from csi_driver.verify.verdict import Verdict, verify

_names = itertools.count()


@pytest.fixture(scope="module")
def sigstore() -> FakeSigstore:
    return FakeSigstore()


@pytest.fixture(scope="module")
def trusted_root(sigstore: FakeSigstore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sigstore.write_trusted_root(tmp_path_factory.mktemp("sigstore") / "trusted_root.json")


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def artifact(registry: str, tmp_path: Path) -> tuple[str, str]:
    """A fresh Klaus plugin in a repository of its own: (repository, manifest digest)."""
    repo = f"verify/plugin-{next(_names)}"
    pushed = push_klaus(registry, f"{repo}:v1", PLUGIN_TREE, tmp_path / "push")
    return repo, pushed.digest


def check(registry: str, policy, repo: str, *subjects: str) -> Verdict:
    client = RegistryClient(RegistryConfig(insecure_hosts=frozenset({registry})))
    return verify(policy, client, parse_reference(f"{registry}/{repo}:v1"), subjects)


def assert_refused(verdict: Verdict, digest: str, found: str) -> None:
    assert not verdict.allowed and not verdict.satisfied, verdict
    assert verdict.message.startswith("verification policy: rule 'plugins' refused "), verdict.message
    assert digest in verdict.message and found in verdict.message, verdict.message


# -- keyed, legacy .sig tag -----------------------------------------------------------------


def test_a_legacy_signature_by_the_accepted_p256_key_is_allowed(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    sign_legacy(registry, repo, digest, p256)
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest)
    assert verdict.allowed and verdict.satisfied and verdict.result == "verified"
    assert (verdict.rule, verdict.format) == ("plugins", "cosign-simplesigning")
    assert verdict.signer.startswith("sha256:") and verdict.attestor == f"cosign key {verdict.signer}"


@pytest.mark.parametrize(
    "make_key",
    [ed25519.Ed25519PrivateKey.generate, lambda: ec.generate_private_key(ec.SECP384R1()),
     lambda: rsa.generate_private_key(65537, 2048)],  # fmt: skip
    ids=["ed25519", "p384", "rsa"],
)
def test_a_legacy_signature_by_another_accepted_key_type_is_allowed(registry, tmp_path, artifact, make_key):
    repo, digest = artifact
    key = make_key()
    sign_legacy(registry, repo, digest, key)
    assert check(registry, make_policy(tmp_path, registry, key_attestor(key)), repo, digest).allowed


def test_an_unsigned_artifact_is_refused_saying_no_signature_was_found(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest)
    assert_refused(verdict, digest, "no signature found")
    assert verdict.result == "refused"


def test_a_signature_by_another_key_is_refused_as_an_unknown_key(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    sign_legacy(registry, repo, digest, ec.generate_private_key(ec.SECP256R1()))
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest)
    assert_refused(verdict, digest, "1 signature found, none accepted: signed by an unknown key")


def test_a_valid_signature_over_another_digest_is_refused(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    other = "sha256:" + "ab" * 32
    sign_legacy(registry, repo, digest, p256, signs=other)
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest)
    assert_refused(verdict, digest, f"signature over another digest (it signs {other})")


def test_a_tampered_payload_is_refused(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    sign_legacy(registry, repo, digest, p256, tamper=True)
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest)
    assert_refused(verdict, digest, "signed by an unknown key")


def test_one_good_signature_among_others_on_the_sig_tag_is_enough(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    sign_legacy(registry, repo, digest, ec.generate_private_key(ec.SECP256R1()))
    sign_legacy(registry, repo, digest, p256)
    assert check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest).allowed


def test_a_keyed_attestor_with_a_trusted_root_wants_the_log_entry(registry, tmp_path, artifact, p256, sigstore, trusted_root):
    repo, digest = artifact
    policy = make_policy(tmp_path, registry, key_attestor(p256, trusted_root))
    sign_legacy(registry, repo, digest, p256)
    assert_refused(check(registry, policy, repo, digest), digest, "no valid transparency-log entry")
    sign_legacy(registry, repo, digest, p256, log=sigstore.rekor)
    assert check(registry, policy, repo, digest).allowed


# -- keyed, sigstore bundles (referrers tag schema: the registry has no referrers API) ------


@pytest.mark.parametrize(
    ("key_name", "make", "format"),
    [
        ("p256", dsse_bundle, "sigstore-bundle-dsse"),
        ("ed_key", dsse_bundle, "sigstore-bundle-dsse"),
        ("p256", message_bundle, "sigstore-bundle-message"),
    ],
)
def test_a_keyed_bundle_found_by_the_referrers_tag_is_allowed(registry, tmp_path, artifact, request, key_name, make, format):
    repo, digest = artifact
    key = request.getfixturevalue(key_name)
    attach_bundle(registry, repo, digest, OCI_MANIFEST, make(key, digest))
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(key)), repo, digest)
    assert verdict.allowed and verdict.format == format, verdict


def test_bundle_refusals_name_what_was_wrong(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    other = "sha256:" + "cd" * 32
    attach_bundle(registry, repo, digest, OCI_MANIFEST, dsse_bundle(p256, other))
    attach_bundle(registry, repo, digest, OCI_MANIFEST, dsse_bundle(p256, digest, tamper=True))
    attach_bundle(registry, repo, digest, OCI_MANIFEST, dsse_bundle(p256, digest, predicate_type="https://slsa.dev/provenance/v1"))
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, digest)
    assert_refused(verdict, digest, f"3 signatures found, none accepted: signature over another digest (it signs {other})")
    assert "signed by an unknown key" not in verdict.message  # the best finding is named, once per kind


def test_a_keyed_bundle_with_a_trusted_root_wants_a_proven_log_entry(registry, tmp_path, artifact, p256, sigstore, trusted_root):
    repo, digest = artifact
    policy = make_policy(tmp_path, registry, key_attestor(p256, trusted_root))
    attach_bundle(registry, repo, digest, OCI_MANIFEST, dsse_bundle(p256, digest))
    assert_refused(check(registry, policy, repo, digest), digest, "no valid transparency-log entry (the bundle has no log entry)")
    attach_bundle(registry, repo, digest, OCI_MANIFEST, dsse_bundle(p256, digest, log=sigstore.rekor))
    assert check(registry, policy, repo, digest).allowed


def test_a_log_entry_from_another_log_is_not_evidence(registry, tmp_path, artifact, p256, trusted_root):
    from sigstore_fakes import Log

    repo, digest = artifact
    attach_bundle(registry, repo, digest, OCI_MANIFEST, dsse_bundle(p256, digest, log=Log("rogue.test")))
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256, trusted_root)), repo, digest)
    assert_refused(verdict, digest, "no valid transparency-log entry")


# -- keyless ------------------------------------------------------------------------------


def attach_keyless(registry: str, repo: str, digest: str, ca: FakeSigstore, identity: str = SUBJECT, make=dsse_bundle) -> None:
    """A bundle ``make`` builds, signed by a fresh key with a certificate from ``ca`` for ``identity``."""
    key = ec.generate_private_key(ec.SECP256R1())
    bundle = make(key, digest, certificate=ca.issue(key, identity, ISSUER), log=ca.rekor)
    attach_bundle(registry, repo, digest, OCI_MANIFEST, bundle)


def check_keyless(registry: str, tmp_path: Path, trusted_root: Path, repo: str, digest: str, **identity) -> Verdict:
    return check(registry, make_policy(tmp_path, registry, keyless_attestor(trusted_root, **identity)), repo, digest)


def test_a_keyless_dsse_bundle_with_the_right_identity_is_allowed(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    attach_keyless(registry, repo, digest, sigstore)
    verdict = check_keyless(registry, tmp_path, trusted_root, repo, digest)
    assert verdict.allowed, verdict
    assert verdict.signer == f"{SUBJECT} from {ISSUER}" and verdict.format == "sigstore-bundle-dsse"


def test_a_keyless_bundle_with_another_identity_is_refused_naming_it(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    evil = "https://github.com/evil/plugins/.github/workflows/release.yml@refs/heads/main"
    attach_keyless(registry, repo, digest, sigstore, identity=evil)
    verdict = check_keyless(registry, tmp_path, trusted_root, repo, digest)
    assert_refused(verdict, digest, f"identity mismatch (signed by {evil} from {ISSUER})")


def test_a_keyless_subject_regexp_matches_the_whole_identity(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    attach_keyless(registry, repo, digest, sigstore)
    assert check_keyless(registry, tmp_path, trusted_root, repo, digest, subject=r"^https://github\.com/acme/.*$", regexp=True).allowed
    assert not check_keyless(registry, tmp_path, trusted_root, repo, digest, subject=r"https://github\.com/acme", regexp=True).allowed


def test_a_keyless_bundle_from_another_ca_is_refused(registry, tmp_path, artifact, trusted_root):
    repo, digest = artifact
    attach_keyless(registry, repo, digest, FakeSigstore())
    assert_refused(check_keyless(registry, tmp_path, trusted_root, repo, digest), digest, "certificate not trusted")


def test_a_keyless_message_signature_bundle_is_allowed(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    attach_keyless(registry, repo, digest, sigstore, make=message_bundle)
    verdict = check_keyless(registry, tmp_path, trusted_root, repo, digest)
    assert verdict.allowed and verdict.format == "sigstore-bundle-message", verdict


def test_a_legacy_keyless_signature_is_allowed_and_a_wrong_identity_refused(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    key = ec.generate_private_key(ec.SECP256R1())
    sign_legacy(registry, repo, digest, key, certificate=sigstore.issue(key, SUBJECT, ISSUER), log=sigstore.rekor)
    verdict = check(registry, make_policy(tmp_path, registry, keyless_attestor(trusted_root)), repo, digest)
    assert verdict.allowed and verdict.signer == f"{SUBJECT} from {ISSUER}", verdict
    other = keyless_attestor(trusted_root, "release@example.com")
    assert_refused(check(registry, make_policy(tmp_path, registry, other), repo, digest), digest, "identity mismatch")


def test_a_legacy_keyless_signature_without_its_rekor_bundle_is_refused(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    key = ec.generate_private_key(ec.SECP256R1())
    sign_legacy(registry, repo, digest, key, certificate=sigstore.issue(key, SUBJECT, ISSUER))
    verdict = check(registry, make_policy(tmp_path, registry, keyless_attestor(trusted_root)), repo, digest)
    assert_refused(verdict, digest, "no valid transparency-log entry (the signature carries no Rekor bundle)")


def test_a_tampered_legacy_keyless_payload_is_refused(registry, tmp_path, artifact, sigstore, trusted_root):
    repo, digest = artifact
    key = ec.generate_private_key(ec.SECP256R1())
    sign_legacy(registry, repo, digest, key, certificate=sigstore.issue(key, SUBJECT, ISSUER), log=sigstore.rekor, tamper=True)
    verdict = check(registry, make_policy(tmp_path, registry, keyless_attestor(trusted_root)), repo, digest)
    assert_refused(verdict, digest, "signature")
    assert verdict.message.endswith(("invalid signature (the signature does not verify with its certificate's key)",
                                     "no valid transparency-log entry (the log entry records another signature)"))  # fmt: skip


# -- policy: audit, default, any/all --------------------------------------------------------


def test_audit_mode_mounts_and_carries_the_refusal_message(registry, tmp_path, artifact, p256):
    repo, digest = artifact
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256), mode="audit"), repo, digest)
    assert verdict.allowed and not verdict.satisfied and verdict.result == "audited"
    assert verdict.message.startswith("verification policy: rule 'plugins' refused ") and "no signature found" in verdict.message


def test_a_reference_no_rule_matches_is_refused_under_default_deny(registry, tmp_path, p256):
    policy = make_policy(tmp_path, registry, key_attestor(p256), default="deny")
    pushed = push_klaus(registry, "elsewhere/plugin:v1", PLUGIN_TREE, tmp_path / "push")
    verdict = check(registry, policy, "elsewhere/plugin", pushed.digest)
    assert not verdict.allowed and verdict.rule is None and verdict.result == "default-deny"
    assert verdict.message.startswith(f"verification policy: no rule matches {registry}/elsewhere/plugin")
    assert pushed.digest in verdict.message


def test_a_reference_no_rule_matches_is_allowed_under_default_allow(registry, tmp_path, p256):
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    verdict = check(registry, policy, "elsewhere/unsigned", "sha256:" + "00" * 32)  # nothing is looked up
    assert verdict.allowed and verdict.result == "default-allow"


def test_require_all_wants_every_attestor(registry, tmp_path, artifact, p256, ed_key):
    repo, digest = artifact
    policy = make_policy(tmp_path, registry, key_attestor(p256), key_attestor(ed_key), require="all")
    sign_legacy(registry, repo, digest, p256)
    verdict = check(registry, policy, repo, digest)
    assert_refused(verdict, digest, "all attestors are required")
    assert "signed by an unknown key" in verdict.message
    sign_legacy(registry, repo, digest, ed_key)
    verdict = check(registry, policy, repo, digest)
    assert verdict.allowed and verdict.signer.count("sha256:") == 2, verdict


def test_require_any_takes_either_attestor(registry, tmp_path, artifact, p256, ed_key):
    repo, digest = artifact
    sign_legacy(registry, repo, digest, ed_key)
    assert check(registry, make_policy(tmp_path, registry, key_attestor(p256), key_attestor(ed_key)), repo, digest).allowed


# -- indexes: a signature on the index or on the node's platform manifest counts ---------------


@pytest.fixture
def index(registry: str, tmp_path: Path) -> tuple[str, str, str]:
    """An index of two platform manifests: (repository, index digest, the amd64 manifest's)."""
    repo = f"verify/index-{next(_names)}"
    amd64 = push_klaus(registry, f"{repo}:amd64", PLUGIN_TREE, tmp_path / "amd64")
    arm64 = push_klaus(registry, f"{repo}:arm64", {**PLUGIN_TREE, "arm": (b"arm64\n", 0o644)}, tmp_path / "arm64")
    entries = []
    for pushed, arch in ((amd64, "amd64"), (arm64, "arm64")):
        entries.append({"mediaType": OCI_MANIFEST, "digest": pushed.digest, "size": manifest_size(registry, repo, pushed.digest),
                        "platform": {"os": "linux", "architecture": arch}})  # fmt: skip
    digest = put_manifest(registry, repo, "v1", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, OCI_INDEX)
    return repo, digest, amd64.digest


def test_a_signed_index_allows_its_unsigned_platform_manifest(registry, tmp_path, index, p256):
    repo, index_digest, platform_digest = index
    sign_legacy(registry, repo, index_digest, p256)
    assert check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, index_digest, platform_digest).allowed


def test_a_signed_platform_manifest_allows_its_unsigned_index(registry, tmp_path, index, p256):
    repo, index_digest, platform_digest = index
    attach_bundle(registry, repo, platform_digest, OCI_MANIFEST, dsse_bundle(p256, platform_digest))
    assert check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, index_digest, platform_digest).allowed


def test_a_signature_of_another_platform_manifest_does_not_count(registry, tmp_path, index, p256):
    repo, index_digest, platform_digest = index
    sign_legacy(registry, repo, platform_digest, p256, signs="sha256:" + "ef" * 32)
    verdict = check(registry, make_policy(tmp_path, registry, key_attestor(p256)), repo, index_digest, platform_digest)
    assert_refused(verdict, index_digest, "signature over another digest")
    assert f"and its platform manifest {platform_digest}" in verdict.message

"""Signatures verified on the node before a volume mounts (issue 21), through the real ``serve``
with ``--policy``, against the real registry (no referrers API: the tag schemas stand in).

Signatures are made with the signing helpers (tests/signing.py) and the tests' own sigstore;
policies with ``make_policy`` (one rule over ``<registry>/verify/**``).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from artifacts import PERSONALITY_TREE, PLUGIN_TREE, Pushed, push_klaus
from cryptography.hazmat.primitives.asymmetric import ec
from driver import Driver, run_driver, walk
from kubelet import publish_request, target_for
from private_registry import PASSWORD, USER
from registry_server import access_log, blob_fetches, free_port, run_registry
from signing import ISSUER, SUBJECT, key_attestor, keyless_attestor, make_policy, sign_legacy
from test_authorization import pull_secret
from test_observability import scrape, value
from test_publish import expected_walk
from test_verify_signatures import attach_keyless, index, p256, sigstore, trusted_root  # noqa: F401 (fixtures)

from csi_driver.content.pull import REFUSAL_TTL

_names = itertools.count()
PLATFORM = "linux/amd64"  # the platform the index fixture's amd64 manifest is for


@pytest.fixture
def artifact(registry: str, tmp_path: Path) -> Pushed:
    """A fresh Klaus plugin in a repository of its own, under the policy's ``verify/**``."""
    return push_klaus(registry, f"verify/publish-{next(_names)}:v1", PLUGIN_TREE, tmp_path / "push")


def repo_of(pushed: Pushed) -> str:
    return pushed.reference.split("/", 1)[1].rsplit(":", 1)[0]


def serving(tmp_path: Path, registry: str, policy: Path | None, *extra: str):
    flags = ["--platform", PLATFORM, *(["--policy", str(policy)] if policy else []), *extra]
    return run_driver(tmp_path / "driver", registry, "bind", flags)


def publish(driver: Driver, kubelet_root: Path, pod: str, reference: str, secrets=None, **attributes: str) -> Path:
    target = target_for(kubelet_root, pod, "plugin")
    driver.publish(publish_request(target, {"reference": reference, **attributes}, secrets=secrets))
    return target


def refusal(driver: Driver, kubelet_root: Path, pod: str, reference: str, **attributes: str) -> str:
    """The message of the PERMISSION_DENIED the publish gets; nothing is mounted."""
    with pytest.raises(grpc.RpcError) as excinfo:
        publish(driver, kubelet_root, pod, reference, **attributes)
    assert excinfo.value.code() == grpc.StatusCode.PERMISSION_DENIED, excinfo.value.details()
    assert not target_for(kubelet_root, pod, "plugin").exists()
    return excinfo.value.details()


def test_an_artifact_signed_by_an_accepted_key_mounts(tmp_path, registry, artifact, p256, kubelet_root):
    sign_legacy(registry, repo_of(artifact), artifact.digest, p256)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        target = publish(driver, kubelet_root, "pod-1", artifact.reference)
        assert walk(target) == expected_walk(PLUGIN_TREE)


def test_an_unsigned_artifact_is_refused_before_its_layers_are_fetched(tmp_path, registry, artifact, p256, kubelet_root):
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        message = refusal(driver, kubelet_root, "pod-1", artifact.reference)
    assert message.startswith("verification policy: rule 'plugins' refused "), message
    assert artifact.digest in message and "no signature found" in message
    assert blob_fetches(registry, repo_of(artifact)) == {}


def test_a_signature_by_another_key_is_refused(tmp_path, registry, artifact, p256, kubelet_root):
    sign_legacy(registry, repo_of(artifact), artifact.digest, ec.generate_private_key(ec.SECP256R1()))
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        assert "signed by an unknown key" in refusal(driver, kubelet_root, "pod-1", artifact.reference)


def test_a_valid_signature_over_another_digest_is_refused(tmp_path, registry, artifact, p256, kubelet_root):
    other = "sha256:" + "ab" * 32
    sign_legacy(registry, repo_of(artifact), artifact.digest, p256, signs=other)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        assert f"signature over another digest (it signs {other})" in refusal(driver, kubelet_root, "pod-1", artifact.reference)


def test_keyless_mounts_the_right_identity_and_refuses_another(tmp_path, registry, sigstore, trusted_root, kubelet_root):
    good = push_klaus(registry, f"verify/publish-{next(_names)}:v1", PLUGIN_TREE, tmp_path / "good")
    evil = push_klaus(registry, f"verify/publish-{next(_names)}:v1", PLUGIN_TREE, tmp_path / "evil")
    attach_keyless(registry, repo_of(good), good.digest, sigstore)
    attach_keyless(registry, repo_of(evil), evil.digest, sigstore, identity="https://github.com/evil/x/.github/workflows/r.yml@refs/heads/main")
    policy = make_policy(tmp_path, registry, keyless_attestor(trusted_root))
    with serving(tmp_path, registry, policy.path) as driver:
        target = publish(driver, kubelet_root, "pod-1", good.reference)
        assert walk(target) == expected_walk(PLUGIN_TREE)
        message = refusal(driver, kubelet_root, "pod-2", evil.reference)
        shown = cli("inspect", str(target), "--state-dir", str(driver.state_dir), "--output", "json")
        text = cli("inspect", str(target), "--state-dir", str(driver.state_dir)).stdout
    verdict = json.loads(shown.stdout)["verification"]
    assert (verdict["result"], verdict["rule"], verdict["format"]) == ("verified", "plugins", "sigstore-bundle-dsse")
    assert verdict["signer"] == f"{SUBJECT} from {ISSUER}" and verdict["attestor"] == f"cosign keyless {SUBJECT} from {ISSUER}"
    assert f"verification:  verified by rule 'plugins': cosign keyless {SUBJECT} from {ISSUER} (sigstore-bundle-dsse)" in text
    assert f"identity mismatch (signed by https://github.com/evil/x/.github/workflows/r.yml@refs/heads/main from {ISSUER})" in message


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csi_driver", *args], capture_output=True, text=True, check=check)


def test_describe_shows_the_verdict_a_node_with_the_policy_would_reach(tmp_path, registry, artifact, p256):
    unsigned = push_klaus(registry, f"verify/publish-{next(_names)}:v1", PLUGIN_TREE, tmp_path / "unsigned")
    sign_legacy(registry, repo_of(artifact), artifact.digest, p256)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    flags = ["--insecure-registry", registry, "--policy", str(policy.path)]
    shown = json.loads(cli("describe", artifact.reference, *flags, "--output", "json").stdout)["verification"]
    key_id = shown["signer"]
    assert (shown["result"], shown["rule"], shown["attestor"]) == ("verified", "plugins", f"cosign key {key_id}")
    assert f"verification: verified by rule 'plugins': cosign key {key_id} (cosign-simplesigning)" in cli("describe", artifact.reference, *flags).stdout
    refused = cli("describe", unsigned.reference, *flags, check=False)
    assert refused.returncode == 1
    assert "the node would refuse this volume: PERMISSION_DENIED: verification policy: rule 'plugins' refused" in refused.stdout
    assert "verification: refused: verification policy:" in refused.stdout
    assert "verification" not in cli("describe", artifact.reference, "--insecure-registry", registry).stdout


def test_audit_mounts_and_logs_the_refusal_once(tmp_path, registry, artifact, p256, kubelet_root):
    policy = make_policy(tmp_path, registry, key_attestor(p256), mode="audit")
    with serving(tmp_path, registry, policy.path) as driver:
        for pod in ("pod-1", "pod-2"):
            assert walk(publish(driver, kubelet_root, pod, artifact.reference)) == expected_walk(PLUGIN_TREE)
        log = driver.log.read_text()
    lines = [line for line in log.splitlines() if "mounted anyway" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and f"refused {artifact.reference.rsplit(':', 1)[0]}@{artifact.digest}" in lines[0]


def test_default_deny_refuses_what_no_rule_matches(tmp_path, registry, p256, kubelet_root):
    pushed = push_klaus(registry, f"elsewhere/publish-{next(_names)}:v1", PLUGIN_TREE, tmp_path / "push")
    policy = make_policy(tmp_path, registry, key_attestor(p256), default="deny")
    with serving(tmp_path, registry, policy.path) as driver:
        message = refusal(driver, kubelet_root, "pod-1", pushed.reference)
    assert message.startswith(f"verification policy: no rule matches {registry}/{repo_of(pushed)} and the default is deny")


def test_a_signed_index_mounts_its_unsigned_platform_manifest(tmp_path, registry, index, p256, kubelet_root):
    repo, index_digest, _ = index
    sign_legacy(registry, repo, index_digest, p256)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        assert walk(publish(driver, kubelet_root, "pod-1", f"{registry}/{repo}:v1")) == expected_walk(PLUGIN_TREE)


def test_content_on_the_node_from_before_the_policy_is_verified_before_it_mounts(tmp_path, registry, artifact, index, p256, kubelet_root):
    repo, index_digest, _ = index
    sign_legacy(registry, repo, index_digest, p256)  # the index is signed, the artifact is not
    with serving(tmp_path, registry, None) as driver:
        publish(driver, kubelet_root, "before-1", artifact.reference)
        publish(driver, kubelet_root, "before-2", f"{registry}/{repo}:v1")
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        assert "no signature found" in refusal(driver, kubelet_root, "after-1", artifact.reference, pullPolicy="IfNotPresent")
        # The node resolved the tag to the platform manifest; the index it came from is signed.
        assert walk(publish(driver, kubelet_root, "after-2", f"{registry}/{repo}:v1")) == expected_walk(PLUGIN_TREE)


def test_a_policy_reloaded_with_a_new_key_applies_without_a_restart(tmp_path, registry, artifact, p256, kubelet_root):
    other = ec.generate_private_key(ec.SECP256R1())
    sign_legacy(registry, repo_of(artifact), artifact.digest, other)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        refusal(driver, kubelet_root, "pod-1", artifact.reference)
        make_policy(tmp_path, registry, key_attestor(p256), key_attestor(other))  # rewrites the same file
        assert walk(publish(driver, kubelet_root, "pod-2", artifact.reference)) == expected_walk(PLUGIN_TREE)
        assert "verification policy " in driver.log.read_text() and " reloaded: sha256:" in driver.log.read_text()


def test_a_signature_pushed_after_a_refusal_mounts_once_the_refusal_expires(tmp_path, registry, artifact, p256, kubelet_root):
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        refusal(driver, kubelet_root, "pod-1", artifact.reference)
        sign_legacy(registry, repo_of(artifact), artifact.digest, p256)
        time.sleep(REFUSAL_TTL)
        assert walk(publish(driver, kubelet_root, "pod-2", artifact.reference)) == expected_walk(PLUGIN_TREE)


def test_a_broken_policy_at_start_is_a_one_line_usage_error(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: oci-volume.csi.dev/v1alpha1\nkind: VerificationPolicy\nrules:\n  - name: x\n    mach: []\n")
    for command in (["serve", "--node-id", "n", "--state-dir", str(tmp_path / "state")], ["describe", "127.0.0.1:1/x:v1"]):
        done = subprocess.run([sys.executable, "-m", "csi_driver", *command, "--policy", str(policy)], capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"oci-volume-csi {command[0]}: policy {policy} line 5: unknown field 'mach' in a rule"), done.stderr


def test_a_broken_reload_keeps_the_last_good_policy_and_counts_the_error(tmp_path, registry, artifact, p256, kubelet_root):
    unsigned = push_klaus(registry, f"verify/publish-{next(_names)}:v1", PLUGIN_TREE, tmp_path / "unsigned")
    sign_legacy(registry, repo_of(artifact), artifact.digest, p256)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    port = free_port()
    with serving(tmp_path, registry, policy.path, "--metrics-address", f"127.0.0.1:{port}") as driver:
        policy.path.write_text("apiVersion: [\n")
        assert walk(publish(driver, kubelet_root, "pod-1", artifact.reference)) == expected_walk(PLUGIN_TREE)
        assert "no signature found" in refusal(driver, kubelet_root, "pod-2", unsigned.reference)
        families, _ = scrape(port)
        assert value(families["oci_volume_csi_policy_reload_errors"]) == 1
        assert value(families["oci_volume_csi_verifications"], rule="plugins", result="verified", format="cosign-simplesigning") == 1
        assert value(families["oci_volume_csi_verifications"], rule="plugins", result="refused", format="none") == 1
        timed = [s for s in families["oci_volume_csi_verification_duration_seconds"] if s.name.endswith("_count")]
        assert value(timed) == 2
        assert "keeping the policy loaded before" in driver.log.read_text()


def test_pull_policy_always_verifies_each_new_digest(tmp_path, registry, artifact, p256, kubelet_root):
    sign_legacy(registry, repo_of(artifact), artifact.digest, p256)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        publish(driver, kubelet_root, "pod-1", artifact.reference, pullPolicy="Always")
        moved = push_klaus(registry, f"{repo_of(artifact)}:v1", PERSONALITY_TREE, tmp_path / "moved", kind="personality")
        assert moved.digest in refusal(driver, kubelet_root, "pod-2", artifact.reference, pullPolicy="Always")
        sign_legacy(registry, repo_of(artifact), moved.digest, p256)
        time.sleep(REFUSAL_TTL)
        assert walk(publish(driver, kubelet_root, "pod-3", artifact.reference, pullPolicy="Always")) == expected_walk(PERSONALITY_TREE)


def test_a_warm_publish_asks_the_registry_nothing_for_verification(tmp_path, registry, artifact, p256, kubelet_root):
    sign_legacy(registry, repo_of(artifact), artifact.digest, p256)
    policy = make_policy(tmp_path, registry, key_attestor(p256))
    with serving(tmp_path, registry, policy.path) as driver:
        publish(driver, kubelet_root, "pod-1", artifact.reference)
        start = len(access_log(registry))
        publish(driver, kubelet_root, "pod-2", artifact.reference)
        assert access_log(registry)[start:] == []
        publish(driver, kubelet_root, "pod-3", artifact.reference, pullPolicy="Always")
        assert [line.split(" ")[0] for line in access_log(registry)[start:]] == ["HEAD"]  # the tag, as without a policy


def test_private_content_is_verified_with_the_pods_credentials(tmp_path, p256, kubelet_root):
    storage = tmp_path / "storage"
    with run_registry(tmp_path / "open", storage=storage) as open_registry:
        pushed = push_klaus(open_registry, "verify/private:v1", PLUGIN_TREE, tmp_path / "push")
        sign_legacy(open_registry, "verify/private", pushed.digest, p256)
    with run_registry(tmp_path / "private", storage=storage, htpasswd={USER: PASSWORD}) as private:
        reference = pushed.reference.replace(open_registry, private)
        policy = make_policy(tmp_path, private, key_attestor(p256))
        with serving(tmp_path, private, policy.path) as driver:
            secret = pull_secret(USER, PASSWORD, private)
            assert walk(publish(driver, kubelet_root, "pod-1", reference, secrets=secret)) == expected_walk(PLUGIN_TREE)
        lookups = [line for line in access_log(private) if f"/manifests/sha256-{pushed.digest[7:]}" in line]
    assert lookups, "the signature lookups went to the private registry"


def test_without_a_policy_serve_never_loads_the_verify_package():
    code = (
        "import sys, csi_driver.__main__, csi_driver.csi.server, csi_driver.cli.describe; "
        "print(sorted(m for m in sys.modules if m.startswith(('csi_driver.verify', 'sigstore', 'pydantic'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout

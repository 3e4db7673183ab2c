"""The verification policy file: what loads, what is refused (naming the line), how rules match,
the policy hash, and the reloader."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sigstore_fakes import FakeSigstore, pem_of

from csi_driver.verify.policy import KeyAttestor, KeylessAttestor, PolicyError, PolicyReloader, glob_match, load

HEADER = "apiVersion: oci-volume.csi.dev/v1alpha1\nkind: VerificationPolicy\n"


@pytest.fixture(scope="module")
def trusted_root(tmp_path_factory) -> Path:
    return FakeSigstore().write_trusted_root(tmp_path_factory.mktemp("root") / "trusted_root.json")


@pytest.fixture
def key_pem() -> str:
    return pem_of(ec.generate_private_key(ec.SECP256R1()).public_key()).decode()


def indent(text: str, spaces: int) -> str:
    return textwrap.indent(text, " " * spaces)


def write(tmp_path: Path, body: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def refused(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        load(path)
    return caught.value.message


def test_the_issue_example_loads_with_inline_key_key_file_and_keyless(tmp_path, key_pem, trusted_root):
    (tmp_path / "cosign.pub").write_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()).decode())
    path = tmp_path / "policy.yaml"
    path.write_text(
        HEADER
        + "default: deny\nrules:\n  - name: klaus-plugins\n"
        + '    match: ["registry.example/klaus-plugins/**", "ghcr.io/acme/*"]\n'
        + "    mode: audit\n    require: all\n    attestors:\n"
        + "      - cosign:\n          key: |\n"
        + indent(key_pem, 12)
        + "      - cosign:\n          keyFile: cosign.pub\n"
        + "      - cosign:\n          keyless:\n            issuer: https://token.actions.githubusercontent.com\n"
        + "            subjectRegExp: '^https://github.com/acme/.*$'\n"
        + f"          trustedRoot: {trusted_root}\n"
    )
    policy = load(path)
    assert policy.default == "deny" and [r.name for r in policy.rules] == ["klaus-plugins"]
    rule = policy.rules[0]
    assert (rule.mode, rule.require) == ("audit", "all")
    assert [type(a) for a in rule.attestors] == [KeyAttestor, KeyAttestor, KeylessAttestor]
    assert rule.attestors[2].subject_regexp.pattern == "^https://github.com/acme/.*$"
    assert policy.files == (path, tmp_path / "cosign.pub", trusted_root)


def test_defaults_are_allow_enforce_and_any(tmp_path, key_pem):
    path = write(tmp_path, f"rules:\n  - name: r\n    match: [r.example/**]\n    attestors:\n      - cosign:\n          key: |\n{indent(key_pem, 12)}")
    policy = load(path)
    assert policy.default == "allow" and (policy.rules[0].mode, policy.rules[0].require) == ("enforce", "any")


def test_a_yaml_syntax_error_is_refused_naming_its_line(tmp_path):
    message = refused(write(tmp_path, "default: allow\nrules: [\n  - name: x\n"))
    assert message.startswith(f"policy {tmp_path}/policy.yaml line ") and "not valid YAML" in message


def test_an_unknown_field_is_refused_naming_it_and_its_line(tmp_path, key_pem):
    path = write(tmp_path, f"rules:\n  - name: r\n    match: [r.example/**]\n    requires: all\n    attestors:\n      - cosign:\n          key: |\n{indent(key_pem, 12)}")
    assert refused(path) == (
        f"policy {path} line 6: unknown field 'requires' in a rule (known: name, match, mode, require, attestors)"
    )


def test_a_missing_key_file_is_refused_naming_its_line(tmp_path):
    path = write(tmp_path, "rules:\n  - name: r\n    match: [r.example/**]\n    attestors:\n      - cosign:\n          keyFile: /nonexistent/cosign.pub\n")
    assert refused(path) == (
        f"policy {path} line 8: rule 'r': cannot read keyFile /nonexistent/cosign.pub (No such file or directory)"
    )


@pytest.mark.parametrize(
    ("body", "line", "says"),
    [
        ("default: maybe\n", 3, "default must be one of allow, deny, not 'maybe'"),
        ("rules:\n  - name: r\n    match: [r.example/**]\n    mode: enforcing\n    attestors: [{cosign: {keyFile: k}}]\n", 6, "mode must be one of enforce, audit"),
        ("rules:\n  - name: r\n    match: []\n    attestors: [{cosign: {keyFile: k}}]\n", 5, "match must not be empty"),
        ("rules:\n  - name: r\n    match: ['r.example/a b']\n    attestors: [{cosign: {keyFile: k}}]\n", 5, "is not registry/repository"),
        ("rules:\n  - name: r\n    match: [r.example/**]\n    attestors: [{notation: {}}]\n", 6, "unknown field 'notation' in rule 'r': an attestor"),
        ("rules:\n  - name: r\n    match: [r.example/**]\n    attestors: [{cosign: {keyless: {issuer: i, subject: s}}}]\n", 6, "a keyless attestor needs trustedRoot"),
        ("rules:\n  - name: r\n    match: [r.example/**]\n    attestors: [{cosign: {key: 'not a key'}}]\n", 6, "not a PEM public key"),
        ("rules:\n  - name: r\n    match: [r.example/**]\n    attestors: [{cosign: {}}]\n", 6, "needs exactly one of key, keyFile, keyless"),
        ("rules:\n  - name: r\n    match: [r.example/**]\n", 4, "a rule lacks attestors"),
        ("default: allow\ndefault: deny\n", 4, "field 'default' appears twice"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_line(tmp_path, body, line, says):
    message = refused(write(tmp_path, body))
    assert message.startswith(f"policy {tmp_path}/policy.yaml line {line}: "), message
    assert says in message, message


def test_another_api_version_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("apiVersion: v2\nkind: VerificationPolicy\n")
    assert refused(path) == f"policy {path} line 1: apiVersion must be oci-volume.csi.dev/v1alpha1"


def test_a_trusted_root_that_is_not_one_is_refused(tmp_path):
    (tmp_path / "root.json").write_text('{"mediaType": "nope"}')
    path = write(tmp_path, "rules:\n  - name: r\n    match: [r.example/**]\n    attestors:\n      - cosign:\n          keyless: {issuer: i, subject: s}\n          trustedRoot: root.json\n")
    message = refused(path)
    assert message.startswith(f"policy {path} line 9: rule 'r': trustedRoot {tmp_path}/root.json is not a sigstore trusted root")


def test_weak_keys_are_refused(tmp_path):
    pem = pem_of(rsa.generate_private_key(65537, 1024).public_key()).decode()
    path = write(tmp_path, f"rules:\n  - name: r\n    match: [r.example/**]\n    attestors:\n      - cosign:\n          key: |\n{indent(pem, 12)}")
    assert "unsupported key type" in refused(path)


def test_rule_names_are_unique(tmp_path):
    rule = "  - name: r\n    match: [r.example/**]\n    attestors: [{cosign: {keyFile: k}}]\n"
    (tmp_path / "k").write_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()).decode())
    assert "a second rule is named 'r'" in refused(write(tmp_path, "rules:\n" + rule + rule))


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("registry.example/klaus-plugins/*", "registry.example/klaus-plugins/gs-base", True),
        ("registry.example/klaus-plugins/*", "registry.example/klaus-plugins/a/b", False),
        ("registry.example/klaus-plugins/**", "registry.example/klaus-plugins/a/b", True),
        ("registry.example/klaus-plugins/**", "registry.example/klaus-plugins", True),
        ("registry.example/**/base", "registry.example/a/b/base", True),
        ("registry.example/gs-*", "registry.example/gs-base", True),
        ("registry.example/gs-*", "registry.example/other", False),
        ("Registry.Example/x", "registry.example/x", True),
        ("registry.example/x", "registry.example/X", False),
        ("**", "docker.io/library/nginx", True),
        ("127.0.0.1:5000/*", "127.0.0.1:5000/plugins", True),
    ],
)
def test_globs_match_by_path_segment(pattern, name, matches):
    assert glob_match(pattern, name) is matches


def test_the_first_matching_rule_wins(tmp_path):
    (tmp_path / "k").write_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()).decode())
    path = write(tmp_path, """\
        rules:
          - {name: special, match: [r.example/team/special], mode: audit, attestors: [{cosign: {keyFile: k}}]}
          - {name: team, match: [r.example/team/*], attestors: [{cosign: {keyFile: k}}]}
        """)
    policy = load(path)
    assert policy.rule_for("r.example", "team/special").name == "special"
    assert policy.rule_for("r.example", "team/other").name == "team"
    assert policy.rule_for("r.example", "elsewhere/x") is None


def test_the_hash_ignores_layout_and_comments_but_not_keys(tmp_path):
    key = tmp_path / "k"
    key.write_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()).decode())
    flow = write(tmp_path, "rules: [{name: r, match: [r.example/**], attestors: [{cosign: {keyFile: k}}]}]\n", "a.yaml")
    block = write(tmp_path, "# the team's rule\nrules:\n  - attestors:\n      - cosign:\n          keyFile: k\n    match:\n      - r.example/**\n    name: r\n", "b.yaml")
    before = load(flow).hash
    assert before == load(block).hash and before.startswith("sha256:")
    key.write_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()).decode())
    assert load(flow).hash != before


def test_the_reloader_rereads_a_changed_policy(tmp_path):
    path = write(tmp_path, "default: allow\n")
    reloader = PolicyReloader(path)
    assert reloader.current().default == "allow"
    write(tmp_path, "default: deny\n")
    assert reloader.current().default == "deny"


def test_a_broken_reload_keeps_the_last_good_policy_and_counts_the_error(tmp_path):
    path = write(tmp_path, "default: deny\n")
    errors: list[PolicyError] = []
    reloader = PolicyReloader(path, on_error=errors.append)
    good = reloader.current()
    write(tmp_path, "default: deny\nrules:\n  - name: r\n    match: [r.example/**]\n    attestors: [{cosign: {keyFile: k.pub}}]\n")
    assert reloader.current() is good and reloader.current() is good
    assert len(errors) == 1 and "line 7" in errors[0].message and "cannot read keyFile" in errors[0].message
    # The key file the broken policy named appears: that is a change too.
    (tmp_path / "k.pub").write_text(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()).decode())
    assert reloader.current().rules[0].name == "r"


def test_the_reloader_notices_a_configmap_style_symlink_swap(tmp_path):
    for name, default in (("v1", "allow"), ("v2", "deny")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "policy.yaml").write_text(HEADER + f"default: {default}\n")
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    reloader = PolicyReloader(tmp_path / "policy.yaml")
    assert reloader.current().default == "allow"
    os.symlink("v2", tmp_path / "..data.tmp")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")
    assert reloader.current().default == "deny"


def test_a_policy_that_fails_at_start_is_raised(tmp_path):
    with pytest.raises(PolicyError):
        PolicyReloader(write(tmp_path, "default: perhaps\n"))

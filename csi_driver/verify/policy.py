"""The verification policy file (``--policy FILE``): load, validate, match, re-read on change.

The file is YAML in the vocabulary of Kyverno's ``verifyImages`` and sigstore's policy-controller::

    apiVersion: oci-volume.csi.dev/v1alpha1
    kind: VerificationPolicy
    default: allow                  # or deny: references no rule matches
    rules:                          # the first rule that matches wins
      - name: klaus-plugins
        match: ["registry.example/klaus-plugins/**"]
        mode: enforce               # or audit: log and count a refusal, mount anyway
        require: any                # or all of the attestors
        attestors:
          - cosign: {keyFile: /etc/keys/cosign.pub}
          - cosign:
              keyless: {issuer: https://issuer.example, subject: release@example.com}
              trustedRoot: /etc/sigstore/trusted_root.json

It is read with PyYAML's composer rather than its loader, so every value keeps the line it came
from: an admin whose policy is refused is told which line to fix. Anything unknown is refused
rather than ignored (a misspelt ``requires: all`` must not silently become ``any``), and so is a
key file or trust root that is missing or does not parse: the node would otherwise refuse, or
worse accept, content for a reason nobody wrote down. Keys and trust roots are read here, once
per load, so verification never touches the file system.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sigstore._internal.trust import KeyringPurpose
from sigstore.models import TrustedRoot

API_VERSION = "oci-volume.csi.dev/v1alpha1"
KIND = "VerificationPolicy"
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048
_SEGMENT_RE = re.compile(r"[A-Za-z0-9*._:\[\]-]+")  # registry (host[:port], [v6]) or path component

log = logging.getLogger(__name__)

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class PolicyError(Exception):
    """A policy that cannot be used; the message names the file and the line to fix.

    ``files`` are the files the failed load read or looked for, so a reloader knows what to
    watch until the admin fixes it (a key file that appears later, say).
    """

    def __init__(self, message: str, files: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.files = files


@dataclass(frozen=True, eq=False)
class KeyAttestor:
    """A cosign public key; ``trusted_root``, when given, also demands transparency-log evidence
    (an entry the trust root's log signed) for every signature the key made."""

    key: PublicKey
    key_id: str  # "sha256:<hex>" of the DER SubjectPublicKeyInfo: how messages name the key
    trusted_root: TrustedRoot | None = None

    def describe(self) -> str:
        return f"cosign key {self.key_id}"


@dataclass(frozen=True, eq=False)
class KeylessAttestor:
    """A Fulcio certificate identity: the OIDC issuer and the subject (SAN), exactly or by a
    regular expression that must match all of it, chained to ``trusted_root``."""

    issuer: str
    subject: str | None
    subject_regexp: re.Pattern[str] | None
    trusted_root: TrustedRoot

    def describe(self) -> str:
        wanted = self.subject if self.subject is not None else f"~{self.subject_regexp.pattern}"
        return f"cosign keyless {wanted} from {self.issuer}"

    def accepts(self, issuer: str | None, subjects: set[str]) -> bool:
        if issuer != self.issuer:
            return False
        if self.subject is not None:
            return self.subject in subjects
        return any(self.subject_regexp.fullmatch(s) for s in subjects)


Attestor = KeyAttestor | KeylessAttestor


@dataclass(frozen=True, eq=False)
class Rule:
    name: str
    match: tuple[str, ...]
    mode: str  # "enforce" | "audit"
    require: str  # "any" | "all"
    attestors: tuple[Attestor, ...]

    def matches(self, registry: str, repository: str) -> bool:
        return any(glob_match(pattern, f"{registry}/{repository}") for pattern in self.match)


@dataclass(frozen=True, eq=False)
class Policy:
    """A loaded policy. ``hash`` changes exactly when what the policy decides may change
    (rules, keys, trust roots), not with comments or layout: verdicts are cached under it."""

    path: Path
    default: str  # "allow" | "deny"
    rules: tuple[Rule, ...]
    hash: str
    files: tuple[Path, ...] = field(default=())  # the file itself, key files, trust roots

    def rule_for(self, registry: str, repository: str) -> Rule | None:
        """The first rule, in file order, that matches ``registry/repository``."""
        return next((rule for rule in self.rules if rule.matches(registry, repository)), None)


def glob_match(pattern: str, name: str) -> bool:
    """``*`` matches within one path segment, a ``**`` segment any number of segments (none too).

    Registries are host names, so the first segment is compared case-insensitively.
    """
    pattern_parts = pattern.split("/")
    name_parts = name.split("/")
    pattern_parts[0] = pattern_parts[0].lower()
    name_parts[0] = name_parts[0].lower()
    return _match_parts(tuple(pattern_parts), tuple(name_parts))


def _match_parts(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(rest, name[i:]) for i in range(len(name) + 1))
    if not name:
        return False
    segment = re.escape(head).replace(r"\*", "[^/]*")
    return re.fullmatch(segment, name[0]) is not None and _match_parts(rest, name[1:])


def load(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy at ``path``; PolicyError names the line of any problem."""
    return _Loader(Path(path)).load()


class _Loader:
    """One load: the YAML walk, with the files it reads, for the hash and the reloader."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[Path] = [path]
        self.roots: dict[Path, tuple[TrustedRoot, str]] = {}

    def fail(self, node: yaml.Node | None, message: str) -> PolicyError:
        where = f" line {node.start_mark.line + 1}" if node is not None else ""
        return PolicyError(f"policy {self.path}{where}: {message}", tuple(self.files))

    def load(self) -> Policy:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(None, f"cannot read it ({exc})") from exc
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyError(f"policy {self.path}{where}: not valid YAML: {problem}", tuple(self.files)) from exc
        if root is None:
            raise self.fail(None, "it is empty")
        top = self.mapping(root, "the policy", {"apiVersion": True, "kind": True, "default": False, "rules": False})
        if self.string(top["apiVersion"], "apiVersion") != API_VERSION:
            raise self.fail(top["apiVersion"], f"apiVersion must be {API_VERSION}")
        if self.string(top["kind"], "kind") != KIND:
            raise self.fail(top["kind"], f"kind must be {KIND}")
        default = self.choice(top["default"], "default", ("allow", "deny")) if "default" in top else "allow"
        rules: list[Rule] = []
        described: list[dict] = []
        for node in self.sequence(top["rules"], "rules") if "rules" in top else []:
            rule, description = self.rule(node)
            if any(r.name == rule.name for r in rules):
                raise self.fail(node, f"a second rule is named {rule.name!r}; rule names must be unique")
            rules.append(rule)
            described.append(description)
        canonical = json.dumps({"default": default, "rules": described}, sort_keys=True, separators=(",", ":"))
        return Policy(
            path=self.path,
            default=default,
            rules=tuple(rules),
            hash="sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
            files=tuple(dict.fromkeys(self.files)),
        )

    def rule(self, node: yaml.Node) -> tuple[Rule, dict]:
        fields = self.mapping(
            node, "a rule", {"name": True, "match": True, "mode": False, "require": False, "attestors": True}
        )
        name = self.string(fields["name"], "name")
        where = f"rule {name!r}"
        patterns = []
        for item in self.sequence(fields["match"], f"{where}: match", nonempty=True):
            pattern = self.string(item, f"{where}: match")
            parts = pattern.split("/")
            if not all(_SEGMENT_RE.fullmatch(part) for part in parts):
                raise self.fail(
                    item,
                    f"{where}: match pattern {pattern!r} is not registry/repository with * or ** "
                    "(one, or any number of, path segments)",
                )
            patterns.append(pattern)
        mode = self.choice(fields["mode"], f"{where}: mode", ("enforce", "audit")) if "mode" in fields else "enforce"
        require = self.choice(fields["require"], f"{where}: require", ("any", "all")) if "require" in fields else "any"
        attestors = []
        described = []
        for item in self.sequence(fields["attestors"], f"{where}: attestors", nonempty=True):
            attestor, description = self.attestor(item, where)
            attestors.append(attestor)
            described.append(description)
        rule = Rule(name=name, match=tuple(patterns), mode=mode, require=require, attestors=tuple(attestors))
        return rule, {"name": name, "match": patterns, "mode": mode, "require": require, "attestors": described}

    def attestor(self, node: yaml.Node, where: str) -> tuple[Attestor, dict]:
        outer = self.mapping(node, f"{where}: an attestor", {"cosign": True})
        fields = self.mapping(
            outer["cosign"], f"{where}: cosign", {"key": False, "keyFile": False, "keyless": False, "trustedRoot": False}
        )
        given = [k for k in ("key", "keyFile", "keyless") if k in fields]
        if len(given) != 1:
            raise self.fail(outer["cosign"], f"{where}: a cosign attestor needs exactly one of key, keyFile, keyless")
        root = digest = None
        if "trustedRoot" in fields:
            root, digest = self.trusted_root(fields["trustedRoot"], where)
        if given[0] == "keyless":
            if root is None:
                raise self.fail(outer["cosign"], f"{where}: a keyless attestor needs trustedRoot (the Fulcio CA, CT and Rekor keys)")
            try:
                root.get_fulcio_certs()
                root.ct_keyring(KeyringPurpose.VERIFY)
            except Exception as exc:  # noqa: BLE001 - as in trusted_root()
                raise self.fail(fields["trustedRoot"], f"{where}: trustedRoot lacks what keyless needs ({_first_line(exc)})") from exc
            return self.keyless(fields["keyless"], where, root, digest)
        if given[0] == "key":
            pem = self.string(fields["key"], f"{where}: key").encode()
            source = fields["key"]
        else:
            key_path = self.relative(self.string(fields["keyFile"], f"{where}: keyFile"))
            self.files.append(key_path)
            try:
                pem = key_path.read_bytes()
            except OSError as exc:
                raise self.fail(fields["keyFile"], f"{where}: cannot read keyFile {key_path} ({exc.strerror})") from exc
            source = fields["keyFile"]
        key = self.public_key(pem, source, where)
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        key_id = "sha256:" + hashlib.sha256(der).hexdigest()
        return KeyAttestor(key=key, key_id=key_id, trusted_root=root), {"key": key_id, "trustedRoot": digest}

    def keyless(self, node: yaml.Node, where: str, root: TrustedRoot, digest: str) -> tuple[Attestor, dict]:
        fields = self.mapping(node, f"{where}: keyless", {"issuer": True, "subject": False, "subjectRegExp": False})
        issuer = self.string(fields["issuer"], f"{where}: keyless issuer")
        if ("subject" in fields) == ("subjectRegExp" in fields):
            raise self.fail(node, f"{where}: keyless needs exactly one of subject, subjectRegExp")
        subject = regexp = None
        if "subject" in fields:
            subject = self.string(fields["subject"], f"{where}: keyless subject")
        else:
            text = self.string(fields["subjectRegExp"], f"{where}: keyless subjectRegExp")
            try:
                regexp = re.compile(text)
            except re.error as exc:
                raise self.fail(fields["subjectRegExp"], f"{where}: subjectRegExp is not a regular expression ({exc})") from exc
        attestor = KeylessAttestor(issuer=issuer, subject=subject, subject_regexp=regexp, trusted_root=root)
        return attestor, {"issuer": issuer, "subject": subject, "subjectRegExp": regexp and regexp.pattern, "trustedRoot": digest}

    def public_key(self, pem: bytes, node: yaml.Node, where: str) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise self.fail(node, f"{where}: not a PEM public key ({exc})") from exc
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
            return key
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
            return key
        if isinstance(key, ed25519.Ed25519PublicKey):
            return key
        raise self.fail(node, f"{where}: unsupported key type (use ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more)")

    def trusted_root(self, node: yaml.Node, where: str) -> tuple[TrustedRoot, str]:
        path = self.relative(self.string(node, f"{where}: trustedRoot"))
        self.files.append(path)
        if path not in self.roots:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise self.fail(node, f"{where}: cannot read trustedRoot {path} ({exc.strerror})") from exc
            try:
                root = TrustedRoot.from_file(str(path))
                root.rekor_keyring(KeyringPurpose.VERIFY)  # parsed lazily: refuse a useless root now
            except Exception as exc:  # noqa: BLE001 - sigstore raises pydantic's, ValueError, its own Error
                raise self.fail(node, f"{where}: trustedRoot {path} is not a sigstore trusted root with a "
                                f"transparency log ({_first_line(exc)})") from exc
            self.roots[path] = (root, "sha256:" + hashlib.sha256(data).hexdigest())
        return self.roots[path]

    def relative(self, text: str) -> Path:
        """A path as written; a relative one is taken from the policy file's directory."""
        return self.path.parent / text

    def mapping(self, node: yaml.Node, what: str, known: dict[str, bool]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        fields: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in known:
                raise self.fail(key_node, f"unknown field {key!r} in {what} (known: {', '.join(known)})")
            if key in fields:
                raise self.fail(key_node, f"field {key!r} appears twice in {what}")
            fields[key] = value
        missing = [k for k, required in known.items() if required and k not in fields]
        if missing:
            raise self.fail(node, f"{what} lacks {', '.join(missing)}")
        return fields

    def sequence(self, node: yaml.Node, what: str, nonempty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        if nonempty and not node.value:
            raise self.fail(node, f"{what} must not be empty")
        return node.value

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str" or not node.value:
            raise self.fail(node, f"{what} must be a non-empty string")
        return node.value

    def choice(self, node: yaml.Node, what: str, options: tuple[str, ...]) -> str:
        value = self.string(node, what)
        if value not in options:
            raise self.fail(node, f"{what} must be one of {', '.join(options)}, not {value!r}")
        return value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


Stamp = tuple[tuple[int, int, int, int] | None, ...]


def _stamp(files: tuple[Path, ...]) -> Stamp:
    """What tells a changed file: device, inode (a ConfigMap update swaps a symlink), size, mtime."""
    stamps = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class PolicyReloader:
    """The policy in force: re-read when the file, a key file or a trust root changes.

    A policy that fails to load at start is raised (the driver refuses to start); one that fails
    on a reload is logged and counted through ``on_error``, and the last good policy stays in
    force: a typo in a ConfigMap must not turn verification off, nor stop every mount.
    The files are stat'ed on each ``current()``, which is a few system calls per publish.
    """

    def __init__(self, path: str | os.PathLike[str], on_error: Callable[[PolicyError], None] | None = None) -> None:
        self._path = Path(path)
        self._on_error = on_error
        self._lock = threading.Lock()
        self._policy = load(self._path)
        self._watched = self._policy.files
        self._stamp = _stamp(self._watched)

    def current(self) -> Policy:
        if _stamp(self._watched) == self._stamp:
            return self._policy
        with self._lock:
            stamp = _stamp(self._watched)
            if stamp != self._stamp:
                self._reload(stamp)
            return self._policy

    def _reload(self, stamp: Stamp) -> None:
        try:
            policy = load(self._path)
        except PolicyError as exc:
            # Watch what the failed load looked at too, so a key file that appears is noticed.
            self._watched = tuple(dict.fromkeys(self._policy.files + exc.files))
            self._stamp = _stamp(self._watched)
            log.error("%s; keeping the policy loaded before (%s)", exc.message, self._policy.hash)
            if self._on_error is not None:
                self._on_error(exc)
            return
        if policy.hash != self._policy.hash:
            log.info("verification policy %s reloaded: %s", self._path, policy.hash)
        self._policy = policy
        self._watched = policy.files
        self._stamp = _stamp(self._watched)

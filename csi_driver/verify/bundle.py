"""Sigstore bundles (v0.3) attached to an image: a DSSE envelope with an in-toto statement, or a
message signature over the manifest's digest.

cosign 3 signs an image so (its ``specs/BUNDLE_SPEC.md``): a referrer manifest with artifact type
``application/vnd.dev.sigstore.bundle.v0.3+json`` whose one layer is the bundle, the bundle's
DSSE payload an in-toto statement with predicate type ``https://sigstore.dev/cosign/sign/v1``
whose subject digest is the image's. Other predicates (provenance, SBOMs) are attestations
about the image, not signatures of it, and do not count, as ``cosign verify`` does not count them.

Keyless bundles go to sigstore-python's ``Verifier``, which checks all of it offline: the chain to
the trust root's Fulcio CA at the time the log vouched for, the SCT, the identity (through
``evidence.IdentityPolicy``), the inclusion proof and its signed checkpoint, the entry's
consistency with the bundle, and the signature. Keyed bundles it does not verify (its ``Bundle``
wants a certificate), so they are checked here: the signature with ``cryptography``, and, when
the attestor names a trust root, the log entry with sigstore-python's own entry check (Merkle
inclusion, checkpoint, signed entry timestamp: ``TransparencyLogEntry._verify``, not public API)
plus our comparison of the entry's body with the bundle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sigstore._internal.trust import KeyringPurpose
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, TransparencyLogEntry, TrustedRoot
from sigstore.verify import Verifier
from sigstore_models.bundle.v1 import Bundle as RawBundle
from sigstore_models.common.v1 import HashAlgorithm

from csi_driver.verify import evidence
from csi_driver.verify.evidence import Checked, Outcome
from csi_driver.verify.policy import KeyAttestor, KeylessAttestor

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_BUNDLE_TYPES = (BUNDLE_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3")
IN_TOTO = "application/vnd.in-toto+json"
_STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
FORMAT_DSSE = "sigstore-bundle-dsse"
FORMAT_MESSAGE = "sigstore-bundle-message"


@dataclass(frozen=True)
class SigstoreBundle(Checked):
    """One bundle, as found (``where``); ``problem`` says why it cannot be checked."""

    where: str
    inner: RawBundle | None = None
    problem: str = ""

    @property
    def format(self) -> str:
        return FORMAT_DSSE if self.inner is not None and self.inner.dsse_envelope is not None else FORMAT_MESSAGE

    def _check_keyless(self, attestor: KeylessAttestor, subjects: tuple[str, ...]) -> Outcome:
        if self.inner.verification_material.certificate is None:
            return Outcome.refuse(evidence.UNKNOWN_KEY, "signed with a key, not a certificate")
        identity = evidence.IdentityPolicy(attestor)
        try:
            bundle = Bundle(self.inner)
            verifier = Verifier(trusted_root=attestor.trusted_root)
            if self.inner.dsse_envelope is not None:
                payload_type, payload = verifier.verify_dsse(bundle, identity)
            else:
                digest = self._message_digest(subjects)
                hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(digest[7:]))
                verifier.verify_artifact(hashed, bundle, identity)
        except evidence.IdentityMismatch as exc:
            return Outcome.refuse(evidence.IDENTITY_MISMATCH, str(exc))
        except SigstoreError as exc:
            return Outcome.refuse(_reason(str(exc)), str(exc).splitlines()[0])
        signer = evidence.describe_identity(bundle.signing_certificate)
        if self.inner.dsse_envelope is not None:
            return _statement_outcome(payload_type, payload, subjects, signer)
        return _digest_outcome(digest, subjects, signer)

    def _check_key(self, attestor: KeyAttestor, subjects: tuple[str, ...]) -> Outcome:
        material = self.inner.verification_material
        if material.public_key is None:
            return Outcome.refuse(evidence.UNKNOWN_KEY, f"signed with a certificate, not by {attestor.key_id}")
        envelope = self.inner.dsse_envelope
        if envelope is not None:
            pae = _pae(envelope.payload_type, envelope.payload)
            signatures = [s.sig for s in envelope.signatures if evidence.key_verifies(attestor.key, s.sig, pae)]
            if not signatures:
                return Outcome.refuse(evidence.UNKNOWN_KEY)
            outcome = _statement_outcome(envelope.payload_type, envelope.payload, subjects, attestor.key_id)
            matches = _dsse_entry_matches(envelope.payload, signatures[0], evidence.spki_der(attestor.key))
        else:
            message = self.inner.message_signature
            digest = self._message_digest(subjects)
            if not evidence.key_verifies_digest(attestor.key, message.signature, bytes.fromhex(digest[7:])):
                why = "an Ed25519 key signs no digests" if isinstance(attestor.key, Ed25519PublicKey) else ""
                return Outcome.refuse(evidence.UNKNOWN_KEY, why)
            outcome = _digest_outcome(digest, subjects, attestor.key_id)
            matches = _hashedrekord_entry_matches(message.signature, digest[7:], evidence.spki_der(attestor.key))
        if not outcome.accepted or attestor.trusted_root is None:
            return outcome
        refusal = self._tlog_refusal(attestor.trusted_root, matches)
        return refusal or outcome

    def _message_digest(self, subjects: tuple[str, ...]) -> str:
        """The digest a message signature signs: the one it names, else (it is optional) ours."""
        named = self.inner.message_signature.message_digest
        if named is not None and named.algorithm == HashAlgorithm.SHA2_256:
            return "sha256:" + named.digest.hex()
        return subjects[0]

    def _tlog_refusal(self, root: TrustedRoot, matches) -> Outcome | None:
        """None if some log entry of the bundle is proven by the trust root's log (inclusion
        proof, signed checkpoint, signed entry timestamp) and records this signature."""
        entries = self.inner.verification_material.tlog_entries or []
        if not entries:
            return Outcome.refuse(evidence.NO_TLOG, "the bundle has no log entry")
        keyring = root.rekor_keyring(KeyringPurpose.VERIFY)
        problem = "no log entry of the bundle records this signature"
        for raw in entries:
            try:
                entry = TransparencyLogEntry(raw)
                entry._verify(keyring)
            except SigstoreError as exc:
                problem = str(exc).splitlines()[0]
                continue
            try:
                body = json.loads(raw.canonicalized_body)
            except (ValueError, RecursionError):
                continue
            if matches(body):
                return None
        return Outcome.refuse(evidence.NO_TLOG, problem)


def _reason(message: str) -> str:
    """sigstore-python's refusal, by what its message says failed."""
    if "log entry" in message:
        return evidence.NO_TLOG
    if message.startswith(("DSSE", "Signature is invalid", "Bundle message digest mismatch")):
        return evidence.INVALID
    return evidence.UNTRUSTED


def _statement_outcome(payload_type: str, payload: bytes, subjects: tuple[str, ...], signer: str) -> Outcome:
    """An in-toto statement accepts if it is a cosign signature whose subject is ours."""
    if payload_type != IN_TOTO:
        return Outcome.refuse(evidence.MALFORMED, f"the DSSE payload is {payload_type!r}, not an in-toto statement")
    try:
        statement = json.loads(payload)
        digests = {
            "sha256:" + s["digest"]["sha256"] for s in statement["subject"] if isinstance(s["digest"].get("sha256"), str)
        }
        kind, predicate = statement["_type"], statement["predicateType"]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return Outcome.refuse(evidence.MALFORMED, "the DSSE payload is not an in-toto statement")
    if kind not in _STATEMENT_TYPES:
        return Outcome.refuse(evidence.MALFORMED, f"the statement type is {kind!r}")
    if predicate != SIGN_PREDICATE:
        return Outcome.refuse(evidence.MALFORMED, f"an attestation of {predicate}, not a cosign signature")
    if not digests & set(subjects):
        return Outcome.refuse(evidence.OTHER_DIGEST, f"it signs {', '.join(sorted(digests)) or 'nothing'}")
    return Outcome.accept(signer)


def _digest_outcome(digest: str, subjects: tuple[str, ...], signer: str) -> Outcome:
    """A message signature accepts if the digest it signs is ours."""
    if digest not in subjects:
        return Outcome.refuse(evidence.OTHER_DIGEST, f"it signs {digest}")
    return Outcome.accept(signer)


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the envelope's signatures sign."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _dsse_entry_matches(payload: bytes, signature: bytes, verifier_der: bytes):
    """A test that a ``dsse`` 0.0.1 entry body records this payload signed so by this key."""

    def matches(body: dict) -> bool:
        try:
            if (body["kind"], body["apiVersion"]) != ("dsse", "0.0.1"):
                return False
            spec = body["spec"]
            if spec["payloadHash"] != {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}:
                return False
            logged = [
                (base64.b64decode(s["signature"], validate=True), base64.b64decode(s["verifier"], validate=True))
                for s in spec["signatures"]
            ]
        except (TypeError, KeyError, ValueError, binascii.Error):
            return False
        return any(sig == signature and evidence.pem_der(pem) == verifier_der for sig, pem in logged)

    return matches


def _hashedrekord_entry_matches(signature: bytes, sha256: str, verifier_der: bytes):
    return lambda body: evidence.hashedrekord_matches(body, signature, sha256, verifier_der)


def parse(data: bytes, where: str) -> SigstoreBundle:
    """The bundle in a referrer's layer; one that does not parse is kept, to be reported."""
    try:
        inner = RawBundle.from_json(data)
    except (ValidationError, ValueError) as exc:
        return SigstoreBundle(where, problem=f"not a sigstore bundle ({str(exc).splitlines()[0]})")
    if inner.media_type not in _BUNDLE_TYPES:
        return SigstoreBundle(where, problem=f"bundle media type {inner.media_type!r} is not v0.3")
    if (inner.dsse_envelope is None) == (inner.message_signature is None):
        return SigstoreBundle(where, problem="the bundle holds neither a DSSE envelope nor a message signature")
    return SigstoreBundle(where, inner=inner)

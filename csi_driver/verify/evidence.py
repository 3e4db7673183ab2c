"""The checks both signature formats share: a signature by a public key, a Fulcio certificate
(its chain, SCT and identity), a transparency-log entry; and what a check concludes.

sigstore-python verifies whole keyless bundles (``bundle.py`` hands them to its ``Verifier``),
but neither keyed signatures nor cosign's legacy format: those are checked here with
``cryptography``, reusing two pieces of sigstore-python that are not its public API, the SCT
check (``sigstore._internal.sct``) and the trust root's key rings
(``sigstore._internal.trust``), rather than writing RFC 6962's structures a second time. The
version range in pyproject.toml pins the sigstore releases they were read from.

Everything is offline: the certificate chain ends at the trust root's CA, the SCT is checked
against its CT keys and the log entry against its Rekor keys, with the time the log vouched for;
nothing asks Fulcio or Rekor.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError
from sigstore._internal.sct import verify_sct
from sigstore._internal.trust import KeyringPurpose
from sigstore._utils import KeyID
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError as SigstoreVerificationError
from sigstore.models import TrustedRoot

from csi_driver.verify.policy import Attestor, KeyAttestor, KeylessAttestor, PublicKey

# Fulcio's certificate extensions (its docs/oid-info.md): the OIDC issuer, raw and as DER.
OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")

# What a check found, worst news first when several signatures each tell something: a signer
# the policy trusts signing another digest says more than an unknown key does.
OTHER_DIGEST = "signature over another digest"
IDENTITY_MISMATCH = "identity mismatch"
NO_TLOG = "no valid transparency-log entry"
UNTRUSTED = "certificate not trusted"
INVALID = "invalid signature"
UNKNOWN_KEY = "signed by an unknown key"
MALFORMED = "malformed signature"
REASONS = (OTHER_DIGEST, IDENTITY_MISMATCH, NO_TLOG, UNTRUSTED, INVALID, UNKNOWN_KEY, MALFORMED)


@dataclass(frozen=True)
class Outcome:
    """One signature checked against one attestor: accepted (``signer`` says who signed) or
    refused for ``reason`` (one of REASONS), ``detail`` saying more (never a secret)."""

    accepted: bool
    reason: str = ""
    detail: str = ""
    signer: str = ""

    @classmethod
    def accept(cls, signer: str) -> Outcome:
        return cls(accepted=True, signer=signer)

    @classmethod
    def refuse(cls, reason: str, detail: str = "") -> Outcome:
        return cls(accepted=False, reason=reason, detail=detail)

    def describe(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


class Checked:
    """What both formats share: a signature checked against an attestor of either kind; one
    that could not be read (``problem``) refuses whatever the attestor."""

    problem: str

    def check(self, attestor: Attestor, subjects: tuple[str, ...]) -> Outcome:
        if self.problem:
            return Outcome.refuse(MALFORMED, self.problem)
        if isinstance(attestor, KeyAttestor):
            return self._check_key(attestor, subjects)
        return self._check_keyless(attestor, subjects)

    def _check_key(self, attestor: KeyAttestor, subjects: tuple[str, ...]) -> Outcome:
        raise NotImplementedError

    def _check_keyless(self, attestor: KeylessAttestor, subjects: tuple[str, ...]) -> Outcome:
        raise NotImplementedError


def key_verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` over ``data`` is ``key``'s, in a scheme cosign signs with.

    ECDSA with the curve's hash or SHA-256 (cosign signs P-384 keys with SHA-256 by default,
    sigstore bundles with the curve's hash), RSA PKCS#1 v1.5 or PSS with SHA-256, Ed25519.
    """
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey):
            return any(_ecdsa(key, signature, data, h) for h in _ec_hashes(key))
        if isinstance(key, rsa.RSAPublicKey):
            return _rsa(key, signature, data, hashes.SHA256())
    except InvalidSignature:
        return False
    return False


def key_verifies_digest(key: PublicKey, signature: bytes, digest: bytes) -> bool:
    """True if ``signature`` is ``key``'s over the SHA-256 ``digest`` (a message signature).

    Ed25519 signs messages, never digests, so it cannot be checked without the message.
    """
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            return _rsa(key, signature, digest, prehashed)
    except InvalidSignature:
        return False
    return False


def _ec_hashes(key: ec.EllipticCurvePublicKey) -> list[hashes.HashAlgorithm]:
    own = {256: hashes.SHA256(), 384: hashes.SHA384()}.get(key.curve.key_size, hashes.SHA256())
    return [own] if isinstance(own, hashes.SHA256) else [own, hashes.SHA256()]


def _ecdsa(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(algorithm))
        return True
    except InvalidSignature:
        return False


def _rsa(key: rsa.RSAPublicKey, signature: bytes, data: bytes, algorithm) -> bool:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    for scheme in (padding.PKCS1v15(), pss):
        try:
            key.verify(signature, data, scheme, algorithm)
            return True
        except InvalidSignature:
            continue
    return False


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def identity(cert: x509.Certificate) -> tuple[str | None, set[str]]:
    """The OIDC issuer and the identities (SANs: e-mail, URI, Fulcio's other name) Fulcio put
    in ``cert``; the issuer from the DER extension, else the older raw one. Extensions that do
    not parse name nobody (cryptography parses them on first use, raising ValueError)."""
    try:
        cert.extensions  # noqa: B018 - parsed here, once, rather than where the caller least expects
    except ValueError:
        return None, set()
    issuer = None
    for oid in (OIDC_ISSUER_V2, OIDC_ISSUER_V1):
        try:
            value = cert.extensions.get_extension_for_oid(oid).value.value
        except x509.ExtensionNotFound:
            continue
        try:
            issuer = asn1.decode_der(str, value) if oid == OIDC_ISSUER_V2 else value.decode()
        except (ValueError, UnicodeDecodeError):
            continue
        break
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return issuer, set()
    names = set(san.get_values_for_type(x509.RFC822Name)) | set(san.get_values_for_type(x509.UniformResourceIdentifier))
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == ObjectIdentifier("1.3.6.1.4.1.57264.1.7"):
            try:
                names.add(asn1.decode_der(str, other.value))
            except ValueError:
                continue
    return issuer, names


def describe_identity(cert: x509.Certificate) -> str:
    issuer, names = identity(cert)
    return f"{', '.join(sorted(names)) or '(no identity)'} from {issuer or '(no issuer)'}"


class IdentityMismatch(SigstoreVerificationError):
    """Raised by IdentityPolicy, so a caller tells a wrong signer from a broken signature."""


class IdentityPolicy:
    """A keyless attestor as a sigstore-python ``VerificationPolicy``: its ``Identity`` compares
    subjects exactly and reads only the older issuer extension; a policy may name a regular
    expression, and Fulcio writes the issuer in both."""

    def __init__(self, attestor: KeylessAttestor) -> None:
        self.attestor = attestor

    def verify(self, cert: x509.Certificate) -> None:
        issuer, names = identity(cert)
        if not self.attestor.accepts(issuer, names):
            raise IdentityMismatch(f"signed by {describe_identity(cert)}")


def check_certificate(
    cert: x509.Certificate, attestor: KeylessAttestor, signed_at: dt.datetime
) -> Outcome | None:
    """The refusal a Fulcio certificate earns, or None: the chain to the trust root's CA at the
    time the log vouched for, its validity then, its SCT, code signing, and the identity."""
    root = attestor.trusted_root
    # Fulcio certificates carry code signing, not the client-auth EKU a client verifier wants:
    # allow any EKU here, and demand code signing below (as sigstore-python does).
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None)
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None)
    try:
        verifier = (
            PolicyBuilder()
            .store(Store(root.get_fulcio_certs()))
            .time(signed_at)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        chain = verifier.verify(cert, []).chain[1:]
    except (VerificationError, x509.UnsupportedGeneralNameType, SigstoreError) as exc:
        return Outcome.refuse(UNTRUSTED, f"no chain to the trusted root's CA at {signed_at:%Y-%m-%dT%H:%M:%SZ}: {exc}")
    try:
        verify_sct(cert, chain, root.ct_keyring(KeyringPurpose.VERIFY))
    except SigstoreError as exc:
        return Outcome.refuse(UNTRUSTED, f"its SCT does not verify with the trusted root's CT keys: {exc}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = []
    if ExtendedKeyUsageOID.CODE_SIGNING not in usage:
        return Outcome.refuse(UNTRUSTED, "the certificate is not for code signing")
    try:
        IdentityPolicy(attestor).verify(cert)
    except IdentityMismatch as exc:
        return Outcome.refuse(IDENTITY_MISMATCH, str(exc))
    return None


def verify_entry_timestamp(rekor_bundle: object, root: TrustedRoot) -> tuple[dict, dt.datetime]:
    """Check cosign's legacy Rekor ``bundle`` annotation: the log's signed entry timestamp (SET)
    over the entry. Answers the entry's body and the time the log integrated it; raises
    ValueError saying what is wrong."""
    try:
        payload = rekor_bundle["Payload"]
        signature = base64.b64decode(rekor_bundle["SignedEntryTimestamp"], validate=True)
        body_b64, integrated = payload["body"], payload["integratedTime"]
        log_id, index = payload["logID"], payload["logIndex"]
        if not (isinstance(body_b64, str) and isinstance(integrated, int) and isinstance(index, int)):
            raise TypeError
        key_id = bytes.fromhex(log_id)
        body = json.loads(base64.b64decode(body_b64, validate=True))
    except (TypeError, KeyError, ValueError, binascii.Error, RecursionError) as exc:
        raise ValueError("the Rekor bundle is malformed") from exc
    canonical = rfc8785.dumps({"body": body_b64, "integratedTime": integrated, "logID": log_id, "logIndex": index})
    try:
        root.rekor_keyring(KeyringPurpose.VERIFY).verify(key_id=KeyID(key_id), signature=signature, data=canonical)
    except SigstoreError as exc:
        raise ValueError("its signed entry timestamp does not verify with the trusted root's Rekor keys") from exc
    return body, dt.datetime.fromtimestamp(integrated, dt.timezone.utc)


def hashedrekord_matches(body: dict, signature: bytes, sha256: str, verifier_der: bytes) -> bool:
    """True if a ``hashedrekord`` 0.0.1 entry records this very signature over the content with
    SHA-256 ``sha256`` (hex) by this key or certificate (DER): a log entry for something else
    proves nothing about it."""
    try:
        if (body["kind"], body["apiVersion"]) != ("hashedrekord", "0.0.1"):
            return False
        spec = body["spec"]
        digest = spec["data"]["hash"]
        logged_signature = base64.b64decode(spec["signature"]["content"], validate=True)
        logged_verifier = base64.b64decode(spec["signature"]["publicKey"]["content"], validate=True)
    except (TypeError, KeyError, ValueError, binascii.Error):
        return False
    return (
        digest == {"algorithm": "sha256", "value": sha256}
        and logged_signature == signature
        and pem_der(logged_verifier) == verifier_der
    )


def pem_der(pem: bytes) -> bytes | None:
    """The DER of a PEM public key or certificate (however it is wrapped), or None."""
    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        pass
    try:
        return spki_der(serialization.load_pem_public_key(pem))
    except (ValueError, TypeError):
        return None

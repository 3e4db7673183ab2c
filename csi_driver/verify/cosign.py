"""cosign's legacy signature format: simple signing payloads on a ``sha256-<hex>.sig`` manifest.

As cosign's ``specs/SIGNATURE_SPEC.md`` lays it out, each layer of the signature manifest is one
signature: the blob is the payload (media type ``application/vnd.dev.cosign.simplesigning.v1+json``),
whose ``critical.image.docker-manifest-digest`` names the digest signed, and the layer's
annotations carry the base64 signature over the payload's bytes
(``dev.cosignproject.cosign/signature``), and for keyless signing the Fulcio certificate
(``dev.sigstore.cosign/certificate``) and Rekor's offline proof of the log entry
(``dev.sigstore.cosign/bundle``: the signed entry timestamp over the entry). The chain
annotation is not used: the policy's trust root says which CAs count, not the signature.

sigstore-python knows nothing of this format, so the checks are ours (``evidence.py``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sigstore.models import TrustedRoot

from csi_driver.verify import evidence
from csi_driver.verify.evidence import Checked, Outcome
from csi_driver.verify.policy import KeyAttestor, KeylessAttestor

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
SIGNATURE_TYPE = "cosign container image signature"
FORMAT = "cosign-simplesigning"


@dataclass(frozen=True)
class SimpleSigning(Checked):
    """One legacy signature, as found (``where``); ``problem`` says why it cannot be checked."""

    where: str
    payload: bytes = b""
    signature: bytes = b""
    certificate: x509.Certificate | None = None
    rekor_bundle: object = None
    problem: str = ""
    format: str = FORMAT

    def signed_digest(self) -> str | None:
        try:
            doc = json.loads(self.payload)
            critical = doc["critical"]
            if critical["type"] != SIGNATURE_TYPE:
                return None
            digest = critical["image"]["docker-manifest-digest"]
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        return digest if isinstance(digest, str) else None

    def _check_key(self, attestor: KeyAttestor, subjects: tuple[str, ...]) -> Outcome:
        if not evidence.key_verifies(attestor.key, self.signature, self.payload):
            return Outcome.refuse(evidence.UNKNOWN_KEY)
        refusal = self._digest_refusal(subjects)
        if refusal is not None:
            return refusal
        if attestor.trusted_root is not None:
            logged = self._logged_at(attestor.trusted_root, evidence.spki_der(attestor.key))
            if isinstance(logged, Outcome):
                return logged
        return Outcome.accept(attestor.key_id)

    def _check_keyless(self, attestor: KeylessAttestor, subjects: tuple[str, ...]) -> Outcome:
        if self.certificate is None:
            return Outcome.refuse(evidence.UNKNOWN_KEY, "signed with a key, not a certificate")
        logged = self._logged_at(attestor.trusted_root, self.certificate.public_bytes(serialization.Encoding.DER))
        if isinstance(logged, Outcome):
            return logged
        refusal = evidence.check_certificate(self.certificate, attestor, logged)
        if refusal is not None:
            return refusal
        if not evidence.key_verifies(self.certificate.public_key(), self.signature, self.payload):
            return Outcome.refuse(evidence.INVALID, "the signature does not verify with its certificate's key")
        refusal = self._digest_refusal(subjects)
        if refusal is not None:
            return refusal
        return Outcome.accept(evidence.describe_identity(self.certificate))

    def _digest_refusal(self, subjects: tuple[str, ...]) -> Outcome | None:
        digest = self.signed_digest()
        if digest is None:
            return Outcome.refuse(evidence.MALFORMED, f"the payload is not a {SIGNATURE_TYPE}")
        if digest not in subjects:
            return Outcome.refuse(evidence.OTHER_DIGEST, f"it signs {digest}")
        return None

    def _logged_at(self, root: TrustedRoot, verifier_der: bytes) -> dt.datetime | Outcome:
        """When the trust root's log integrated this signature by this key or certificate (DER),
        by the Rekor bundle's signed entry timestamp; else the refusal."""
        if self.rekor_bundle is None:
            return Outcome.refuse(evidence.NO_TLOG, "the signature carries no Rekor bundle")
        try:
            body, integrated = evidence.verify_entry_timestamp(self.rekor_bundle, root)
        except ValueError as exc:
            return Outcome.refuse(evidence.NO_TLOG, str(exc))
        sha256 = hashlib.sha256(self.payload).hexdigest()
        if not evidence.hashedrekord_matches(body, self.signature, sha256, verifier_der):
            return Outcome.refuse(evidence.NO_TLOG, "the log entry records another signature")
        return integrated


def parse(layer: dict, payload: bytes, where: str) -> SimpleSigning:
    """The signature one simple-signing layer (its descriptor and blob) carries."""
    annotations = layer.get("annotations")
    if not isinstance(annotations, dict) or not isinstance(annotations.get(SIGNATURE_ANNOTATION), str):
        return SimpleSigning(where, problem=f"the layer has no {SIGNATURE_ANNOTATION} annotation")
    try:
        signature = base64.b64decode(annotations[SIGNATURE_ANNOTATION], validate=True)
    except (ValueError, binascii.Error):
        return SimpleSigning(where, problem="the signature annotation is not base64")
    certificate = None
    if isinstance(annotations.get(CERTIFICATE_ANNOTATION), str) and annotations[CERTIFICATE_ANNOTATION]:
        try:
            certificate = x509.load_pem_x509_certificate(annotations[CERTIFICATE_ANNOTATION].encode())
        except ValueError:
            return SimpleSigning(where, problem="the certificate annotation is not a PEM certificate")
    rekor_bundle = None
    if isinstance(annotations.get(BUNDLE_ANNOTATION), str):
        try:
            rekor_bundle = json.loads(annotations[BUNDLE_ANNOTATION])
        except (ValueError, RecursionError):
            return SimpleSigning(where, problem="the Rekor bundle annotation is not JSON")
    return SimpleSigning(where, payload=payload, signature=signature, certificate=certificate, rekor_bundle=rekor_bundle)

"""A private sigstore made by the tests: a Fulcio-like CA, a CT log, a Rekor-like log.

Nothing here talks to a network. The CA issues short-lived code-signing certificates with the
OIDC issuer and identity where Fulcio puts them (the issuer extensions ``1.3.6.1.4.1.57264.1.1``
and ``.1.8``, the identity as the SAN) and an embedded precertificate SCT signed by the CT log's
key, as RFC 6962 lays it out; the log keeps a real RFC 6962 Merkle tree, so every entry comes
with an inclusion proof, a signed checkpoint (a signed note, as Rekor writes them) and a signed
entry timestamp. ``write_trusted_root`` writes the three keys as the ``trusted_root.json``
sigstore-python loads.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import rekor_types
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
TRUSTED_ROOT_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_of(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_utf8(text: str) -> bytes:
    data = text.encode()
    return b"\x0c" + _der_length(len(data)) + data


def _der_octets(data: bytes) -> bytes:
    return b"\x04" + _der_length(len(data)) + data


def _leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (RFC 6962 section 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return _leaf_hash(leaves[0])
    k = _split(len(leaves))
    return _node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962's PATH(m, D[n]), lowest level first."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_path(index, leaves[:k]) + [merkle_root(leaves[k:])]
    return inclusion_path(index - k, leaves[k:]) + [merkle_root(leaves[:k])]


@dataclass
class Log:
    """A transparency log: ``ECDSA P-256`` key, leaves, and what a bundle needs of an entry."""

    origin: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    leaves: list[bytes] = field(default_factory=lambda: [b"genesis", b"someone else's entry"])

    @property
    def log_id(self) -> bytes:
        return hashlib.sha256(spki(self.key.public_key())).digest()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def checkpoint(self, size: int, root: bytes) -> str:
        note = f"{self.origin}\n{size}\n{_b64(root)}\n"
        signature = self.log_id[:4] + self.sign(note.encode())
        return f"{note}\n\u2014 {self.origin.split()[0]} {_b64(signature)}\n"  # the signer name: one word

    def append(self, body: bytes, integrated_time: int) -> dict:
        """Log ``body`` (a Rekor entry body) and answer the bundle's ``tlogEntries`` item."""
        self.leaves.append(body)
        index = len(self.leaves) - 1
        size = len(self.leaves)
        root = merkle_root(self.leaves)
        kind = json.loads(body)
        promise = rfc8785.dumps(
            {"body": _b64(body), "integratedTime": integrated_time, "logID": self.log_id.hex(), "logIndex": index}
        )
        return {
            "logIndex": str(index),
            "logId": {"keyId": _b64(self.log_id)},
            "kindVersion": {"kind": kind["kind"], "version": kind["apiVersion"]},
            "integratedTime": str(integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": _b64(self.sign(promise))},
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": _b64(root),
                "treeSize": str(size),
                "hashes": [_b64(h) for h in inclusion_path(index, self.leaves)],
                "checkpoint": {"envelope": self.checkpoint(size, root)},
            },
            "canonicalizedBody": _b64(body),
        }

    def instance(self, base_url: str) -> dict:
        return {
            "baseUrl": base_url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(spki(self.key.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            },
            "logId": {"keyId": _b64(self.log_id)},
        }


def hashedrekord_body(signature: bytes, verifier_pem: bytes, digest: bytes) -> bytes:
    """A ``hashedrekord`` 0.0.1 entry: the signature over a SHA-256 digest, and the key or cert."""
    entry = rekor_types.Hashedrekord(
        spec=rekor_types.hashedrekord.HashedrekordV001Schema(
            signature=rekor_types.hashedrekord.Signature(
                content=_b64(signature),
                public_key=rekor_types.hashedrekord.PublicKey(content=_b64(verifier_pem)),
            ),
            data=rekor_types.hashedrekord.Data(
                hash=rekor_types.hashedrekord.Hash(algorithm="sha256", value=digest.hex())
            ),
        )
    )
    return entry.model_dump_json(by_alias=True, exclude_none=True).encode()


def dsse_body(envelope: dict, verifier_pem: bytes) -> bytes:
    """A ``dsse`` 0.0.1 entry, as Rekor v1 canonicalizes a DSSE envelope's upload."""
    payload = base64.b64decode(envelope["payload"])
    body = {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {
                "algorithm": "sha256",
                "value": hashlib.sha256(json.dumps(envelope, sort_keys=True).encode()).hexdigest(),
            },
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [
                {"signature": s["sig"], "verifier": _b64(verifier_pem)} for s in envelope["signatures"]
            ],
        },
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class FakeSigstore:
    """The CA, the CT log and the transparency log of one private sigstore deployment."""

    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    ct: Log = field(default_factory=lambda: Log("ct.test"))
    rekor: Log = field(default_factory=lambda: Log("rekor.test - 1234"))
    ca_cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "fulcio.test")])
        now = dt.datetime.now(dt.timezone.utc)
        public = self.ca_key.public_key()
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.ca_key, hashes.SHA384())
        )

    def issue(
        self,
        key: ec.EllipticCurvePrivateKey,
        identity: str,
        issuer: str,
        *,
        lifetime: dt.timedelta = dt.timedelta(minutes=10),
    ) -> x509.Certificate:
        """A Fulcio-style certificate for ``key``: ``identity`` as the SAN (URI or e-mail),
        ``issuer`` in both issuer extensions, and an embedded SCT from the CT log."""
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        san = x509.RFC822Name(identity) if "@" in identity and "://" not in identity else x509.UniformResourceIdentifier(identity)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=30))
            .not_valid_after(now + lifetime)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False)
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V2, _der_utf8(issuer)), critical=False)
        )
        # The SCT signs the TBSCertificate without the SCT list (RFC 6962 3.2): make that first.
        precert = builder.sign(self.ca_key, hashes.SHA384())
        sct = self._sct(precert.tbs_certificate_bytes, int(now.timestamp() * 1000))
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        cert = builder.add_extension(x509.UnrecognizedExtension(SCT_LIST, _der_octets(sct_list)), critical=False).sign(
            self.ca_key, hashes.SHA384()
        )
        assert cert.tbs_precertificate_bytes == precert.tbs_certificate_bytes
        return cert

    def _sct(self, tbs: bytes, timestamp_ms: int) -> bytes:
        issuer_key_hash = hashlib.sha256(spki(self.ca_key.public_key())).digest()
        signed = (
            struct.pack("!BBQH", 0, 0, timestamp_ms, 1)  # v1, certificate_timestamp, time, precert_entry
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", 0)  # no extensions
        )
        signature = self.ct.sign(signed)
        return (
            struct.pack("!B", 0)
            + self.ct.log_id
            + struct.pack("!Q", timestamp_ms)
            + struct.pack("!H", 0)
            + struct.pack("!BBH", 4, 3, len(signature))  # sha256, ecdsa
            + signature
        )

    def trusted_root(self) -> dict:
        return {
            "mediaType": TRUSTED_ROOT_TYPE,
            "tlogs": [self.rekor.instance("https://rekor.test")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "test", "commonName": "fulcio.test"},
                    "uri": "https://fulcio.test",
                    "certChain": {"certificates": [{"rawBytes": _b64(self.ca_cert.public_bytes(serialization.Encoding.DER))}]},
                    "validFor": {"start": "2020-01-01T00:00:00Z"},
                }
            ],
            "ctlogs": [self.ct.instance("https://ct.test")],
            "timestampAuthorities": [],
        }

    def write_trusted_root(self, path: Path) -> Path:
        path.write_text(json.dumps(self.trusted_root(), indent=2))
        return path

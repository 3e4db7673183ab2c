"""The shared checks, on certificates and signatures made here (no registry needed)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID
from signing import ISSUER, SUBJECT, sign
from sigstore_fakes import OIDC_ISSUER_V1, FakeSigstore

from csi_driver.verify import evidence


def _cert(ca: FakeSigstore, *extensions: x509.ExtensionType) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(minutes=5))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca.ca_key, hashes.SHA384())


def test_identity_reads_the_issuer_and_the_san_fulcio_writes():
    ca = FakeSigstore()
    cert = ca.issue(ec.generate_private_key(ec.SECP256R1()), SUBJECT, ISSUER)
    assert evidence.identity(cert) == (ISSUER, {SUBJECT})
    assert evidence.describe_identity(cert) == f"{SUBJECT} from {ISSUER}"


def test_identity_falls_back_to_the_older_issuer_extension():
    cert = _cert(FakeSigstore(), x509.UnrecognizedExtension(OIDC_ISSUER_V1, ISSUER.encode()),
                 x509.SubjectAlternativeName([x509.RFC822Name("release@example.com")]))  # fmt: skip
    assert evidence.identity(cert) == (ISSUER, {"release@example.com"})


def test_a_certificate_whose_extensions_do_not_parse_names_nobody():
    junk = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03junk")
    assert evidence.identity(_cert(FakeSigstore(), junk)) == (None, set())


def test_key_verifies_each_scheme_cosign_signs_with():
    data = b"payload"
    for key in (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(65537, 2048),
    ):
        assert evidence.key_verifies(key.public_key(), sign(key, data), data), key
        assert not evidence.key_verifies(key.public_key(), sign(key, data), b"other"), key
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert evidence.key_verifies(p384.public_key(), p384.sign(data, ec.ECDSA(hashes.SHA384())), data)
    pss = rsa.generate_private_key(65537, 2048)
    signature = pss.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    assert evidence.key_verifies(pss.public_key(), signature, data)

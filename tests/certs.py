"""Certificates for tests, made with the ``openssl`` command line (Debian's ``openssl`` package).

A test CA signs server and client certificates for loopback addresses, the way a company CA
signs its registry's; a self-signed certificate signs registry tokens. The CLI is used rather
than a Python crypto library so the tests need nothing the node would not have.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "2"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is missing: apt-get install openssl (scripts/setup.sh installs it)")
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> KeyPair:
    """A self-signed CA (also used as the token signing certificate: its key signs RS256)."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", _DAYS, "-subj", f"/CN={name}",
        "-keyout", pair.key, "-out", pair.cert,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return pair


def issue(ca: KeyPair, directory: Path, name: str, *, client: bool = False) -> KeyPair:
    """A certificate signed by ``ca``: for a server on 127.0.0.1/127.0.0.2/localhost, or a client."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.cert", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    if client:
        extensions.write_text("extendedKeyUsage=clientAuth\n")
    else:
        extensions.write_text(
            "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", pair.key, "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-days", _DAYS, "-extfile", extensions, "-out", pair.cert,
    )  # fmt: skip
    return pair


def sign_rs256(key: Path, data: bytes) -> bytes:
    """An RSASSA-PKCS1-v1_5 SHA-256 signature (JWS ``RS256``) of ``data``."""
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key)], input=data, check=True, capture_output=True
    ).stdout


def der(cert: Path) -> bytes:
    """A PEM certificate in DER, as a JWS ``x5c`` entry carries it (base64)."""
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True
    ).stdout

"""Signatures made by the tests in cosign's exact formats, pushed to a real registry.

- ``sign_legacy``: cosign's ``sha256-<hex>.sig`` manifest (``specs/SIGNATURE_SPEC.md``): one
  simple-signing layer per signature, appended as ``cosign sign`` appends, the signature, and
  for keyless the certificate, chain and Rekor bundle, in the layer's annotations;
- ``attach_bundle``: a sigstore bundle as cosign 3 attaches it (``specs/BUNDLE_SPEC.md``): a
  referrer manifest (``artifactType`` the bundle type, ``subject`` the image), and, since the
  registry has no referrers API, the ``sha256-<hex>`` referrers tag index listing it;
- policies naming such signers (``make_policy``: one rule over ``<registry>/verify/**``);
- the bundles themselves (``dsse_bundle``, ``message_bundle``) as sigstore's protobuf-specs
  serialise them to JSON: keyed (``publicKey`` hint) or keyless (``certificate``), with a log
  entry from ``sigstore_fakes.Log`` when a log is given.

Uploads go through the plain registry API (``fixtures_tools``): no client here writes these shapes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from fixtures_tools import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, put_manifest, upload_blob
from sigstore_fakes import Log, dsse_body, hashedrekord_body, pem_of

from csi_driver.verify import policy as policy_module

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
ISSUER = "https://token.actions.githubusercontent.com"
SUBJECT = "https://github.com/acme/plugins/.github/workflows/release.yml@refs/heads/main"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sign(key, data: bytes) -> bytes:
    """What cosign signs with: SHA-256 with ECDSA (whatever the curve) or RSA PKCS#1 v1.5; Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """The payload ``cosign sign`` writes (``cosign container image signature``)."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


def _manifest_or_none(registry: str, repo: str, tag: str) -> dict | None:
    response = requests.get(
        f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}, timeout=30
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def sign_legacy(
    registry: str,
    repo: str,
    digest: str,
    key,
    *,
    signs: str | None = None,
    certificate: x509.Certificate | None = None,
    log: Log | None = None,
    tamper: bool = False,
) -> str:
    """Add a legacy signature of ``digest`` by ``key`` to its ``.sig`` tag; answer the tag.

    ``signs`` puts another digest in the payload (a valid signature over another image);
    ``certificate`` makes it keyless (the cert goes in the annotations); ``log`` records it in
    that log and adds the Rekor bundle; ``tamper`` alters the payload after signing.
    """
    payload = simple_signing_payload(signs or digest, f"{registry}/{repo}")
    signature = sign(key, payload)
    if tamper:
        payload = payload.replace(b'"optional":null', b'"optional":{"x":1}')
    annotations = {"dev.cosignproject.cosign/signature": _b64(signature)}
    if certificate is not None:
        annotations["dev.sigstore.cosign/certificate"] = certificate.public_bytes(serialization.Encoding.PEM).decode()
        annotations["dev.sigstore.cosign/chain"] = ""
    if log is not None:
        verifier = certificate.public_bytes(serialization.Encoding.PEM) if certificate else pem_of(key.public_key())
        entry = log.append(hashedrekord_body(signature, verifier, hashlib.sha256(payload).digest()), int(time.time()))
        annotations["dev.sigstore.cosign/bundle"] = json.dumps(
            {
                "SignedEntryTimestamp": entry["inclusionPromise"]["signedEntryTimestamp"],
                "Payload": {
                    "body": entry["canonicalizedBody"],
                    "integratedTime": int(entry["integratedTime"]),
                    "logIndex": int(entry["logIndex"]),
                    "logID": base64.b64decode(entry["logId"]["keyId"]).hex(),
                },
            }
        )
    layer = upload_blob(registry, repo, payload, SIMPLE_SIGNING, annotations=annotations)
    tag = f"sha256-{digest.removeprefix('sha256:')}.sig"
    existing = _manifest_or_none(registry, repo, tag)
    layers = (existing["layers"] if existing else []) + [layer]
    config = upload_blob(registry, repo, json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode(),
                         "application/vnd.oci.image.config.v1+json")  # fmt: skip
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    put_manifest(registry, repo, tag, doc, OCI_MANIFEST)
    return tag


def attach_bundle(registry: str, repo: str, digest: str, subject_media_type: str, bundle: dict) -> str:
    """Attach ``bundle`` to ``digest`` as cosign 3 does on a registry without referrers API;
    answer the referrer manifest's digest."""
    data = json.dumps(bundle).encode()
    title = f"sha256-{hashlib.sha256(data).hexdigest()}.sigstore.json"
    layer = upload_blob(registry, repo, data, BUNDLE_TYPE, annotations={"org.opencontainers.image.title": title})
    config = upload_blob(registry, repo, b"{}", OCI_EMPTY)
    content = "dsse-envelope" if "dsseEnvelope" in bundle else "message-signature"
    annotations = {"dev.sigstore.bundle.content": content}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_TYPE,
        "config": config,
        "layers": [layer],
        "subject": {"mediaType": subject_media_type, "digest": digest, "size": manifest_size(registry, repo, digest)},
        "annotations": annotations,
    }
    body = json.dumps(doc).encode()
    referrer = "sha256:" + hashlib.sha256(body).hexdigest()
    put_manifest(registry, repo, referrer, doc, OCI_MANIFEST)
    tag = f"sha256-{digest.removeprefix('sha256:')}"
    index = _manifest_or_none(registry, repo, tag) or {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"].append(
        {"mediaType": OCI_MANIFEST, "digest": referrer, "size": len(body), "artifactType": BUNDLE_TYPE, "annotations": annotations}
    )
    put_manifest(registry, repo, tag, index, OCI_INDEX)
    return referrer


def manifest_size(registry: str, repo: str, digest: str) -> int:
    response = requests.head(
        f"http://{registry}/v2/{repo}/manifests/{digest}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}, timeout=30
    )
    response.raise_for_status()
    return int(response.headers["Content-Length"])


def statement(digest: str, predicate_type: str = SIGN_PREDICATE) -> bytes:
    """The in-toto statement cosign 3 signs for an image."""
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "", "digest": {"sha256": digest.removeprefix("sha256:")}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    ).encode()


def _material(key, certificate: x509.Certificate | None) -> tuple[dict, bytes]:
    """The bundle's verification material (no log entries yet) and the PEM a log records."""
    if certificate is not None:
        der = certificate.public_bytes(serialization.Encoding.DER)
        return {"certificate": {"rawBytes": _b64(der)}}, certificate.public_bytes(serialization.Encoding.PEM)
    return {"publicKey": {"hint": "test-key"}}, pem_of(key.public_key())


def dsse_bundle(
    key, digest: str, *, certificate: x509.Certificate | None = None, log: Log | None = None,
    predicate_type: str = SIGN_PREDICATE, tamper: bool = False,
) -> dict:  # fmt: skip
    """A v0.3 bundle: a DSSE envelope over the image's in-toto statement."""
    payload = statement(digest, predicate_type)
    pae = b"DSSEv1 %d %s %d %s" % (len(IN_TOTO), IN_TOTO.encode(), len(payload), payload)
    signature = sign(key, pae)
    envelope = {"payload": _b64(payload), "payloadType": IN_TOTO, "signatures": [{"sig": _b64(signature)}]}
    material, verifier = _material(key, certificate)
    material["tlogEntries"] = [log.append(dsse_body(envelope, verifier), int(time.time()))] if log else []
    if tamper:
        envelope["payload"] = _b64(statement(digest, predicate_type).replace(b'"predicate": {}', b'"predicate": {"x": 1}'))
    return {"mediaType": BUNDLE_TYPE, "verificationMaterial": material, "dsseEnvelope": envelope}


def message_bundle(key, digest: str, *, certificate: x509.Certificate | None = None, log: Log | None = None) -> dict:
    """A v0.3 bundle: a message signature over the manifest (prehashed: its digest)."""
    raw = bytes.fromhex(digest.removeprefix("sha256:"))
    signature = key.sign(raw, ec.ECDSA(Prehashed(hashes.SHA256())))
    material, verifier = _material(key, certificate)
    material["tlogEntries"] = [log.append(hashedrekord_body(signature, verifier, raw), int(time.time()))] if log else []
    return {
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": material,
        "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": _b64(raw)}, "signature": _b64(signature)},
    }


# -- policies naming such signers ------------------------------------------------------------


def key_attestor(key, trusted_root: Path | None = None) -> dict:
    cosign = {"key": pem_of(key.public_key()).decode()}
    if trusted_root is not None:
        cosign["trustedRoot"] = str(trusted_root)
    return {"cosign": cosign}


def keyless_attestor(trusted_root: Path, subject: str = SUBJECT, issuer: str = ISSUER, regexp: bool = False) -> dict:
    identity = {"issuer": issuer, ("subjectRegExp" if regexp else "subject"): subject}
    return {"cosign": {"keyless": identity, "trustedRoot": str(trusted_root)}}


def make_policy(tmp_path: Path, registry: str, *attestors: dict, mode="enforce", require="any", default="allow"):
    doc = {
        "apiVersion": policy_module.API_VERSION,
        "kind": policy_module.KIND,
        "default": default,
        "rules": [
            {"name": "plugins", "match": [f"{registry}/verify/**"], "mode": mode, "require": require, "attestors": list(attestors)}
        ],
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return policy_module.load(path)

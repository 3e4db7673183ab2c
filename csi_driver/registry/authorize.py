"""Per-pod authorization of private content already on the node (KEP-2535's concern).

Content pulled with credentials is not handed to another pod just because it is
cached: that pod's own credentials must be accepted by the registry for the
repository it names. The proof is one GET of the manifest by digest (small, and it
also proves the repository still holds it), made with the pod's credentials.
Registry clients never retry a 401/403, so a refusal answers within seconds.

Results are cached briefly per (credential hash, registry, repository): a
Deployment's twenty replicas cost one request, and a revoked credential stops
working within ``ttl`` seconds. Refusals are cached for a shorter time so a pod
whose Secret was fixed is not kept waiting.
"""

from __future__ import annotations

import hashlib
import threading
import time

from csi_driver import errors
from csi_driver.reference import Reference
from csi_driver.registry.client import RegistryClient
from csi_driver.registry.credentials import Credentials


def credential_hash(credentials: Credentials | None) -> str:
    """A stable key for credentials that never holds them (the cache is in memory only)."""
    if credentials is None:
        return "anonymous"
    user, password = credentials
    return hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()


class AccessChecks:
    def __init__(self, ttl: float = 60.0, refusal_ttl: float = 5.0) -> None:
        self.ttl = ttl
        self.refusal_ttl = refusal_ttl
        self._results: dict[tuple[str, str, str], tuple[float, errors.PermissionDenied | None]] = {}
        self._lock = threading.Lock()

    def verify(self, client: RegistryClient, credentials: Credentials | None, ref: Reference, digest: str) -> None:
        """Return if the registry lets these credentials pull ``digest`` from ``ref``'s repository."""
        key = (credential_hash(credentials), ref.registry, ref.repository)
        now = time.monotonic()
        with self._lock:
            expires, refusal = self._results.get(key, (0.0, None))
        if expires > now:
            if refusal is not None:
                raise refusal
            return
        try:
            client.fetch_manifest(ref, digest)
        except errors.PermissionDenied as exc:
            with self._lock:
                self._results[key] = (now + self.refusal_ttl, exc)
            raise
        with self._lock:
            self._results[key] = (now + self.ttl, None)

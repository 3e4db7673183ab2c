"""The node's verification policy as a publish meets it: the policy in force, and one
verification of a digest, counted, timed and, under ``mode: audit``, logged.

``serve`` and ``describe`` make one ``Gate`` when ``--policy`` is given, and only then import
this package (sigstore and pydantic take about a second to load). The pull (``content/pull.py``)
asks it for a verdict only when the store holds none for the digest, repository and policy, so
what is counted and logged here is a verification actually made, once per digest and policy:
an audited refusal is logged once, not on every publish of the digest.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from csi_driver import metrics
from csi_driver.reference import Reference
from csi_driver.registry.client import RegistryClient
from csi_driver.verify import verdict as verdicts
from csi_driver.verify.policy import Policy, PolicyError, PolicyReloader
from csi_driver.verify.verdict import Verdict

log = logging.getLogger("oci-volume-csi")


def _count_reload_error(_: PolicyError) -> None:
    metrics.POLICY_RELOAD_ERRORS.inc()


class Gate:
    """The policy file in force (re-read when it changes) and the verifications made under it.

    Raises ``PolicyError`` when the file cannot be used at start: the driver must not start
    without the policy its admin wrote.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._reloader = PolicyReloader(path, on_error=_count_reload_error)

    def current(self) -> Policy:
        """The policy in force now: a reload, if a file changed, happens here."""
        return self._reloader.current()

    def verify(self, policy: Policy, client: RegistryClient, ref: Reference, subjects: Sequence[str]) -> Verdict:
        """``policy``'s verdict on ``subjects`` (the resolved digest, then the platform manifest
        an index selects), their signatures looked up with ``client``: the pod's."""
        start = time.monotonic()
        verdict = verdicts.verify(policy, client, ref, subjects)
        metrics.VERIFY_SECONDS.observe(time.monotonic() - start)
        metrics.VERIFICATIONS.labels(verdict.rule or "(none)", verdict.result, verdict.format or "none").inc()
        if verdict.allowed and verdict.message:
            log.warning("%s; mounted anyway: the rule's mode is audit", verdict.message)
        return verdict

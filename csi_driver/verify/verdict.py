"""The verdict: may this digest be mounted under this policy, and why (not).

A rule's attestors combine as sigstore-python's ``AnyOf`` and ``AllOf`` policies do: with
``require: any`` one attestor accepting one signature is enough; with ``all`` each attestor must
accept some signature (one signature cannot satisfy two keys, but two signatures can). Each
signature is checked against each attestor still unsatisfied; signatures arrive lazily from
the registry, and the search stops as soon as the rule is satisfied.

A refusal says what was found, in the words an admin reads in a pod event: no signature, signed
by an unknown key, an identity mismatch, a signature over another digest, ... When signatures
tell different stories, the most telling comes first (a trusted signer's signature over another
digest says more than a stranger's key). ``mode: audit`` gives the same verdict and message but
mounts anyway; the caller logs it and counts it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from csi_driver.reference import Reference
from csi_driver.registry.client import RegistryClient
from csi_driver.verify import evidence, lookup
from csi_driver.verify.evidence import Outcome
from csi_driver.verify.lookup import Signature
from csi_driver.verify.policy import Policy, Rule

PREFIX = "verification policy: "


@dataclass(frozen=True)
class Verdict:
    """What the policy decided for ``digest``.

    ``allowed``: the volume may mount; ``satisfied``: the rule's attestors accepted (or no rule
    matched and the default allows). An audit rule gives ``allowed`` without ``satisfied``, and
    a ``message`` to log. ``rule`` is None when no rule matched. ``attestor``, ``signer`` and
    ``format`` name what accepted it (joined with ``, `` under ``require: all``).
    """

    digest: str
    allowed: bool
    satisfied: bool
    rule: str | None
    mode: str | None
    attestor: str = ""
    signer: str = ""
    format: str = ""
    message: str = ""

    @property
    def result(self) -> str:
        """A label for metrics: verified, refused, audited (refused, mounted anyway), or the
        default's allow or deny."""
        if self.rule is None:
            return "default-allow" if self.allowed else "default-deny"
        if self.satisfied:
            return "verified"
        return "audited" if self.allowed else "refused"


def verify(policy: Policy, client: RegistryClient, ref: Reference, subjects: Sequence[str]) -> Verdict:
    """The verdict for ``subjects`` (the resolved digest first, then the platform manifest an
    index selects, if any), their signatures looked up through ``client`` (the pod's)."""
    found = itertools.chain.from_iterable(lookup.signatures(client, ref, subject) for subject in subjects)
    return decide(policy, ref, subjects, found)


def decide(policy: Policy, ref: Reference, subjects: Sequence[str], signatures: Iterable[Signature]) -> Verdict:
    """The verdict given the signatures found (consumed only as far as needed)."""
    subjects = tuple(subjects)
    rule = policy.rule_for(ref.registry, ref.repository)
    if rule is None:
        if policy.default == "allow":
            return Verdict(digest=subjects[0], allowed=True, satisfied=True, rule=None, mode=None)
        return Verdict(
            digest=subjects[0],
            allowed=False,
            satisfied=False,
            rule=None,
            mode=None,
            message=(
                f"{PREFIX}no rule matches {ref.registry}/{ref.repository} and the default is deny: "
                f"{_named(ref, subjects)} refused; add a rule for it to the node's policy"
            ),
        )
    best: dict[int, Outcome] = {}
    accepted_by: dict[int, Signature] = {}
    count = 0
    for signature in signatures:
        count += 1
        for i, attestor in enumerate(rule.attestors):
            if i in accepted_by:
                continue
            outcome = signature.check(attestor, subjects)
            if outcome.accepted:
                best[i], accepted_by[i] = outcome, signature
            elif i not in best or _rank(outcome) < _rank(best[i]):
                best[i] = outcome
        if _satisfied(rule, accepted_by):
            return _accepted(rule, subjects, best, accepted_by)
    return _refused(rule, ref, subjects, best, count)


def _satisfied(rule: Rule, accepted_by: dict[int, Signature]) -> bool:
    if rule.require == "any":
        return bool(accepted_by)
    return len(accepted_by) == len(rule.attestors)


def _accepted(rule: Rule, subjects: tuple[str, ...], best: dict[int, Outcome], accepted_by: dict[int, Signature]) -> Verdict:
    chosen = sorted(accepted_by)
    return Verdict(
        digest=subjects[0],
        allowed=True,
        satisfied=True,
        rule=rule.name,
        mode=rule.mode,
        attestor=", ".join(rule.attestors[i].describe() for i in chosen),
        signer=", ".join(best[i].signer for i in chosen),
        format=", ".join(dict.fromkeys(accepted_by[i].format for i in chosen)),
    )


def _refused(rule: Rule, ref: Reference, subjects: tuple[str, ...], best: dict[int, Outcome], count: int) -> Verdict:
    if count == 0:
        found = "no signature found (looked up: referrers, the sha256-<hex> referrers tag, cosign's sha256-<hex>.sig tag)"
    elif rule.require == "all" and len(rule.attestors) > 1:
        missing = [
            f"{attestor.describe()}: {best[i].describe()}"
            for i, attestor in enumerate(rule.attestors)
            if not best[i].accepted
        ]
        found = f"{_signatures(count)} found, but all attestors are required and these accepted none: {'; '.join(missing)}"
    else:
        reasons = dict.fromkeys(o.describe() for o in sorted(best.values(), key=_rank))
        found = f"{_signatures(count)} found, none accepted: {'; '.join(reasons)}"
    return Verdict(
        digest=subjects[0],
        allowed=rule.mode == "audit",
        satisfied=False,
        rule=rule.name,
        mode=rule.mode,
        message=f"{PREFIX}rule {rule.name!r} refused {_named(ref, subjects)}: {found}",
    )


def _rank(outcome: Outcome) -> int:
    return evidence.REASONS.index(outcome.reason) if outcome.reason in evidence.REASONS else len(evidence.REASONS)


def _signatures(count: int) -> str:
    return "1 signature" if count == 1 else f"{count} signatures"


def _named(ref: Reference, subjects: tuple[str, ...]) -> str:
    named = f"{ref.registry}/{ref.repository}@{subjects[0]}"
    if len(subjects) > 1:
        named += f" (and its platform manifest {', '.join(subjects[1:])})"
    return named

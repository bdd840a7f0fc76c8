"""The pipeline: enrich an observation, classify its payload, ask the policy, return a Decision.

One :class:`Inspector` serves both sensors. It receives its adapters (a GeoIP
resolver, the service catalog, the policy) and does no I/O of its own, so a
test can drive it with fakes built on :mod:`egresswatch.ports`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from egresswatch.model import (
    Assessment,
    Decision,
    Finding,
    GeoAnswer,
    GeoSource,
    MatchKind,
    Observation,
    PayloadType,
    ServiceMatch,
    Verdict,
    new_id,
)
from egresswatch.ports import GeoResolver, PolicyLike, ServiceLookup

_NO_ADDRESS = GeoAnswer(country=None, source=GeoSource.NONE)
#: Distinct (Host, SNI, DNS name) triples whose normalisation and catalog matches are
#: remembered; a flow's names repeat on every request of a connection and across clients.
_NAMES_CACHE_SIZE = 8192

#: (host, catalog match) per distinct name, the name-derived flags, the category hint.
_Names = tuple[tuple[tuple[str | None, ServiceMatch | None], ...], tuple[str, ...], str | None]


class Classified(Protocol):
    """What a classifier returns (the shape of ``egresswatch.classify.Classification``)."""

    @property
    def payload_types(self) -> tuple[PayloadType, ...]: ...

    @property
    def findings(self) -> tuple[Finding, ...]: ...

    @property
    def flags(self) -> tuple[str, ...]: ...


Classifier = Callable[[Observation, str | None], Classified]
Normalizer = Callable[[str], str | None]


def _default_classifier() -> Classifier:
    from egresswatch.classify import classify

    return classify


def _default_normalizer() -> Normalizer:
    from egresswatch.catalog import normalize_host

    return normalize_host


class Inspector:
    """Judges observations. Thread-safe as long as its adapters are (they are read-only).

    The catalog's and the normaliser's answers for a flow's names are remembered (bounded),
    so both must be pure: the same name always gets the same answer.
    """

    def __init__(
        self,
        geo: GeoResolver,
        catalog: ServiceLookup,
        policy: PolicyLike,
        *,
        classifier: Classifier | None = None,
        normalizer: Normalizer | None = None,
    ) -> None:
        self.geo = geo
        self.catalog = catalog
        self.policy = policy
        self._classify = classifier or _default_classifier()
        self._normalize = normalizer or _default_normalizer()
        # The normaliser and the catalog are pure (the shipped Catalog is immutable), so what
        # a set of names says is worked out once, not on every request (issue #2).
        self._names: dict[tuple[str | None, str | None, str | None], _Names] = {}

    def with_policy(self, policy: PolicyLike) -> Inspector:
        """The same inspector under another policy (used on reload: SIGHUP)."""
        other = Inspector(
            self.geo,
            self.catalog,
            policy,
            classifier=self._classify,
            normalizer=self._normalize,
        )
        other._names = self._names  # same catalog and normaliser: what names say still holds
        return other

    def inspect(self, obs: Observation) -> Decision:
        """Enrich, classify and judge one observation."""
        started = time.perf_counter()
        geo = self.geo.lookup(obs.dst_addr) if obs.dst_addr else _NO_ADDRESS
        key = (obs.http_host, obs.sni, obs.dns_name)
        names = self._names.get(key)
        if names is None:
            names = self._names_uncached(obs)
            if len(self._names) >= _NAMES_CACHE_SIZE:
                self._names.clear()  # rare (a scan of many names): start over, stay bounded
            self._names[key] = names
        candidates, base_flags, category = names

        classified = self._classify(obs, category)
        extra = classified.flags
        if obs.ech or obs.tags or extra:
            flags = list(base_flags)
            if obs.ech:
                flags.append("ech")
            for tag in obs.tags:  # what the sensor knows of the flow (dot, doh, doq ...)
                if tag not in flags:
                    flags.append(tag)
            for flag in extra:
                if flag not in flags:
                    flags.append(flag)
            flag_tuple = tuple(flags)
        else:
            flag_tuple = base_flags
        payload_types = tuple(classified.payload_types)
        findings = tuple(classified.findings)

        decide = self.policy.decide
        if len(candidates) == 1:  # the common case: one name (or none), one verdict
            host, match = candidates[0]
            assessment = Assessment(obs, host, geo, match, payload_types, findings, flag_tuple)
            verdict = decide(assessment)
        else:
            best: tuple[Assessment, Verdict] | None = None
            for host, match in candidates:
                candidate = Assessment(obs, host, geo, match, payload_types, findings, flag_tuple)
                judged = decide(candidate)
                if best is None or judged.action.severity > best[1].action.severity:
                    best = (candidate, judged)
            assert best is not None
            assessment, verdict = best
        return Decision(assessment, verdict, new_id(), time.perf_counter() - started)

    def _names_uncached(self, obs: Observation) -> _Names:
        """What the flow's names say, independent of its payload: computed once per name set."""
        # Every name the flow goes by (Host, SNI, DNS) is judged: a flow whose names point
        # at different services (domain fronting) gets the stricter verdict and a flag.
        hosts: list[str] = []
        for raw in obs.names:
            host = self._normalize(raw)
            if host and host not in hosts:
                hosts.append(host)
        matches: list[ServiceMatch | None] = [self.catalog.match(h) for h in hosts]

        flags: list[str] = []
        if any(m is not None and m.kind is MatchKind.LOOKALIKE for m in matches):
            flags.append("lookalike")
        if len({_service_key(m) for m in matches}) > 1:
            flags.append("name-mismatch")

        primary = matches[0] if matches else None
        category = primary.service.category if primary is not None and primary.official else None
        candidates: tuple[tuple[str | None, ServiceMatch | None], ...] = tuple(
            zip(hosts, matches, strict=True)
        ) or ((None, None),)
        return candidates, tuple(flags), category


def _service_key(match: ServiceMatch | None) -> str | None:
    if match is None:
        return None
    return f"{match.kind}:{match.service.id}"

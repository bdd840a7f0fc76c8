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
)
from egresswatch.ports import GeoResolver, PolicyLike, ServiceLookup

_NO_ADDRESS = GeoAnswer(country=None, source=GeoSource.NONE)


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
    """Judges observations. Thread-safe as long as its adapters are (they are read-only)."""

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

    def with_policy(self, policy: PolicyLike) -> Inspector:
        """The same inspector under another policy (used on reload: SIGHUP)."""
        return Inspector(
            self.geo,
            self.catalog,
            policy,
            classifier=self._classify,
            normalizer=self._normalize,
        )

    def inspect(self, obs: Observation) -> Decision:
        """Enrich, classify and judge one observation."""
        started = time.perf_counter()
        geo = self.geo.lookup(obs.dst_addr) if obs.dst_addr else _NO_ADDRESS

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
        if obs.ech:
            flags.append("ech")
        for tag in obs.tags:
            if tag not in flags:
                flags.append(tag)

        primary = matches[0] if matches else None
        category = primary.service.category if primary is not None and primary.official else None
        classified = self._classify(obs, category)
        for flag in classified.flags:
            if flag not in flags:
                flags.append(flag)

        candidates: list[tuple[str | None, ServiceMatch | None]] = list(
            zip(hosts, matches, strict=True)
        ) or [(None, None)]
        best: tuple[Assessment, Verdict] | None = None
        for host, match in candidates:
            assessment = Assessment(
                observation=obs,
                host=host,
                geo=geo,
                service=match,
                payload_types=tuple(classified.payload_types),
                findings=tuple(classified.findings),
                flags=tuple(flags),
            )
            verdict = self.policy.decide(assessment)
            if best is None or verdict.action.severity > best[1].action.severity:
                best = (assessment, verdict)
        assert best is not None
        return Decision(
            assessment=best[0],
            verdict=best[1],
            elapsed=time.perf_counter() - started,
        )


def _service_key(match: ServiceMatch | None) -> str | None:
    if match is None:
        return None
    return f"{match.kind}:{match.service.id}"

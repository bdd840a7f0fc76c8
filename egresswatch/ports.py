"""Interfaces between the core and its adapters.

The inspector receives objects that satisfy these protocols; it never builds
them. Tests use fakes built on the same protocols.
"""

from __future__ import annotations

from typing import Protocol

from egresswatch.model import (
    Assessment,
    Decision,
    FlowClosed,
    GeoAnswer,
    Mode,
    ServiceMatch,
    Verdict,
)


class GeoResolver(Protocol):
    """Address -> country/ASN. Implementations cache and never raise on a bad address."""

    def lookup(self, addr: str) -> GeoAnswer: ...


class ServiceLookup(Protocol):
    """Host name -> catalogued service (official or lookalike), or None."""

    def match(self, host: str) -> ServiceMatch | None: ...


class PolicyLike(Protocol):
    """Assessment -> Verdict. Pure; first matching rule wins."""

    @property
    def mode(self) -> Mode: ...

    def decide(self, assessment: Assessment) -> Verdict: ...


class Sink(Protocol):
    """Takes decisions off a sensor's hands. Must never block the caller on I/O."""

    def record(self, decision: Decision) -> None: ...

    def flow_closed(self, event: FlowClosed) -> None: ...

    def close(self) -> None: ...


class FanOut:
    """Hands each event to several sinks; one failing sink does not starve the others."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = tuple(sinks)  # fixed: the bound methods below are taken from it
        self.errors = 0
        # bound once: record() runs for every request a proxy passes
        self._records = tuple(sink.record for sink in self.sinks)
        self._closes = tuple(sink.flow_closed for sink in self.sinks)

    def record(self, decision: Decision) -> None:
        for record in self._records:
            try:
                record(decision)
            except Exception:  # a sink bug must never take traffic down
                self.errors += 1

    def flow_closed(self, event: FlowClosed) -> None:
        for closed in self._closes:
            try:
                closed(event)
            except Exception:
                self.errors += 1

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                self.errors += 1

"""BypassWatch: a sniffer flow the proxy never handled becomes a bypass, nothing else does."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from egresswatch.bypass import BypassWatch, bypass_decision
from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    FlowClosed,
    GeoAnswer,
    GeoSource,
    Mode,
    Observation,
    PayloadType,
    Protocol,
    Sensor,
    Transport,
    Verdict,
)


@dataclass
class Recorder:
    decisions: list[Decision] = field(default_factory=list)
    closed: list[FlowClosed] = field(default_factory=list)
    closes: int = 0

    def record(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def flow_closed(self, event: FlowClosed) -> None:
        self.closed.append(event)

    def close(self) -> None:
        self.closes += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decision(
    sensor: Sensor,
    *,
    client: str = "10.77.1.2",
    cport: int = 40000,
    dst: str = "203.0.113.10",
    dport: int = 443,
    transport: Transport = Transport.UDP,
    local: bool = False,
    sni: str | None = "chat.deepseek.com",
) -> Decision:
    obs = Observation(
        sensor=sensor,
        transport=transport,
        protocol=Protocol.QUIC if transport is Transport.UDP else Protocol.TLS,
        dst_addr=dst,
        dst_port=dport,
        client_addr=client,
        client_port=cport,
        sni=sni,
    )
    geo = GeoAnswer(None, GeoSource.LOCAL) if local else GeoAnswer("CN", GeoSource.MAXMIND)
    a = Assessment(obs, sni, geo, None, (PayloadType.TLS_OPAQUE,), ())
    return Decision(a, Verdict(Action.ALLOW, "default", "ok", Mode.MONITOR))


@pytest.fixture
def watch() -> tuple[BypassWatch, Recorder, list[Decision], Clock]:
    inner, found, clock = Recorder(), [], Clock()
    return BypassWatch(inner, found.append, grace=5.0, clock=clock, tick=None), inner, found, clock


def test_sniffer_flow_without_proxy_is_a_bypass_after_the_grace(watch) -> None:  # type: ignore[no-untyped-def]
    w, inner, found, clock = watch
    d = decision(Sensor.SNIFFER)
    w.record(d)
    assert inner.decisions == [d]  # forwarded at once
    assert w.sweep() == 0 and found == []  # still within the grace
    clock.now += 5.1
    assert w.sweep() == 1
    [b] = found
    assert b.verdict.rule == "bypass" and b.verdict.action is Action.ALERT
    assert "bypass" in b.assessment.flags
    assert "10.77.1.2" in b.verdict.reason and "chat.deepseek.com" in b.verdict.reason
    assert "203.0.113.10:443/udp" in b.verdict.reason
    assert w.sweep() == 0  # reported once


@pytest.mark.parametrize("proxy_first", [True, False])
def test_connection_the_proxy_handled_is_not_a_bypass(watch, proxy_first: bool) -> None:  # type: ignore[no-untyped-def]
    w, inner, found, clock = watch
    sniffed = decision(Sensor.SNIFFER, transport=Transport.TCP)
    # a dual-stack proxy listener reports the IPv4 client as IPv4-mapped IPv6
    proxied = decision(Sensor.PROXY, client="::ffff:10.77.1.2", transport=Transport.TCP)
    for d in (proxied, sniffed) if proxy_first else (sniffed, proxied):
        w.record(d)
    clock.now += 60
    assert w.sweep() == 0 and found == []
    assert len(inner.decisions) == 2


def test_other_port_of_the_same_client_is_still_a_bypass(watch) -> None:  # type: ignore[no-untyped-def]
    w, _, found, clock = watch
    w.record(decision(Sensor.PROXY, transport=Transport.TCP))
    w.record(decision(Sensor.SNIFFER, transport=Transport.TCP, cport=40001))
    clock.now += 6
    assert w.sweep() == 1 and len(found) == 1


def test_local_destinations_are_not_egress(watch) -> None:  # type: ignore[no-untyped-def]
    w, _, found, clock = watch
    w.record(decision(Sensor.SNIFFER, dst="10.77.1.1", dport=53, local=True))
    clock.now += 60
    assert w.sweep() == 0 and found == []


def test_close_decides_what_is_held_and_closes_the_sinks(watch) -> None:  # type: ignore[no-untyped-def]
    w, inner, found, _ = watch
    w.record(decision(Sensor.SNIFFER))
    w.flow_closed(FlowClosed("f", Sensor.SNIFFER, 0.0, 10, 0, 0.1))
    w.close()
    assert len(found) == 1 and inner.closes == 1 and len(inner.closed) == 1


def test_tables_are_bounded_and_evictions_counted() -> None:
    inner, found, clock = Recorder(), [], Clock()
    w = BypassWatch(inner, found.append, grace=5.0, clock=clock, tick=None, capacity=10)
    for port in range(25):
        w.record(decision(Sensor.SNIFFER, cport=port))
    assert w.evicted == 15
    clock.now += 6
    assert w.sweep() == 10


def test_bypass_decision_names_the_service_when_known() -> None:
    from egresswatch.model import MatchKind, Service, ServiceMatch

    d = decision(Sensor.SNIFFER)
    svc = Service("deepseek-chat", "DeepSeek chat", "Hangzhou DeepSeek", "CN", "chat-app",
                  ("deepseek.com",))
    a = d.assessment
    from dataclasses import replace

    d = Decision(replace(a, service=ServiceMatch(svc, MatchKind.OFFICIAL, "chat.deepseek.com",
                                                 "deepseek.com")), d.verdict)
    b = bypass_decision(d)
    assert "DeepSeek chat" in b.verdict.reason and "operator country CN" in b.verdict.reason
    assert b.id != d.id


def test_bypass_counter_on_a_real_registry() -> None:
    from prometheus_client import CollectorRegistry

    from egresswatch.metrics import Metrics

    registry = CollectorRegistry()
    m = Metrics(registry, sensor_name="gw1")
    m.bypass(bypass_decision(decision(Sensor.SNIFFER)))
    labels = {"sensor": "gw1", "source": "sniffer", "service": "other", "country": "CN"}
    assert registry.get_sample_value("egresswatch_bypass_flows_total", labels) == 1.0

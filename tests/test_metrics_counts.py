"""The per-decision counters, kept in plain dicts, against prometheus_client's own.

``Metrics`` counts decisions, flows, payloads, blocks, alerts, findings, bytes and
latency itself (egresswatch/metrics.py, ``_DecisionCounts``). This feeds the same
decisions and closes to a reference built from prometheus_client ``Counter`` and
``Histogram`` objects and compares every exposed sample: names, label sets,
values, histogram buckets, and that each series has its ``_created`` sample.
"""

from __future__ import annotations

import random
import threading

from helpers.storedata import make_decision
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from egresswatch.metrics import FLOW_LABELS, LATENCY_BUCKETS, OTHER_SERVICE, Metrics
from egresswatch.model import UNKNOWN_COUNTRY, Action, Decision, FlowClosed, Sensor

KNOWN = ["openai", "deepseek"]


def _reference(decisions: list[Decision], closes: list[FlowClosed], sensor: str) -> str:
    """The same counts with prometheus_client's classes, labelled the way Metrics labels."""
    reg = CollectorRegistry()

    def counter(name: str, extra: tuple[str, ...] = ()) -> Counter:
        return Counter(name, "x", (*FLOW_LABELS, *extra), registry=reg)

    decisions_c = counter("egresswatch_decisions_total", ("verdict",))
    flows_c = counter("egresswatch_flows_total")
    payloads_c = counter("egresswatch_payloads_total", ("payload_type", "verdict"))
    blocked_c = counter("egresswatch_blocked_total", ("verdict",))
    alerts_c = counter("egresswatch_alerts_total", ("verdict",))
    findings_c = counter("egresswatch_findings_total", ("kind",))
    sent_c = counter("egresswatch_sent_bytes_total")
    received_c = counter("egresswatch_received_bytes_total")
    latency = Histogram(
        "egresswatch_decision_duration_seconds",
        "x",
        ("sensor", "source"),
        buckets=LATENCY_BUCKETS,
        registry=reg,
    )
    first: dict[str, tuple[str, ...]] = {}
    for d in decisions:
        m = d.assessment.service
        service = m.service.id if m is not None and m.official and m.service.id in KNOWN else None
        country = (d.assessment.geo.country or "").upper()
        labels = (
            sensor,
            str(d.observation.sensor),
            service or OTHER_SERVICE,
            country if len(country) == 2 and country.isalpha() else UNKNOWN_COUNTRY,
        )
        verdict = d.verdict.label
        if d.observation.flow_id not in first:
            first[d.observation.flow_id] = labels
            flows_c.labels(*labels).inc()
        decisions_c.labels(*labels, verdict).inc()
        for p in d.assessment.payload_types:
            payloads_c.labels(*labels, str(p), verdict).inc()
        for f in d.assessment.findings:
            findings_c.labels(*labels, str(f.kind)).inc()
        if d.verdict.action is Action.BLOCK:
            blocked_c.labels(*labels, verdict).inc()
        if d.verdict.action is not Action.ALLOW:
            alerts_c.labels(*labels, verdict).inc()
        latency.labels(sensor, labels[1]).observe(max(0.0, d.elapsed))
    for c in closes:
        labels = first.pop(c.flow_id, (sensor, str(c.sensor), OTHER_SERVICE, UNKNOWN_COUNTRY))
        if c.bytes_out > 0:
            sent_c.labels(*labels).inc(c.bytes_out)
        if c.bytes_in > 0:
            received_c.labels(*labels).inc(c.bytes_in)
    return generate_latest(reg).decode()


def _samples(text: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], set]:  # type: ignore[type-arg]
    """(sample -> value without _created, the series that have a _created sample)."""
    values = {}
    created = set()
    for family in text_string_to_metric_families(text):
        if family.name in ("egresswatch_build_info",) or "bypass" in family.name:
            continue
        if family.name.startswith("egresswatch_alert_notifications"):
            continue
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if s.name.endswith("_created"):
                created.add((s.name[: -len("_created")], key[1]))
            else:
                values[key] = s.value
    return values, created


def _workload(n: int) -> tuple[list[Decision], list[FlowClosed]]:
    rng = random.Random(7)
    decisions = []
    for i in range(n):
        # a few flows judged twice (request headers, then body), some findings
        flow = f"flow{i // 2 if i % 5 == 0 else i}"
        decisions.append(make_decision(i, now=1e9, rng=rng, flow_id=flow, findings=i % 3))
    closes = [
        FlowClosed(
            flow_id=d.observation.flow_id,
            sensor=Sensor.PROXY,
            time=1e9,
            bytes_out=rng.randrange(0, 5000),
            bytes_in=rng.randrange(0, 50_000),
            duration=0.1,
            status="200",
        )
        for d in decisions[::3]
    ]
    # a close for a flow the metrics never saw: counted as other/ZZ
    closes.append(
        FlowClosed(
            flow_id="unknown-flow",
            sensor=Sensor.SNIFFER,
            time=1e9,
            bytes_out=17,
            bytes_in=0,
            duration=0.0,
            status="fin",
        )
    )
    return decisions, closes


def test_counts_equal_prometheus_client_counters_and_histogram() -> None:
    decisions, closes = _workload(400)
    reg = CollectorRegistry()
    m = Metrics(reg, sensor_name="lab", known_services=KNOWN)
    for d in decisions:
        m.record(d)
    for c in closes:
        m.flow_closed(c)
    ours, ours_created = _samples(generate_latest(reg).decode())
    want, want_created = _samples(_reference(decisions, closes, "lab"))
    assert ours == want
    assert ours_created == want_created
    # the workload reaches every metric, so the comparison covers them all
    names = {name for name, _ in ours}
    for metric in (
        "decisions",
        "flows",
        "payloads",
        "blocked",
        "alerts",
        "findings",
        "sent_bytes",
        "received_bytes",
    ):
        assert f"egresswatch_{metric}_total" in names, metric
    assert "egresswatch_decision_duration_seconds_bucket" in names


def test_counts_from_several_threads_lose_nothing() -> None:
    decisions, _ = _workload(200)
    reg = CollectorRegistry()
    m = Metrics(reg, sensor_name="lab", known_services=KNOWN)

    def feed() -> None:
        for d in decisions:
            m.record(d)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    total = reg.get_sample_value
    decided = sum(
        s.value
        for fam in reg.collect()
        if fam.name == "egresswatch_decisions"
        for s in fam.samples
        if s.name == "egresswatch_decisions_total"
    )
    assert decided == 4 * len(decisions)
    assert total(
        "egresswatch_decision_duration_seconds_count", {"sensor": "lab", "source": "proxy"}
    ) == (4 * len(decisions))


def test_registry_refuses_a_second_metrics_on_the_same_names() -> None:
    reg = CollectorRegistry()
    Metrics(reg, sensor_name="a")
    try:
        Metrics(reg, sensor_name="b")
    except ValueError as e:
        assert "Duplicated timeseries" in str(e)
    else:
        raise AssertionError("two Metrics registered the same names on one registry")

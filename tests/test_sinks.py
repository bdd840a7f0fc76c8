"""The sinks together: every decision recorded in SQL, counted in Prometheus, raised as an alert.

One FanOut feeds the real store writer (SQLite file), Metrics and AlertSink (a log
channel and a real webhook receiver); afterwards the report, the metrics and the
alerts table must tell the same story, with nothing lost.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from helpers.receiver import webhook_receiver
from helpers.sinks import DEEPSEEK, OPENAI, decision
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from egresswatch.alerts import AlertSink, LogChannel, StoreAlertRecorder, WebhookChannel
from egresswatch.metrics import Metrics
from egresswatch.model import Action, FlowClosed, Mode, PayloadType
from egresswatch.ports import FanOut
from egresswatch.report import build_report
from egresswatch.store import list_alerts, open_store


def _sum(registry: CollectorRegistry, name: str, **match: str) -> float:
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                total += s.value
    return total


def test_every_decision_is_stored_counted_and_alerted(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = open_store(str(tmp_path / "all.db"))
    writer = store.writer(spill_path=tmp_path / "spill.jsonl")
    registry = CollectorRegistry()
    metrics = Metrics(registry, sensor_name="lab", known_services=["deepseek", "openai"])
    metrics.watch_store(lambda: writer.stats)
    log = io.StringIO()
    with webhook_receiver([503]) as rx:  # the webhook fails once, then recovers
        alerts = AlertSink(
            [LogChannel(log), WebhookChannel(rx.url, retries=3, backoff=0.02)], window=3600
        )
        alerts.on_state(StoreAlertRecorder(store))
        alerts.on_state(metrics.alert_state)
        sinks = FanOut([writer, metrics, alerts])
        verdicts = [
            (Action.ALLOW, Mode.ENFORCE),
            (Action.ALERT, Mode.ENFORCE),
            (Action.BLOCK, Mode.ENFORCE),
            (Action.BLOCK, Mode.MONITOR),
        ]
        sent = 0
        n = 400
        for i in range(n):
            action, mode = verdicts[i % 4]
            service = DEEPSEEK if i % 3 else OPENAI
            d = decision(
                service=service,
                host=service.domains[0],
                country=rng.choice(["CN", "US", None]),
                action=action,
                mode=mode,
                rule=f"rule-{action}",
                client=f"192.0.2.{i % 5}",
                payload_types=(PayloadType.CHAT_PROMPT,),
            )
            sinks.record(d)
            size = 100 + i
            sent += size
            o = d.observation
            sinks.flow_closed(FlowClosed(o.flow_id, o.sensor, o.time + 1, size, 10, 1.0))
        sinks.close()
        assert sinks.errors == 0
        webhook_bodies = [r.json() for r in rx.delivered]

    report = build_report(store, None, None)
    stored_alerts = list_alerts(store, limit=None)
    store.close()

    # SQL: every decision, every byte
    assert report.totals.flows == n
    assert report.totals.bytes_out == sent
    # Prometheus: the same counts
    assert _sum(registry, "egresswatch_flows_total") == n
    assert _sum(registry, "egresswatch_sent_bytes_total") == sent
    assert _sum(registry, "egresswatch_blocked_total", verdict="block") == report.totals.block
    assert (
        _sum(registry, "egresswatch_blocked_total", verdict="would-block")
        == report.totals.would_block
    )
    alert_worthy = report.totals.alert + report.totals.block + report.totals.would_block
    assert _sum(registry, "egresswatch_alerts_total") == alert_worthy == 300
    # Alerts: deduplicated per rule + client + service, counts add up to every occurrence
    keys = {(a.rule, a.client_addr, a.service_id) for a in stored_alerts}
    per_channel = {"log": 0, "webhook": 0}
    for a in stored_alerts:
        per_channel[a.sink or ""] += a.count
        assert a.delivery_state == "delivered", a
    assert per_channel == {"log": alert_worthy, "webhook": alert_worthy}
    assert len(stored_alerts) == 2 * len(keys)
    log_lines = [json.loads(x) for x in log.getvalue().splitlines()]
    final = {x["id"]: x["count"] for x in log_lines}  # the follow-up carries the total
    assert sum(final.values()) == alert_worthy
    assert {b["id"] for b in webhook_bodies} == set(final)
    assert _sum(registry, "egresswatch_alert_notifications_total", state="retrying") == 1
    assert _sum(registry, "egresswatch_store_dropped_total") == 0


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["r1", "r2"]), st.integers(0, 3), st.booleans()),
        max_size=60,
    )
)
def test_dedup_counts_add_up(occurrences: list[tuple[str, int, bool]]) -> None:
    """Whatever the mix: one alert per key, and its final count is the key's occurrences."""
    out = io.StringIO()
    sink = AlertSink([LogChannel(out)], window=3600)
    expected: dict[tuple[str, str, str], int] = {}
    for rule, client, deepseek in occurrences:
        service = DEEPSEEK if deepseek else OPENAI
        sink.record(
            decision(
                service=service,
                host=service.domains[0],
                rule=rule,
                client=f"10.0.0.{client}",
                action=Action.BLOCK,
            )
        )
        key = (rule, f"10.0.0.{client}", service.id)
        expected[key] = expected.get(key, 0) + 1
    sink.close()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    final: dict[tuple[str, str, str], int] = {}
    ids: dict[tuple[str, str, str], set[str]] = {}
    for x in lines:
        key = (x["rule"], x["client"], x["service"])
        final[key] = x["count"]
        ids.setdefault(key, set()).add(x["id"])
    assert final == expected
    assert all(len(v) == 1 for v in ids.values())  # one alert id per key
    assert len(lines) == len(expected) + sum(1 for v in expected.values() if v > 1)

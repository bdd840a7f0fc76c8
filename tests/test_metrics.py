"""Metrics: counted per STYLE.md, bounded labels, served on loopback, read at scrape time."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers.sinks import DEEPSEEK, OPENAI, decision, email_finding
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from egresswatch import __version__
from egresswatch.metrics import (
    LATENCY_BUCKETS,
    GeoDatabase,
    Metrics,
    MetricsError,
    StoreStats,
    country_label,
    serve,
)
from egresswatch.model import Action, FlowClosed, MatchKind, Mode, PayloadType, Sensor

ALLOWED_LABELS = {
    "sensor",
    "source",
    "service",
    "country",
    "verdict",
    "payload_type",
    "kind",
    "channel",
    "state",
    "database",
    "version",
    "python",
    "le",
}


def _metrics(**kw: object) -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    m = Metrics(registry, sensor_name="lab-gw", known_services=["deepseek", "openai"], **kw)  # type: ignore[arg-type]
    return registry, m


def _labels(service: str = "deepseek", country: str = "CN", **extra: str) -> dict[str, str]:
    return {"sensor": "lab-gw", "source": "proxy", "service": service, "country": country, **extra}


def test_a_decision_is_counted_once_per_label_set() -> None:
    registry, m = _metrics()
    flow = "f1"
    m.record(decision(flow_id=flow, findings=(email_finding(),)))
    m.record(decision(flow_id=flow, action=Action.BLOCK, mode=Mode.ENFORCE))  # same flow, later
    get = registry.get_sample_value
    assert get("egresswatch_flows_total", _labels()) == 1
    assert get("egresswatch_decisions_total", _labels(verdict="allow")) == 1
    assert get("egresswatch_decisions_total", _labels(verdict="block")) == 1
    assert get("egresswatch_blocked_total", _labels(verdict="block")) == 1
    assert get("egresswatch_alerts_total", _labels(verdict="block")) == 1
    assert get("egresswatch_alerts_total", _labels(verdict="allow")) is None
    assert get("egresswatch_findings_total", _labels(kind="email")) == 1
    assert (
        get("egresswatch_payloads_total", _labels(payload_type="chat-prompt", verdict="allow")) == 1
    )


def test_would_block_is_its_own_verdict() -> None:
    registry, m = _metrics()
    m.record(decision(action=Action.BLOCK, mode=Mode.MONITOR))
    m.record(decision(action=Action.ALERT, mode=Mode.MONITOR))
    get = registry.get_sample_value
    assert get("egresswatch_blocked_total", _labels(verdict="would-block")) == 1
    assert get("egresswatch_blocked_total", _labels(verdict="block")) is None
    assert get("egresswatch_alerts_total", _labels(verdict="alert")) == 1
    assert get("egresswatch_alerts_total", _labels(verdict="would-block")) == 1


@pytest.mark.parametrize(
    ("service", "kind", "country", "want_service", "want_country"),
    [
        (DEEPSEEK, MatchKind.OFFICIAL, "CN", "deepseek", "CN"),
        (OPENAI, MatchKind.OFFICIAL, "us", "openai", "US"),
        (DEEPSEEK, MatchKind.LOOKALIKE, "RU", "other", "RU"),  # a lookalike is not DeepSeek
        (None, MatchKind.OFFICIAL, None, "other", "ZZ"),
        (DEEPSEEK, MatchKind.OFFICIAL, "EU", "deepseek", "EU"),  # ISO reserved, still 2 letters
        (DEEPSEEK, MatchKind.OFFICIAL, "lab-eu", "deepseek", "ZZ"),  # an override label
    ],
)
def test_labels_are_bounded(service, kind, country, want_service, want_country) -> None:  # type: ignore[no-untyped-def]
    registry, m = _metrics()
    m.record(decision(service=service, kind=kind, country=country))
    assert (
        registry.get_sample_value("egresswatch_flows_total", _labels(want_service, want_country))
        == 1
    )


def test_unknown_catalog_service_is_other() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, sensor_name="lab-gw", known_services=["openai"])
    m.record(decision(service=DEEPSEEK))
    assert registry.get_sample_value("egresswatch_flows_total", _labels("other", "CN")) == 1


def test_no_address_host_path_or_user_agent_ever_becomes_a_label() -> None:
    registry, m = _metrics()
    secrets = {
        "client": "10.77.88.99",
        "dst_addr": "198.51.100.201",
        "host": "api.deepseek-mirror.example",
        "path": "/v1/chat/completions?token=zzTOPSECRETzz",
        "client_app": "SecretAgent/9.9",
    }
    for i in range(20):
        d = decision(
            client=f"10.77.88.{i}",
            dst_addr=secrets["dst_addr"],
            host=secrets["host"],
            path=secrets["path"],
            client_app=secrets["client_app"],
            findings=(email_finding(),),
            flow_id=f"flow-{i}",
        )
        m.record(d)
        m.flow_closed(FlowClosed(f"flow-{i}", Sensor.PROXY, 0.0, 100, 2000, 0.5))
    text = generate_latest(registry).decode()
    for value in [*secrets.values(), "10.77.88.", "flow-", "example.com", "j***"]:
        assert value not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            if "country" in sample.labels:
                assert re.fullmatch(r"[A-Z]{2}", sample.labels["country"])
            if "service" in sample.labels:
                assert sample.labels["service"] in {"deepseek", "openai", "other"}
            if "payload_type" in sample.labels:
                assert sample.labels["payload_type"] in {str(p) for p in PayloadType}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_country_label_is_always_iso_or_zz(text: str) -> None:
    label = country_label(text)
    assert label == "ZZ" or (re.fullmatch(r"[A-Z]{2}", label) and label == text.strip().upper())


def test_bytes_come_from_flow_closed_with_the_flows_labels() -> None:
    registry, m = _metrics()
    m.record(decision(flow_id="a", service=OPENAI, country="US"))
    m.flow_closed(FlowClosed("a", Sensor.PROXY, 0.0, bytes_out=1500, bytes_in=64000, duration=1))
    m.flow_closed(FlowClosed("never-seen", Sensor.SNIFFER, 0.0, 10, 20, 1))
    get = registry.get_sample_value
    assert get("egresswatch_sent_bytes_total", _labels("openai", "US")) == 1500
    assert get("egresswatch_received_bytes_total", _labels("openai", "US")) == 64000
    other = {"sensor": "lab-gw", "source": "sniffer", "service": "other", "country": "ZZ"}
    assert get("egresswatch_sent_bytes_total", other) == 10
    assert get("egresswatch_received_bytes_total", other) == 20


def test_latency_histogram_uses_decision_elapsed() -> None:
    registry, m = _metrics()
    for elapsed in (0.00003, 0.0002, 0.0002, 0.3):
        m.record(decision(elapsed=elapsed))
    labels = {"sensor": "lab-gw", "source": "proxy"}
    get = registry.get_sample_value
    assert get("egresswatch_decision_duration_seconds_count", labels) == 4
    assert get("egresswatch_decision_duration_seconds_sum", labels) == pytest.approx(0.30043)
    assert get("egresswatch_decision_duration_seconds_bucket", {**labels, "le": "5e-05"}) == 1
    assert get("egresswatch_decision_duration_seconds_bucket", {**labels, "le": "0.00025"}) == 3
    assert get("egresswatch_decision_duration_seconds_bucket", {**labels, "le": "0.25"}) == 3
    assert get("egresswatch_decision_duration_seconds_bucket", {**labels, "le": "1.0"}) == 4
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_store_gauges_are_read_at_scrape_time() -> None:
    registry, m = _metrics()
    state = {"queue_length": 3, "dropped": 0}

    def stats() -> StoreStats:
        return StoreStats(
            queue_length=state["queue_length"],
            queue_capacity=10000,
            dropped=state["dropped"],
            spill_bytes=4096,
            spill_records=12,
        )

    m.watch_store(stats)
    get = registry.get_sample_value
    s = {"sensor": "lab-gw"}
    assert get("egresswatch_store_queue_length", s) == 3
    state["queue_length"], state["dropped"] = 7, 5
    assert get("egresswatch_store_queue_length", s) == 7
    assert get("egresswatch_store_dropped_total", s) == 5
    assert get("egresswatch_store_queue_capacity", s) == 10000
    assert get("egresswatch_store_spill_bytes", s) == 4096
    assert get("egresswatch_store_spill_records", s) == 12
    # a mapping works too, and a second watch replaces the first
    m.watch_store(lambda: {"queue_length": 1})
    assert get("egresswatch_store_queue_length", s) == 1
    assert get("egresswatch_store_dropped_total", s) is None


def test_a_failing_store_callable_does_not_break_the_scrape() -> None:
    registry, m = _metrics()

    def broken() -> StoreStats:
        raise RuntimeError("database is locked")

    m.watch_store(broken)
    text = generate_latest(registry).decode()
    assert "egresswatch_build_info" in text
    assert registry.get_sample_value("egresswatch_store_queue_length", {"sensor": "lab-gw"}) is None


def test_geoip_age_from_build_epoch() -> None:
    start = 1_800_000_000.0
    now = [start]
    registry, m = _metrics(clock=lambda: now[0])
    m.watch_geoip(
        lambda: [GeoDatabase("GeoLite2-Country", start - 86400), ("GeoLite2-ASN", start - 60)]
    )
    get = registry.get_sample_value
    labels = {"sensor": "lab-gw", "database": "GeoLite2-Country"}
    assert get("egresswatch_geoip_database_age_seconds", labels) == 86400
    now[0] += 3600
    assert get("egresswatch_geoip_database_age_seconds", labels) == 90000
    asn = {"sensor": "lab-gw", "database": "GeoLite2-ASN"}
    assert get("egresswatch_geoip_database_age_seconds", asn) == 3660


def test_build_info() -> None:
    registry, _ = _metrics()
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("egresswatch_build_info{"))
    assert f'version="{__version__}"' in line
    assert line.endswith(" 1.0")


def test_alert_state_counts_notifications() -> None:
    registry, m = _metrics()
    m.alert_state({"channel": "webhook", "state": "retrying"})
    m.alert_state({"channel": "webhook", "state": "delivered"})
    m.alert_state({"channel": "webhook", "state": "delivered"})
    labels = {"sensor": "lab-gw", "channel": "webhook", "state": "delivered"}
    assert registry.get_sample_value("egresswatch_alert_notifications_total", labels) == 2


def test_metric_names_follow_prometheus_conventions() -> None:
    registry, m = _metrics()
    m.watch_store(lambda: StoreStats())
    m.watch_geoip(lambda: [])
    m.record(decision())
    names = {f.name for f in registry.collect()}
    for family in registry.collect():
        assert family.name.startswith("egresswatch_")
        if family.type == "counter":
            assert any(s.name.endswith("_total") for s in family.samples) or not family.samples
    assert {
        "egresswatch_flows",
        "egresswatch_sent_bytes",
        "egresswatch_received_bytes",
        "egresswatch_blocked",
        "egresswatch_alerts",
        "egresswatch_findings",
        "egresswatch_decision_duration_seconds",
        "egresswatch_store_queue_length",
        "egresswatch_store_dropped",
        "egresswatch_store_spill_bytes",
        "egresswatch_geoip_database_age_seconds",
        "egresswatch_build_info",
    } <= names


def test_two_instances_in_one_process_do_not_collide() -> None:
    r1, m1 = _metrics()
    r2, _ = _metrics()
    m1.record(decision())
    assert r1.get_sample_value("egresswatch_flows_total", _labels()) == 1
    assert r2.get_sample_value("egresswatch_flows_total", _labels()) is None


def test_serve_binds_loopback_and_scrapes_over_http() -> None:
    registry, m = _metrics()
    m.record(decision(findings=(email_finding(),)))
    with serve(registry, port=0) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        assert 'egresswatch_findings_total{country="CN",kind="email"' in body
        # not reachable on another address of this host (it listens on loopback only)
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            assert s.connect_ex(("127.0.0.2", server.port)) != 0
    # closed: the port is free again
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


def test_serve_on_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            serve(CollectorRegistry(), port=port)


# -- real Prometheus (Debian package) ------------------------------------------------------

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def _exposition() -> tuple[CollectorRegistry, Metrics, str]:
    registry, m = _metrics()
    m.watch_store(lambda: StoreStats(queue_length=2, queue_capacity=100, dropped=1))
    m.watch_geoip(lambda: [GeoDatabase("GeoLite2-Country", 1_700_000_000)])
    d = decision(findings=(email_finding(),), action=Action.BLOCK, flow_id="x")
    m.record(d)
    m.flow_closed(FlowClosed("x", Sensor.PROXY, 0.0, 300, 4000, 1.0))
    m.alert_state({"channel": "webhook", "state": "delivered"})
    return registry, m, generate_latest(registry).decode()


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian prometheus package)")
def test_promtool_lints_the_exposition_clean() -> None:
    _, _, text = _exposition()
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # promtool flags non-base units, counters without _total, bad names ...
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="needs prometheus (Debian package)")
def test_real_prometheus_scrapes_and_queries(tmp_path: Path) -> None:
    registry, m, _ = _exposition()
    with serve(registry, port=0) as server:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            web_port = s.getsockname()[1]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: egresswatch\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
        )
        assert PROMETHEUS is not None
        log = (tmp_path / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            query = 'egresswatch_findings_total{service="deepseek",kind="email"}'
            url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode(
                {"query": query}
            )
            # lab notes: the first sample is queryable after ~6 s (5 s target-sync delay)
            deadline = time.monotonic() + 40
            result: list[dict[str, object]] = []
            while time.monotonic() < deadline and not result:
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        result = json.load(resp)["data"]["result"]
                except OSError:
                    pass
                if not result:
                    time.sleep(0.5)
            assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
            (sample,) = result
            labels = sample["metric"]
            assert isinstance(labels, dict)
            assert labels["country"] == "CN" and labels["sensor"] == "lab-gw"
            assert sample["value"][1] == "1"  # type: ignore[index]
            m.record(decision(findings=(email_finding(),)))
            # the next scrape sees the second finding
            deadline = time.monotonic() + 20
            value = "1"
            while time.monotonic() < deadline and value != "2":
                time.sleep(0.5)
                with urllib.request.urlopen(url, timeout=5) as resp:
                    value = json.load(resp)["data"]["result"][0]["value"][1]
            assert value == "2"
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()


def test_geoip_age_from_a_real_geo_chain(tmp_path: Path) -> None:
    from helpers.geoip import lab_chain

    chain = lab_chain(tmp_path)
    registry, m = _metrics()
    m.watch_geoip(chain.databases)
    text = generate_latest(registry).decode()
    chain.close()
    samples = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "egresswatch_geoip_database_age_seconds"
        for s in f.samples
    ]
    assert len(samples) == 1
    assert str(tmp_path) not in text  # the database type, never its path
    # the lab database was built moments ago
    assert 0 <= samples[0].value < 3600


def test_store_gauges_from_a_real_writer(tmp_path: Path) -> None:
    from egresswatch.store import open_store

    store = open_store(str(tmp_path / "m.db"))
    writer = store.writer(spill_path=tmp_path / "spill.jsonl", queue_size=1234)
    registry, m = _metrics()
    m.watch_store(lambda: writer.stats)  # a property, read at each scrape
    for _ in range(5):
        writer.record(decision())
    assert writer.flush(30)
    s = {"sensor": "lab-gw"}
    get = registry.get_sample_value
    assert get("egresswatch_store_queue_capacity", s) == 1234
    assert get("egresswatch_store_queue_length", s) == 0
    assert get("egresswatch_store_dropped_total", s) == 0
    assert get("egresswatch_store_spill_records", s) == 0
    writer.close()
    store.close()


def test_sniffer_counters_are_read_at_scrape_time() -> None:
    from prometheus_client import CollectorRegistry

    from egresswatch.metrics import Metrics
    from egresswatch.sniffer.engine import SnifferStats

    registry = CollectorRegistry()
    m = Metrics(registry, sensor_name="gw1")
    stats = SnifferStats()
    m.watch_sniffer(lambda: stats)
    stats.packets, stats.kernel_drops, stats.evictions = 100, 3, 2
    stats.malformed["truncated-tcp"] += 4
    got = registry.get_sample_value
    assert got("egresswatch_capture_packets_total", {"sensor": "gw1"}) == 100
    assert got("egresswatch_capture_dropped_packets_total", {"sensor": "gw1"}) == 3
    assert got("egresswatch_capture_flow_evictions_total", {"sensor": "gw1"}) == 2
    labels = {"sensor": "gw1", "reason": "truncated-tcp"}
    assert got("egresswatch_capture_malformed_packets_total", labels) == 4
    stats.kernel_drops = 9  # read live, not copied at registration
    assert got("egresswatch_capture_dropped_packets_total", {"sensor": "gw1"}) == 9


def test_a_failing_sniffer_stats_callable_never_fails_a_scrape() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from egresswatch.metrics import Metrics

    registry = CollectorRegistry()
    m = Metrics(registry, sensor_name="gw1")

    def boom() -> object:
        raise RuntimeError("sniffer restarting")

    m.watch_sniffer(boom)
    assert b"egresswatch_capture_packets" in generate_latest(registry)

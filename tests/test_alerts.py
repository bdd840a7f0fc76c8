"""Alerts: deduplication, channels, retries with backoff, and a webhook that fails never blocks."""

from __future__ import annotations

import io
import json
import re
import socket
import stat
import threading
from pathlib import Path

import pytest
from helpers.receiver import free_port, webhook_receiver
from helpers.sinks import OPENAI, decision, email_finding
from prometheus_client import CollectorRegistry

from egresswatch.alerts import (
    Alert,
    AlertSink,
    DeliveryState,
    LogChannel,
    Severity,
    SyslogChannel,
    WebhookChannel,
    alert_from,
    summarize,
)
from egresswatch.errors import ConfigError
from egresswatch.metrics import Metrics
from egresswatch.model import Action, Decision, Mode


class States:
    """Collects on_state callbacks and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.items: list[Alert] = []
        self._cond = threading.Condition()

    def __call__(self, alert: Alert) -> None:
        with self._cond:
            self.items.append(alert)
            self._cond.notify_all()

    def wait(self, pred, timeout: float = 15.0) -> list[Alert]:  # type: ignore[no-untyped-def]
        with self._cond:
            assert self._cond.wait_for(lambda: pred(self.items), timeout), self.items
            return list(self.items)

    def final(self, channel: str) -> list[Alert]:
        done = {DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.DROPPED}
        return [a for a in self.items if a.channel == channel and a.state in done]


def _block(**kw: object) -> Decision:
    kw.setdefault("rule", "no-cn")
    return decision(action=Action.BLOCK, mode=Mode.ENFORCE, **kw)  # type: ignore[arg-type]


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in stream.getvalue().splitlines()]


def test_only_alert_and_block_verdicts_raise_alerts() -> None:
    out = io.StringIO()
    sink = AlertSink([LogChannel(out)], window=60)
    sink.record(decision(action=Action.ALLOW))
    sink.record(decision(action=Action.ALERT, rule="telemetry", client="10.0.0.1"))
    sink.record(decision(action=Action.BLOCK, mode=Mode.MONITOR, rule="no-cn", client="10.0.0.2"))
    sink.record(decision(action=Action.BLOCK, mode=Mode.ENFORCE, rule="no-cn", client="10.0.0.3"))
    sink.close()
    got = {(x["rule"], x["verdict"], x["severity"]) for x in _lines(out)}
    assert got == {
        ("telemetry", "alert", "warning"),
        ("no-cn", "would-block", "critical"),
        ("no-cn", "block", "critical"),
    }


def test_same_rule_client_service_in_a_window_is_one_alert_with_a_count() -> None:
    out = io.StringIO()
    sink = AlertSink([LogChannel(out)], window=60)
    for _ in range(25):
        sink.record(_block())
    sink.record(_block(client="10.9.9.9"))  # another client: another alert
    sink.record(_block(service=OPENAI, host="api.openai.com"))  # another service
    sink.close()
    lines = _lines(out)
    first = [x for x in lines if x["client"] == "10.1.2.3" and x["service"] == "deepseek"]
    # delivered at once with count 1, then one follow-up with the same id and the total
    assert [(x["count"], x["update"]) for x in first] == [(1, False), (25, True)]
    assert first[0]["id"] == first[1]["id"]
    assert first[1]["last"] >= first[1]["first"]
    others = [x for x in lines if x not in first]
    assert sorted((x["client"], x["service"], x["count"]) for x in others) == [
        ("10.1.2.3", "openai", 1),
        ("10.9.9.9", "deepseek", 1),
    ]
    assert sink.raised == 3
    assert sink.folded == 24


def test_a_new_window_starts_a_new_alert() -> None:
    out = io.StringIO()
    states = States()
    sink = AlertSink([LogChannel(out)], window=0.2)
    sink.on_state(states)
    for _ in range(3):
        sink.record(_block())
    # the dispatcher closes the window by itself and sends the follow-up
    states.wait(lambda xs: any(a.update and a.state == DeliveryState.DELIVERED for a in xs))
    sink.record(_block())
    sink.close()
    lines = _lines(out)
    assert [(x["count"], x["update"]) for x in lines] == [(1, False), (3, True), (1, False)]
    assert lines[0]["id"] == lines[1]["id"] != lines[2]["id"]


def test_summary_is_redacted() -> None:
    d = decision(
        action=Action.BLOCK,
        path="/v1/chat/completions?api_key=sk-LIVE-SECRET",
        findings=(email_finding(),),
    )
    line = summarize(d)
    assert "SECRET" not in line
    assert "j***@example.com" not in line  # even redacted values stay out of notifications
    assert "findings: email" in line
    assert "DeepSeek API" in line and "CN" in line and "10.1.2.3" in line
    alert = alert_from(d)
    assert "SECRET" not in json.dumps(alert.to_dict())


def test_log_channel_file_is_private_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = AlertSink([LogChannel(path)], window=60)
    sink.record(_block())
    sink.record(_block(client="10.0.0.8"))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["client"] for r in rows] == ["10.1.2.3", "10.0.0.8"]
    assert rows[0]["first_time"].endswith("Z")


def test_log_channel_bad_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open alert log"):
        LogChannel(tmp_path / "missing-dir" / "alerts.jsonl")


def test_webhook_json_post() -> None:
    with webhook_receiver() as rx:
        states = States()
        sink = AlertSink([WebhookChannel(rx.url, timeout=5)], window=60)
        sink.on_state(states)
        sink.record(_block(findings=(email_finding(),)))
        states.wait(lambda xs: any(a.state == DeliveryState.DELIVERED for a in xs))
        sink.close()
        (req,) = rx.requests
        assert req.path == "/hook"
        assert req.headers["Content-Type"] == "application/json"
        body = req.json()
        assert body["rule"] == "no-cn"
        assert body["severity"] == "critical"
        assert body["service"] == "deepseek"
        assert body["country"] == "CN"
        assert body["operator_country"] == "CN"
        assert body["count"] == 1
        assert "findings: email" in body["summary"]


def test_webhook_slack_format() -> None:
    with webhook_receiver() as rx:
        sink = AlertSink([WebhookChannel(rx.url, format="slack")], window=60)
        for _ in range(4):
            sink.record(_block())
        sink.close()
        bodies = [r.json() for r in rx.wait_for(2)]
    assert len(bodies) == 2
    for body in bodies:
        assert body["text"].startswith(":no_entry: egresswatch critical")
        assert body["blocks"][0]["type"] == "section"
        fields = [f["text"] for f in body["blocks"][1]["fields"]]
        assert "*Rule*\nno-cn" in fields
    assert "×4" in bodies[1]["text"]


def test_webhook_that_fails_and_recovers_is_retried_until_delivered() -> None:
    with webhook_receiver([500, 503, 502]) as rx:
        states = States()
        channel = WebhookChannel(rx.url, retries=5, backoff=0.05, max_backoff=0.2)
        sink = AlertSink([channel], window=60)
        sink.on_state(states)
        sink.record(_block())
        items = states.wait(lambda xs: any(a.state == DeliveryState.DELIVERED for a in xs))
        sink.close()
    assert [r.status for r in rx.requests] == [500, 503, 502, 200]
    assert [(a.state, a.attempts, a.error) for a in items] == [
        (DeliveryState.PENDING, 0, None),
        (DeliveryState.RETRYING, 1, "HTTP 500"),
        (DeliveryState.RETRYING, 2, "HTTP 503"),
        (DeliveryState.RETRYING, 3, "HTTP 502"),
        (DeliveryState.DELIVERED, 4, None),
    ]
    assert len({a.id for a in items}) == 1
    # the same alert, not four: every attempt carried the same id
    assert len({r.json()["id"] for r in rx.requests}) == 1


def test_webhook_down_then_started_is_delivered() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    states = States()
    sink = AlertSink([WebhookChannel(url, retries=50, backoff=0.05, max_backoff=0.1)], window=60)
    sink.on_state(states)
    sink.record(_block())
    states.wait(lambda xs: any(a.state == DeliveryState.RETRYING for a in xs))
    refused = [a for a in states.items if a.state == DeliveryState.RETRYING]
    assert "refused" in (refused[0].error or "").lower()
    with webhook_receiver(port=port) as rx:
        states.wait(lambda xs: any(a.state == DeliveryState.DELIVERED for a in xs))
        sink.close()
        assert len(rx.delivered) == 1


def test_webhook_gives_up_after_its_retries() -> None:
    with webhook_receiver(default_status=500) as rx:
        states = States()
        sink = AlertSink([WebhookChannel(rx.url, retries=2, backoff=0.02)], window=60)
        sink.on_state(states)
        sink.record(_block())
        states.wait(lambda xs: any(a.state == DeliveryState.FAILED for a in xs))
        sink.close()
        assert len(rx.requests) == 3
    (failed,) = states.final("webhook")
    assert failed.state == DeliveryState.FAILED
    assert failed.attempts == 3
    assert failed.error == "HTTP 500"


def test_a_hung_webhook_blocks_neither_traffic_nor_the_other_channels() -> None:
    hold = threading.Event()
    with webhook_receiver(hold=hold) as rx:
        log = io.StringIO()
        states = States()
        sink = AlertSink([WebhookChannel(rx.url, timeout=20), LogChannel(log)], window=60)
        sink.on_state(states)
        clients = [f"10.0.1.{i}" for i in range(30)]
        for client in clients:
            sink.record(_block(client=client))  # returns although the webhook hangs
        # every alert reaches the log while the webhook is still holding the first request
        states.wait(lambda xs: len(_log_delivered(xs)) == 30)
        assert not hold.is_set()
        assert rx.requests == []
        hold.set()
        states.wait(
            lambda xs: (
                len([a for a in xs if a.channel == "webhook" and a.state == "delivered"]) == 30
            )
        )
        sink.close()
        assert sorted(r.json()["client"] for r in rx.requests) == sorted(clients)
    assert sorted(x["client"] for x in _lines(log)) == sorted(clients)


def _log_delivered(xs: list[Alert]) -> list[Alert]:
    return [a for a in xs if a.channel == "log" and a.state == DeliveryState.DELIVERED]


def test_a_full_channel_queue_drops_and_says_so() -> None:
    hold = threading.Event()
    with webhook_receiver(hold=hold) as rx:
        states = States()
        sink = AlertSink([WebhookChannel(rx.url, timeout=20)], window=60, channel_queue=2)
        sink.on_state(states)
        sink.record(_block(client="10.0.2.0"))
        # wait until the worker holds the first alert in flight (it left the queue)
        assert rx.wait_started(1)
        for i in range(1, 6):
            sink.record(_block(client=f"10.0.2.{i}"))
        states.wait(lambda xs: len([a for a in xs if a.state == DeliveryState.DROPPED]) >= 3)
        hold.set()
        sink.close()
    dropped = [a for a in states.items if a.state == DeliveryState.DROPPED]
    delivered = [a for a in states.items if a.state == DeliveryState.DELIVERED]
    assert len(dropped) == 3
    assert len(delivered) == 3
    assert all(a.error == "queue full" for a in dropped)


def test_a_full_occurrence_queue_is_counted() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_callback(alert: Alert) -> None:
        # runs in the dispatcher thread when an alert is queued: holds the dispatcher
        entered.set()
        release.wait(10)

    sink = AlertSink([LogChannel(io.StringIO())], window=60, queue_size=2)
    sink.on_state(slow_callback)
    sink.record(_block(client="10.0.3.0"))
    assert entered.wait(10)
    for i in range(1, 11):
        sink.record(_block(client=f"10.0.3.{i}"))
    assert sink.dropped == 8  # 2 fit in the queue
    release.set()
    sink.close()
    assert sink.raised == 3


def test_syslog_udp_rfc5424() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        channel = SyslogChannel(server.getsockname(), hostname="gw1", facility="local3")
        sink = AlertSink([channel], window=60)
        sink.record(_block(rule='odd"rule]'))
        sink.record(decision(action=Action.ALERT, rule="tele", client="10.0.0.9"))
        data = sorted([server.recv(8192), server.recv(8192)])
        sink.close()
    # RFC 5424 section 6: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
    pattern = re.compile(
        rb"^<(\d+)>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z gw1 egresswatch \d+ alert "
        rb"\[egresswatch@32473 [^\n]*\] \xef\xbb\xbf(.*)$"
    )
    parsed = [pattern.match(d) for d in data]
    assert all(parsed), data
    pris = sorted(int(m.group(1)) for m in parsed if m)
    assert pris == [19 * 8 + 2, 19 * 8 + 4]  # local3.crit (block), local3.warning (alert)
    block = next(d for d in data if b"<154>" in d)
    assert b'rule="odd\\"rule\\]"' in block  # section 6.3.3 escaping


def test_syslog_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(10)
        sink = AlertSink([SyslogChannel(path)], window=60)
        sink.record(_block())
        msg = server.recv(8192)
        sink.close()
    assert msg.startswith(b"<130>1 ")  # local0 (16) * 8 + critical (2)
    assert "block: chat-prompt to DeepSeek API" in msg.decode()


def test_syslog_without_a_listener_fails_delivery_not_traffic(tmp_path: Path) -> None:
    states = States()
    sink = AlertSink([SyslogChannel(tmp_path / "nobody.sock", retries=1, backoff=0.01)], window=60)
    sink.on_state(states)
    sink.record(_block())
    states.wait(lambda xs: any(a.state == DeliveryState.FAILED for a in xs))
    sink.close()
    (failed,) = states.final("syslog")
    assert failed.attempts == 2
    assert failed.error


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "127.0.0.1:9000/hook", "http:///nohost", "not a url"]
)
def test_bad_webhook_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="alert webhook"):
        WebhookChannel(url)


def test_bad_webhook_format_and_facility_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="format"):
        WebhookChannel("http://127.0.0.1:1/x", format="teams")
    with pytest.raises(ConfigError, match="facility"):
        SyslogChannel(("127.0.0.1", 514), facility="local9")


def test_close_fails_what_cannot_be_delivered_in_time() -> None:
    port = free_port()  # nothing listens: every attempt is refused
    states = States()
    channel = WebhookChannel(f"http://127.0.0.1:{port}/", retries=100, backoff=0.05)
    sink = AlertSink([channel], window=60)
    sink.on_state(states)
    sink.record(_block())
    states.wait(lambda xs: any(a.state == DeliveryState.RETRYING for a in xs))
    sink.close(timeout=0.3)
    (final,) = states.final("webhook")
    assert final.state == DeliveryState.FAILED
    assert final.error == "shut down before delivery"
    sink.record(_block())  # after close: ignored, no exception
    assert sink.raised == 1


def test_metrics_count_delivery_states() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, sensor_name="lab")
    with webhook_receiver([500]) as rx:
        sink = AlertSink([WebhookChannel(rx.url, backoff=0.02)], window=60)
        sink.on_state(metrics.alert_state)
        sink.record(_block())
        rx.wait_for(2)
        sink.close()

    def get(state: str) -> float | None:
        labels = {"sensor": "lab", "channel": "webhook", "state": state}
        return registry.get_sample_value("egresswatch_alert_notifications_total", labels)

    assert (get("pending"), get("retrying"), get("delivered")) == (1, 1, 1)


def test_severity_and_alert_record_are_frozen() -> None:
    alert = alert_from(_block())
    assert alert.severity is Severity.CRITICAL
    with pytest.raises(AttributeError):
        alert.count = 2  # type: ignore[misc]


def test_store_records_alerts_and_their_delivery(tmp_path: Path) -> None:
    from egresswatch.alerts import StoreAlertRecorder
    from egresswatch.store import list_alerts, open_store

    store = open_store(str(tmp_path / "alerts.db"))
    recorder = StoreAlertRecorder(store)
    with webhook_receiver([500]) as rx:
        log = io.StringIO()
        channel = WebhookChannel(rx.url, retries=3, backoff=0.02)
        sink = AlertSink([channel, LogChannel(log)], window=60)
        sink.on_state(recorder)
        for _ in range(4):
            sink.record(_block())
        sink.close()
    rows = {r.sink: r for r in list_alerts(store)}
    store.close()
    assert recorder.errors == 0
    assert set(rows) == {"webhook", "log"}  # one row per alert and channel
    hook = rows["webhook"]
    assert hook.delivery_state == "delivered"
    assert hook.count == 4  # the window's follow-up folded into the same row
    assert hook.rule == "no-cn" and hook.severity == "critical"
    assert hook.client_addr == "10.1.2.3" and hook.service_id == "deepseek"
    assert hook.delivered_ts is not None
    assert rows["log"].attempts == 1
    assert len(rx.requests) == 3  # 500, then 200, then the follow-up


def test_store_recorder_survives_a_broken_store(tmp_path: Path) -> None:
    from egresswatch.alerts import StoreAlertRecorder
    from egresswatch.store import open_store

    store = open_store(str(tmp_path / "gone.db"))
    store.close()
    (tmp_path / "gone.db").unlink()
    (tmp_path / "gone.db").mkdir()  # the database path is now a directory: every write fails
    recorder = StoreAlertRecorder(store)
    out = io.StringIO()
    sink = AlertSink([LogChannel(out)], window=60)
    sink.on_state(recorder)
    sink.record(_block())
    sink.close()
    assert recorder.errors >= 1
    assert len(_lines(out)) == 1  # delivery went on


def test_channels_from_settings(tmp_path: Path) -> None:
    from egresswatch.alerts import channels_from

    chans = channels_from(
        log=tmp_path / "a.jsonl",
        webhook="http://127.0.0.1:9/hook",
        webhook_format="slack",
        syslog=("127.0.0.1", 514),
    )
    assert [c.name for c in chans] == ["log", "slack", "syslog"]
    assert channels_from() == []
    with pytest.raises(ConfigError, match="alert webhook"):
        channels_from(webhook="ftp://x/")
    for c in chans:
        c.close()

"""The SQL store, run twice: on a real SQLite file and on a real PostgreSQL server.

The PostgreSQL server comes from the Debian package, started by the fixture on
127.0.0.1 and a free port, and removed afterwards (tests/helpers/pg.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from helpers import pg as pg_helpers
from helpers.storedata import make_close, make_decision
from sqlalchemy import create_engine, func, select, text

from egresswatch.errors import StoreError
from egresswatch.model import FlowClosed, Sensor
from egresswatch.store import (
    AlertRecord,
    FindingRow,
    Flow,
    FlowFilter,
    Store,
    alerts_by_rule,
    count_flows,
    egress_summary,
    findings_by_kind,
    insert_alert,
    latest_flow_id,
    list_alerts,
    open_store,
    query_flows,
    top_clients,
    update_alert,
    verdicts_over_time,
)
from egresswatch.store.engine import SCHEMA_HEAD, _alembic_config, head_revision
from egresswatch.store.retention import Retention, prune
from egresswatch.store.rows import redact_path
from egresswatch.store.schema import FINDINGS, FLOWS, metadata
from egresswatch.store.writer import DnsAnswer

# fixtures shared with the other store tests
pg_server = pg_helpers.pg_server
store_url = pg_helpers.store_url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def writer_for(store: Store, tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("batch_size", 50)
    kw.setdefault("flush_interval", 0.05)
    return store.writer(spill_path=tmp_path / "spill.jsonl", node="sensor-a", **kw)  # type: ignore[arg-type]


# -- schema and migrations ------------------------------------------------------------------


def test_open_migrates_to_head_and_models_match_migrations(store: Store) -> None:
    info = store.info()
    assert info.revision == head_revision() == SCHEMA_HEAD == "0005"
    assert (info.flows, info.findings, info.alerts, info.dns_answers) == (0, 0, 0, 0)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], f"schema.py and the migrations disagree: {diff}"


def test_database_at_head_opens_without_alembic(tmp_path: Path) -> None:
    """Read-only commands open an up-to-date store without importing alembic (~0.25 s)."""
    import subprocess
    import sys

    db = tmp_path / "egw.db"
    open_store(f"sqlite:///{db}").close()  # created and migrated: alembic runs here
    code = (
        "import sys; from egresswatch.store import open_store; "
        f"s = open_store({str(db)!r}, must_exist=True); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_old_database_is_upgraded_not_dropped(store_url: str, tmp_path: Path) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO flows (decision_id, flow_id, ts, sensor, transport, protocol, "
                "country, geo_source, payload_types, flags, findings, verdict, action, mode, "
                "bytes_out, bytes_in) VALUES ('old1', 'f1', 1.0, 'proxy', 'tcp', 'https', 'US', "
                "'mmdb', ',chat-prompt,', ',', 0, 'allow', 'allow', 'monitor', 10, 20)"
            )
        )
    engine.dispose()
    store = open_store(store_url)
    try:
        assert store.revision() == "0005"
        rows = query_flows(store, FlowFilter())
        assert [(r.decision_id, r.payload_types, r.bytes_out) for r in rows] == [
            ("old1", ("chat-prompt",), 10)
        ]
        assert list_alerts(store) == []  # the 0002 table exists
    finally:
        store.close()


def test_database_newer_than_code_is_refused(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="revision 9999, newer than this egresswatch"):
        open_store(store_url)


def test_unreachable_postgres_is_a_clear_store_error() -> None:
    from helpers.pg import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at postgresql\+psycopg://"):
        open_store(url)


def test_bad_url_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match="unsupported database"):
        open_store("mysql://u@127.0.0.1/x")


# -- writing ----------------------------------------------------------------------------------


def test_decisions_are_stored_with_privacy_rules(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path)
    decisions = [make_decision(i, findings=2 if i == 3 else 0) for i in range(120)]
    for d in decisions:
        w.record(d)
    w.close()
    assert w.stats.written == 120 and w.stats.dropped == 0 and w.stats.queued == 120
    rows = {r.decision_id: r for r in query_flows(store, FlowFilter(), None)}
    assert set(rows) == {d.id for d in decisions}
    d = decisions[1]
    r = rows[d.id]
    o, a = d.observation, d.assessment
    assert r.ts == pytest.approx(o.time)
    assert (r.sensor, r.node, r.client_addr, r.client_app) == (
        "proxy",
        "sensor-a",
        o.client_addr,
        o.client_app,
    )
    assert (r.dst_addr, r.dst_port, r.sni, r.http_host, r.method) == (
        o.dst_addr,
        o.dst_port,
        o.sni,
        o.http_host,
        o.method,
    )
    assert r.path == "/v1/chat/completions?api-key=…&stream=…"
    assert "sk-secret" not in str(rows)
    assert r.country == (a.geo.country or "ZZ") and r.asn == a.geo.asn
    assert r.geo_source == str(a.geo.source)
    assert a.service is not None
    assert (r.service_id, r.operator, r.operator_country) == (
        a.service.service.id,
        a.service.service.operator,
        a.service.service.operator_country,
    )
    assert r.payload_types == tuple(str(p) for p in a.payload_types)
    assert (r.verdict, r.rule, r.reason) == (d.verdict.label, d.verdict.rule, d.verdict.reason)
    assert r.bytes_out == o.bytes_out and r.bytes_in == o.bytes_in
    assert rows[decisions[3].id].verdict == "would-block"
    assert rows[decisions[3].id].findings == 2
    # missing values are NULL (the SQLite writer binds them as NaN, which SQLite stores
    # as NULL; store/rows.py SQLITE_NULL), never a number or a text
    assert r.dns_name is None and r.duration is None and r.status is None
    with store.connect() as conn:
        nulls = conn.execute(
            select(func.count()).where(
                Flow.dns_name.is_(None), Flow.closed_ts.is_(None), Flow.geo_label.is_(None)
            )
        ).scalar()
        assert nulls == 120
        if store.dialect == "sqlite":
            kinds = conn.exec_driver_sql(
                "SELECT DISTINCT typeof(dns_name), typeof(duration), typeof(client_pid) FROM flows"
            ).all()
            assert [tuple(k) for k in kinds] == [("null", "null", "null")]
    with store.connect() as conn:
        found = conn.execute(select(FINDINGS).order_by(FindingRow.seq)).all()
    assert [(f.decision_id, f.seq, f.kind, f.redacted) for f in found] == [
        (decisions[3].id, 0, "email", "j***@example.com"),
        (decisions[3].id, 1, "email", "j***@example.com"),
    ]


def test_same_decision_twice_is_stored_once(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path)
    d = make_decision(7, findings=1)
    for _ in range(3):
        w.record(d)
        w.flush()
    w.close()
    assert count_flows(store) == 1
    assert findings_by_kind(store)[0].findings == 1


def test_batches_past_one_statement_keep_every_row_and_close(store: Store, tmp_path: Path) -> None:
    """300 decisions in one batch (SQLite: 128 + 128 + 32 + 8 + 4 rows per statement).

    Half the flows close in the batch of their decisions (folded into the rows
    before the insert), half in the next batch (an UPDATE); every flow has two
    decisions, so the earlier one must end with zero bytes either way.
    """
    w = writer_for(store, tmp_path, batch_size=10_000)
    pairs = []
    for i in range(150):
        first = make_decision(2 * i, flow_id=f"flow-{i}", ts=1000.0 + i)
        second = make_decision(2 * i + 1, flow_id=f"flow-{i}", ts=1000.5 + i)
        pairs.append((first, second))
        w.record(first)
        w.record(second)
    for i, (_, second) in enumerate(pairs[:75]):
        w.flow_closed(make_close(second, bytes_out=100 + i, bytes_in=200 + i))
    w.flush()
    for i, (_, second) in enumerate(pairs[75:], start=75):
        w.flow_closed(make_close(second, bytes_out=100 + i, bytes_in=200 + i))
    w.close()
    assert w.stats.written == 300 and w.stats.closes_pending == 0
    rows = {r.decision_id: r for r in query_flows(store, FlowFilter(), None)}
    assert len(rows) == 300
    for i, (first, second) in enumerate(pairs):
        assert (rows[first.id].bytes_out, rows[first.id].bytes_in) == (0, 0)
        got = rows[second.id]
        assert (got.bytes_out, got.bytes_in, got.status) == (100 + i, 200 + i, "200")
    assert egress_summary(store, FlowFilter())  # the report still sums them


@pytest.mark.parametrize("close_first", [False, True])
def test_flow_closed_updates_latest_row_and_zeroes_earlier(
    store: Store, tmp_path: Path, close_first: bool
) -> None:
    w = writer_for(store, tmp_path)
    hello = make_decision(1, flow_id="shared", ts=1000.0)
    request = make_decision(2, flow_id="shared", ts=1001.0)
    other = make_decision(3, ts=1002.0)
    close = make_close(request, bytes_out=5000, bytes_in=7000)
    if close_first:  # the close overtook its decisions: kept until they arrive
        w.record(hello)
        w.flush()
        w.flow_closed(FlowClosed("late-flow", Sensor.PROXY, 1003.0, 11, 22, 3.0, "reset"))
        w.flush()
        assert w.stats.closes_pending == 1
        w.record(make_decision(4, flow_id="late-flow", ts=1000.5))
        w.flush()
        assert w.stats.closes_pending == 0
    for d in (hello, request, other):
        w.record(d)
    w.flow_closed(close)
    w.close()
    rows = {r.decision_id: r for r in query_flows(store, FlowFilter(), None)}
    assert (rows[request.id].bytes_out, rows[request.id].bytes_in) == (5000, 7000)
    assert rows[request.id].duration == 1.5 and rows[request.id].status == "200"
    assert (rows[hello.id].bytes_out, rows[hello.id].bytes_in) == (0, 0)
    assert rows[other.id].bytes_out == other.observation.bytes_out
    assert rows[other.id].duration is None
    if close_first:
        late = rows[make_decision(4).id]
        assert (late.bytes_out, late.bytes_in, late.duration, late.status) == (11, 22, 3.0, "reset")


def test_dns_answers_are_stored(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path)
    w.dns_answer(DnsAnswer(10.0, "api.deepseek.com", "A", "203.0.113.9", 60, "192.0.2.5"))
    w.close()
    with store.connect() as conn:
        rows = conn.execute(text("SELECT qname, rtype, answer, ttl, node FROM dns_answers")).all()
    assert [tuple(r) for r in rows] == [("api.deepseek.com", "A", "203.0.113.9", 60, "sensor-a")]


def test_batches_commit_by_time_without_flush(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path, batch_size=10_000, flush_interval=0.2)
    try:
        for i in range(5):
            w.record(make_decision(i))
        deadline = time.monotonic() + 10
        while count_flows(store) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count_flows(store) == 5
    finally:
        w.close()


def test_record_after_close_is_counted_as_dropped(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path)
    w.close()
    w.record(make_decision(1))
    assert w.stats.dropped == 1
    assert count_flows(store) == 0


# -- queries ----------------------------------------------------------------------------------


@pytest.fixture
def filled(store: Store, tmp_path: Path) -> tuple[Store, list]:  # type: ignore[type-arg]
    now = 1_800_000_000.0
    w = writer_for(store, tmp_path)
    decisions = [
        make_decision(i, ts=now - i * 60, sensor=Sensor.SNIFFER if i % 5 == 0 else Sensor.PROXY)
        for i in range(240)
    ]
    for d in decisions:
        w.record(d)
    w.close()
    return store, decisions


def _expected(decisions: list, pred) -> set[str]:  # type: ignore[no-untyped-def,type-arg]
    return {d.id for d in decisions if pred(d)}


def _ids(store: Store, flt: FlowFilter) -> set[str]:
    return {r.decision_id for r in query_flows(store, flt, None)}


def test_filters(filled: tuple[Store, list]) -> None:  # type: ignore[type-arg]
    store, ds = filled
    now = 1_800_000_000.0
    cases = [
        (FlowFilter(since=now - 3600), lambda d: d.observation.time >= now - 3600),
        (FlowFilter(until=now - 3600), lambda d: d.observation.time < now - 3600),
        (FlowFilter(countries=("cn", "ZZ")), lambda d: d.assessment.geo.country in ("CN", None)),
        (FlowFilter(operator_countries=("CN",)), lambda d: d.assessment.operator_country == "CN"),
        (
            FlowFilter(services=("DeepSeek API", "hf")),
            lambda d: d.assessment.service.service.id in ("deepseek", "hf"),
        ),
        (
            FlowFilter(payload_types=("file-upload",)),
            lambda d: "file-upload" in d.assessment.payload_types,
        ),
        (FlowFilter(verdicts=("would-block",)), lambda d: d.verdict.label == "would-block"),
        (FlowFilter(clients=("192.0.2.3",)), lambda d: d.observation.client_addr == "192.0.2.3"),
        (FlowFilter(sensors=("sniffer",)), lambda d: d.observation.sensor == "sniffer"),
        (FlowFilter(sensors=("sensor-a",)), lambda d: True),
        (
            FlowFilter(countries=("US",), verdicts=("allow",), since=now - 7200),
            lambda d: (
                d.assessment.geo.country == "US"
                and d.verdict.label == "allow"
                and d.observation.time >= now - 7200
            ),
        ),
    ]
    for flt, pred in cases:
        expected = _expected(ds, pred)
        assert expected, flt  # each case selects something and ...
        assert expected != {d.id for d in ds} or flt.sensors, flt  # ... not everything
        assert _ids(store, flt) == expected, flt
        assert count_flows(store, flt) == len(expected)


def test_query_order_limit_and_after_id(filled: tuple[Store, list]) -> None:  # type: ignore[type-arg]
    store, ds = filled
    newest = query_flows(store, FlowFilter(), 3)
    assert [r.decision_id for r in newest] == [ds[0].id, ds[1].id, ds[2].id]
    top = latest_flow_id(store)
    assert query_flows(store, FlowFilter(after_id=top)) == []
    tail = query_flows(store, FlowFilter(after_id=top - 2), newest_first=False)
    assert [r.id for r in tail] == [top - 1, top]


def test_egress_summary_matches_python(filled: tuple[Store, list]) -> None:  # type: ignore[type-arg]
    store, ds = filled
    expect: Counter[tuple] = Counter()  # type: ignore[type-arg]
    expect_bytes: Counter[tuple] = Counter()  # type: ignore[type-arg]
    for d in ds:
        a = d.assessment
        for p in a.payload_types or ("other",):
            key = (a.service.service.id, a.geo.country or "ZZ", str(p), d.verdict.label)
            expect[key] += 1
            expect_bytes[key] += d.observation.bytes_out
    rows = egress_summary(store, FlowFilter())
    assert {(r.service_id, r.country, r.payload_type, r.verdict): r.flows for r in rows} == expect
    assert {
        (r.service_id, r.country, r.payload_type, r.verdict): r.bytes_out for r in rows
    } == expect_bytes
    assert [r.bytes_out for r in rows] == sorted((r.bytes_out for r in rows), reverse=True)


def test_top_clients_and_findings_and_buckets(filled: tuple[Store, list]) -> None:  # type: ignore[type-arg]
    store, ds = filled
    sent: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    for d in ds:
        sent[d.observation.client_addr] += d.observation.bytes_out
        blocked[d.observation.client_addr] += d.verdict.action == "block"
    top = top_clients(store, FlowFilter(), limit=3)
    assert [(c.client_addr, c.bytes_out) for c in top] == sent.most_common(3)
    assert all(c.blocked == blocked[c.client_addr] for c in top)
    kinds = findings_by_kind(store, FlowFilter())
    n = sum(len(d.assessment.findings) for d in ds)
    assert [(k.kind, k.findings) for k in kinds] == [("email", n)]
    buckets = verdicts_over_time(store, FlowFilter(), 3600)
    assert sum(b.flows for b in buckets) == len(ds)
    assert all(b.start % 3600 == 0 for b in buckets)
    per = Counter((int(d.observation.time // 3600) * 3600.0, d.verdict.label) for d in ds)
    assert {(b.start, b.verdict): b.flows for b in buckets} == per


def test_alerts_roundtrip(store: Store) -> None:
    a = insert_alert(
        store,
        AlertRecord(
            ts=100.0,
            rule="block-cn",
            severity="critical",
            client_addr="192.0.2.1",
            service_id="deepseek",
        ),
    )
    b = insert_alert(store, AlertRecord(ts=200.0, rule="block-cn", severity="critical"))
    insert_alert(store, AlertRecord(ts=300.0, rule="alert-telemetry", severity="warning"))
    update_alert(store, a, delivery_state="delivered", attempts=2, delivered_ts=101.0)
    update_alert(
        store,
        b,
        count=5,
        last_ts=250.0,
        last_error="HTTP 500",
        attempts=3,
        delivery_state="retrying",
    )
    alerts = list_alerts(store)
    assert [x.ts for x in alerts] == [300.0, 200.0, 100.0]
    assert (alerts[2].delivery_state, alerts[2].attempts, alerts[2].last_ts) == (
        "delivered",
        2,
        100.0,
    )
    assert (alerts[1].count, alerts[1].last_error) == (5, "HTTP 500")
    by_rule = {(r.rule, r.severity): r for r in alerts_by_rule(store, FlowFilter(since=150.0))}
    assert set(by_rule) == {("block-cn", "critical"), ("alert-telemetry", "warning")}
    assert by_rule[("block-cn", "critical")].occurrences == 5
    assert by_rule[("block-cn", "critical")].undelivered == 1


# -- retention --------------------------------------------------------------------------------


def test_prune_with_shorter_findings_retention(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from egresswatch.store import retention

    monkeypatch.setattr(retention, "PRUNE_CHUNK", 1)  # several chunks per table
    now = 1_800_000_000.0
    day = 86_400.0
    w = writer_for(store, tmp_path)
    for i, age in enumerate((1, 10, 40)):
        w.record(make_decision(i, ts=now - age * day, findings=1))
    w.close()
    dry = prune(store, 30 * day, 7 * day, now=now, dry_run=True)
    assert (dry.flows, dry.findings) == (1, 2)
    assert count_flows(store) == 3
    result = prune(store, 30 * day, 7 * day, now=now)
    assert (result.flows, result.findings) == (1, 2)
    ages = sorted(round((now - r.ts) / day) for r in query_flows(store, FlowFilter(), None))
    assert ages == [1, 10]
    assert findings_by_kind(store)[0].findings == 1


def test_writer_applies_retention_setting(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path, retention=Retention(flows=3600.0, interval=0.1))
    try:
        w.record(make_decision(1, ts=time.time() - 7200))
        w.record(make_decision(2, ts=time.time()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            w.flush()
            if {r.decision_id for r in query_flows(store)} == {make_decision(2).id}:
                break
            time.sleep(0.1)
        assert {r.decision_id for r in query_flows(store)} == {make_decision(2).id}
    finally:
        w.close()


def test_redact_path() -> None:
    assert redact_path("/a?key=sk-1&x=2#frag") == "/a?key=…&x=…"
    assert redact_path("/a?token") == "/a?…"
    assert redact_path("/plain") == "/plain"
    assert redact_path("/a?") == "/a"
    assert redact_path(None) is None


# -- SQLite specifics -------------------------------------------------------------------------


def test_sqlite_default_path_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EGRESSWATCH_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    store = open_store()
    w = store.writer(node="n")
    w.record(make_decision(1))
    w.flush()
    path = tmp_path / "xdg" / "egresswatch" / "egresswatch.db"
    assert store.path == path
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    with store.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    w.close()
    store.close()
    monkeypatch.setenv("EGRESSWATCH_DB", str(tmp_path / "env.db"))
    env_store = open_store()
    assert env_store.path == tmp_path / "env.db"
    env_store.close()


def test_sqlite_full_queue_is_counted(tmp_path: Path) -> None:
    """A database locked by someone else stalls the writer; the queue fills; drops are counted."""
    import sqlite3

    store = open_store(str(tmp_path / "q.db"))
    w = writer_for(store, tmp_path, queue_size=20, batch_size=5)
    blocker = sqlite3.connect(tmp_path / "q.db")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(200):
            w.record(make_decision(i))
        stats = w.stats
    finally:
        blocker.rollback()
        blocker.close()
    w.close()
    assert stats.dropped > 0
    assert stats.dropped + stats.queued == 200
    assert w.stats.written == stats.queued == count_flows(store)
    store.close()


def test_sqlite_locked_beyond_timeout_spills_and_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from egresswatch.store import engine as engine_mod

    monkeypatch.setattr(engine_mod, "SQLITE_BUSY_TIMEOUT_MS", 200)
    store = open_store(str(tmp_path / "l.db"))
    w = writer_for(store, tmp_path)
    blocker = sqlite3.connect(tmp_path / "l.db")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(100):
            w.record(make_decision(i))
        deadline = time.monotonic() + 10
        while w.stats.spilled < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.stats.spilling and w.stats.spilled == 100
        journal = tmp_path / "spill.jsonl"
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        assert "sk-secret" not in journal.read_text()
        # SQLite's stand-in for a missing value (NaN) never reaches the journal
        first = json.loads(journal.read_text().splitlines()[0])["flow"]
        assert first["dns_name"] is None and first["closed_ts"] is None
        assert "NaN" not in journal.read_text()
    finally:
        blocker.rollback()
        blocker.close()
    deadline = time.monotonic() + 15
    while w.stats.spilling and time.monotonic() < deadline:
        time.sleep(0.1)
    w.close()
    assert not w.stats.spilling and w.stats.replayed == 100
    with store.connect() as conn:
        ids = [r[0] for r in conn.execute(select(Flow.decision_id).order_by(Flow.id))]
    assert ids == [make_decision(i).id for i in range(100)]  # in order, once
    assert not (tmp_path / "spill.jsonl").exists()
    store.close()


def test_count_helpers_agree_with_sql(store: Store, tmp_path: Path) -> None:
    w = writer_for(store, tmp_path)
    for i in range(30):
        w.record(make_decision(i))
    w.close()
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(FLOWS)).scalar_one() == 30
    assert count_flows(store) == 30 == store.info().flows


def test_journal_left_by_a_stopped_writer_is_replayed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from egresswatch.store import engine as engine_mod

    monkeypatch.setattr(engine_mod, "SQLITE_BUSY_TIMEOUT_MS", 200)
    store = open_store(str(tmp_path / "j.db"))
    first = writer_for(store, tmp_path)
    blocker = sqlite3.connect(tmp_path / "j.db")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(40):
            first.record(make_decision(i))
        first.close()  # the database is still locked: the batches stay in the journal
    finally:
        blocker.rollback()
        blocker.close()
    assert first.stats.spilled == 40 and first.stats.written == 0
    assert (tmp_path / "spill.jsonl").exists() and count_flows(store) == 0
    second = writer_for(store, tmp_path)
    assert second.stats.spilling and second.stats.spill_records == 40
    second.record(make_decision(40))
    second.close()
    stats = second.stats
    assert stats.written == 41 and not stats.spilling
    # the new decision queues behind the journal if it came while the replay ran
    assert stats.replayed == 40 + stats.spilled and stats.spilled in (0, 1)
    with store.connect() as conn:
        ids = [r[0] for r in conn.execute(select(Flow.decision_id).order_by(Flow.id))]
    assert ids == [make_decision(i).id for i in range(41)]
    store.close()


def test_writers_sharing_a_spill_path_get_their_own_journals(tmp_path: Path) -> None:
    """The proxy and the sniffer on one database must not replay each other's journal."""
    store = open_store(str(tmp_path / "shared.db"))
    base = tmp_path / "spill.jsonl"
    a = store.writer(spill_path=base, node="proxy-unit")
    b = store.writer(spill_path=base, node="sniffer-unit")
    try:
        assert a.spill_path == base
        assert b.spill_path == tmp_path / "spill.jsonl.1"
        assert stat.S_IMODE((tmp_path / "spill.jsonl.lock").stat().st_mode) == 0o600
        for i in range(10):
            a.record(make_decision(i))
            b.record(make_decision(100 + i))
    finally:
        a.close()
    c = store.writer(spill_path=base)  # a's slot is free again
    try:
        assert c.spill_path == base
    finally:
        c.close()
        b.close()
    assert count_flows(store) == 20
    store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_journal_on_a_full_disk_counts_lost_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database locked and the journal's disk full: nothing silent, nothing torn."""
    import sqlite3
    import subprocess

    from egresswatch.store import engine as engine_mod

    monkeypatch.setattr(engine_mod, "SQLITE_BUSY_TIMEOUT_MS", 200)
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        # fill the disk to the last block (unbuffered: nothing left to flush on close)
        with open(full / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"x" * 4096)
        store = open_store(str(tmp_path / "full.db"))
        w = store.writer(spill_path=full / "spill.jsonl", batch_size=10, flush_interval=0.05)
        blocker = sqlite3.connect(tmp_path / "full.db")
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(30):
                w.record(make_decision(i))
            deadline = time.monotonic() + 20
            while w.stats.lost < 30 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            blocker.rollback()
            blocker.close()
        w.close()
        stats = w.stats
        assert stats.lost == 30 and stats.spilled == 0 and stats.write_errors >= 1
        assert stats.last_error is not None and "No space left" in stats.last_error
        journal = full / "spill.jsonl"
        assert not journal.exists() or journal.read_bytes() == b""  # nothing torn left
        store.close()
    finally:
        subprocess.run(["umount", str(full)], check=False)

"""The store writer in a child process (egresswatch/store/remote.py), for real.

Real child processes, a real SQLite file and (through the ``store_url`` fixture) a
real PostgreSQL server: decisions, closes and DNS answers arrive once each; a
child killed with SIGKILL is replaced and nothing is lost or doubled; a sensor
killed with SIGKILL leaves a child that commits what it had and exits; a full
queue is counted; a locked database is spilled and replayed through the child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import pg as pg_helpers
from helpers.storedata import make_close, make_decision
from sqlalchemy import func, select

from egresswatch.errors import StoreError
from egresswatch.store import FlowFilter, Store, count_flows, open_store, query_flows
from egresswatch.store.remote import RemoteWriter
from egresswatch.store.schema import DNS_ANSWERS, Flow
from egresswatch.store.writer import DnsAnswer

pg_server = pg_helpers.pg_server
store_url = pg_helpers.store_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def remote(store: Store, tmp_path: Path, **kw: object) -> RemoteWriter:
    kw.setdefault("batch_size", 50)
    kw.setdefault("flush_interval", 0.05)
    w = store.writer(spill_path=tmp_path / "spill.jsonl", node="sensor-a", process=True, **kw)  # type: ignore[arg-type]
    assert isinstance(w, RemoteWriter)
    return w


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it, or it stays a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def test_decisions_closes_and_dns_answers_arrive_once(store: Store, tmp_path: Path) -> None:
    w = remote(store, tmp_path)
    pid = w.pid
    assert pid is not None and pid != os.getpid()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "egw-store"
    decisions = [make_decision(i, findings=1 if i % 10 == 0 else 0) for i in range(300)]
    for d in decisions:
        w.record(d)
    w.flow_closed(make_close(decisions[5], bytes_out=5000, bytes_in=7000))
    w.dns_answer(DnsAnswer(time=time.time(), qname="api.openai.com", rtype="A", answer="192.0.2.7"))
    assert w.flush(30)
    s = w.stats
    assert (s.queued, s.written, s.dropped, s.lost, s.failed) == (300, 300, 0, 0, 0)
    assert s.queue_length == 0 and not s.spilling
    child = w._child
    w.close()
    w.close()  # twice is fine
    assert wait_gone(pid)
    # a clean exit, also with its stdin reader still blocked (no fatal error at shutdown)
    assert child is not None and child.proc.returncode == 0
    rows = {r.decision_id: r for r in query_flows(store, FlowFilter(), None)}
    assert set(rows) == {d.id for d in decisions}
    r = rows[decisions[5].id]
    assert (r.bytes_out, r.bytes_in, r.status, r.node) == (5000, 7000, "200", "sensor-a")
    assert r.dns_name is None  # missing values are NULL through the child too
    assert rows[decisions[10].id].findings == 1
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DNS_ANSWERS)).scalar() == 1


def test_a_killed_child_is_replaced_and_nothing_is_lost_or_doubled(
    store: Store, tmp_path: Path
) -> None:
    w = remote(store, tmp_path, batch_size=20)
    try:
        decisions = [make_decision(i) for i in range(400)]
        first = w.pid
        assert first is not None
        for d in decisions[:200]:
            w.record(d)
        os.kill(first, signal.SIGKILL)  # batches in flight die with it
        for d in decisions[200:]:
            w.record(d)
        assert w.flush(60)
        assert w.pid not in (None, first)
        assert w.stats.write_errors >= 1  # the restart is counted, not silent
    finally:
        w.close()
    with store.connect() as conn:
        ids = [r[0] for r in conn.execute(select(Flow.decision_id))]
    assert len(ids) == len(set(ids)) == 400
    assert set(ids) == {d.id for d in decisions}


def test_ctrl_c_to_the_group_does_not_stop_the_child(store: Store, tmp_path: Path) -> None:
    # a terminal's Ctrl-C (and systemd's SIGTERM) reach the child too: it waits for the sensor
    w = remote(store, tmp_path)
    try:
        pid = w.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        for i in range(50):
            w.record(make_decision(i))
        assert w.flush(30)
        assert w.pid == pid and w.stats.write_errors == 0
    finally:
        w.close()
    assert count_flows(store) == 50


def test_a_stalled_child_fills_the_queue_and_drops_are_counted(
    store: Store, tmp_path: Path
) -> None:
    w = remote(store, tmp_path, batch_size=10, queue_size=100)
    pid = w.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(3000):  # ~120 KB a batch of pickled rows fills the pipe quickly
            w.record(make_decision(i))
        deadline = time.monotonic() + 10
        while w.stats.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        s = w.stats
        assert s.dropped > 0 and s.queue_length <= s.queue_capacity == 100
    finally:
        os.kill(pid, signal.SIGCONT)
    assert w.flush(30)
    w.close()
    s = w.stats
    assert s.written + s.dropped == 3000 and s.written == count_flows(store) > 0


def test_a_database_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as e:
        RemoteWriter(
            "postgresql+psycopg://egw@127.0.0.1:1/none",
            dialect="postgresql",
            spill_path=tmp_path / "spill.jsonl",
            node="n",
        )
    assert "127.0.0.1" in str(e.value) or "connect" in str(e.value).lower()


def test_sqlite_locked_spills_and_replays_through_the_child(tmp_path: Path) -> None:
    import sqlite3

    # a lock (BEGIN EXCLUSIVE) held for longer than the child's busy timeout: it spills
    db = tmp_path / "l.db"
    store = open_store(str(db))
    w = remote(store, tmp_path)
    blocker = sqlite3.connect(db)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(60):
            w.record(make_decision(i))
        deadline = time.monotonic() + 60
        while not w.stats.spilling and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w.stats.spilling
    finally:
        blocker.rollback()
        blocker.close()
    assert w.flush(60)
    deadline = time.monotonic() + 60
    while w.stats.spilling and time.monotonic() < deadline:
        w.flush(5)
        time.sleep(0.1)
    w.close()
    assert not w.stats.spilling and w.stats.replayed == 60 and w.stats.lost == 0
    with store.connect() as conn:
        ids = [r[0] for r in conn.execute(select(Flow.decision_id).order_by(Flow.id))]
    assert ids == [make_decision(i).id for i in range(60)]  # in order, once
    store.close()


def test_a_sensor_killed_with_sigkill_leaves_a_child_that_finishes_and_exits(
    tmp_path: Path,
) -> None:
    db = tmp_path / "k.db"
    open_store(str(db)).close()
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from helpers.storedata import make_decision
        from egresswatch.store import open_store
        store = open_store({str(db)!r})
        w = store.writer(spill_path={str(tmp_path / "spill.jsonl")!r}, process=True,
                         batch_size=25, flush_interval=0.05)
        for i in range(200):
            w.record(make_decision(i))
        assert w.flush(30)
        for i in range(200, 260):
            w.record(make_decision(i))
        print(w.pid, flush=True)
        time.sleep(60)
        """
    )
    sensor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert sensor.stdout is not None
        child = int(sensor.stdout.readline())
    finally:
        sensor.kill()
        sensor.wait(10)
    assert wait_gone(child), "the writer process outlived its sensor"
    store = open_store(str(db))
    try:
        n = count_flows(store)
        assert 200 <= n <= 260  # every flushed decision, and nothing twice
        with store.connect() as conn:
            ids = [r[0] for r in conn.execute(select(Flow.decision_id))]
        assert len(ids) == len(set(ids))
    finally:
        store.close()


def test_a_child_dead_at_close_is_replaced_for_its_unacknowledged_batches(
    store: Store, tmp_path: Path
) -> None:
    w = remote(store, tmp_path, batch_size=50)
    first = w.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # it takes the batches into its pipe, never answers
    for i in range(100):
        w.record(make_decision(i))
    deadline = time.monotonic() + 10
    while w._queue and time.monotonic() < deadline:  # sent, not acknowledged
        time.sleep(0.01)
    assert not w._queue and w._unacked
    os.kill(first, signal.SIGKILL)
    assert wait_gone(first)
    w.close()
    s = w.stats
    assert s.lost == 0 and s.written == 100
    assert w.pid not in (None, first)
    assert count_flows(store) == 100

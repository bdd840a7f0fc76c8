"""Nothing lost: kill -9 mid-write, SIGTERM flush, and a real PostgreSQL outage.

The outage stops the PostgreSQL server for real (``pg_ctl stop``) for
``$EGRESSWATCH_TEST_PG_OUTAGE`` seconds (default 30, as the issue asks) while
decisions keep coming, then starts it again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import pg as pg_helpers
from helpers.pg import PgServer, why_no_postgres
from helpers.storedata import make_decision
from sqlalchemy import select

from egresswatch.store import Flow, Store, open_store

pg_server = pg_helpers.pg_server  # fixtures
store_url = pg_helpers.store_url

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OUTAGE = float(os.environ.get("EGRESSWATCH_TEST_PG_OUTAGE", "30"))

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from egresswatch.store import open_store
    from helpers.storedata import make_decision

    url, spill, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    store = open_store(url)
    if mode == "kill":
        w = store.writer(batch_size=200, flush_interval=0.05, spill_path=spill, node="child")
    else:  # "term": nothing commits by size or time before the signal
        w = store.writer(batch_size=10**6, flush_interval=3600, spill_path=spill, node="child")

        def on_term(signum, frame):
            w.close()
            print("closed", w.stats.written, flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
    i = 0
    last = -1
    deadline = time.monotonic() + 60  # bounded, whatever the parent does
    while time.monotonic() < deadline and i < 2_000_000:
        if mode == "term" and i >= 500:
            print("queued", i, flush=True)
            time.sleep(0.1)
            continue
        for _ in range(100):
            w.record(make_decision(i))
            i += 1
        n = w.stats.written
        if n != last:
            print("written", n, flush=True)
            last = n
        time.sleep(0.002)
    """
)


def _child(tmp_path: Path, url: str, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    return subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "spill.jsonl"), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _decision_ids(store: Store) -> list[str]:
    with store.connect() as conn:
        return [r[0] for r in conn.execute(select(Flow.decision_id).order_by(Flow.id))]


def test_kill_9_mid_write_keeps_every_committed_batch(store_url: str, tmp_path: Path) -> None:
    open_store(store_url).close()  # migrate before the child starts racing
    child = _child(tmp_path, store_url, "kill")
    reported = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        for line in child.stdout:
            reported = int(line.split()[1])
            if reported >= 3000 or time.monotonic() > deadline:
                break
        time.sleep(0.1)  # the writer is busy with the next batches
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
    assert reported >= 3000, "the child never committed enough to test"
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()
    store = open_store(store_url)
    try:
        ids = _decision_ids(store)
        # every batch the child saw committed is there, and batches are whole and in order:
        # the stored ids are exactly decisions 0..n-1
        assert len(ids) >= reported
        assert ids == [make_decision(i).id for i in range(len(ids))]
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_queue(tmp_path: Path, sig: signal.Signals) -> None:
    url = f"sqlite:///{tmp_path / 'term.db'}"
    open_store(url).close()
    child = _child(tmp_path, url, "term")
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("queued"):
                break
        store = open_store(url)
        assert _decision_ids(store) == []  # nothing committed yet: batch and interval are huge
        child.send_signal(sig)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == 0
    assert "closed 500" in out
    assert _decision_ids(store) == [make_decision(i).id for i in range(500)]
    store.close()


@pytest.mark.slow
def test_postgres_outage_every_decision_stored_once_in_order(tmp_path: Path) -> None:
    reason = why_no_postgres()
    if reason:
        pytest.skip(reason)
    server = PgServer(prefix="egw-pgout-")
    try:
        server.start()
        url = server.createdb("outage")
        store = open_store(url)
        w = store.writer(
            batch_size=100, flush_interval=0.1, spill_path=tmp_path / "spill.jsonl", node="n1"
        )
        stop = threading.Event()
        sent: list[int] = []

        def produce() -> None:
            i = 0
            # bounded: at most ~200 decisions/s for at most OUTAGE + 60 s
            deadline = time.monotonic() + OUTAGE + 60
            while not stop.is_set() and time.monotonic() < deadline:
                w.record(make_decision(i))
                sent.append(i)
                i += 1
                time.sleep(0.005)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            time.sleep(2)
            before = len(sent)
            server.stop("fast")
            time.sleep(OUTAGE)
            during = len(sent) - before
            spilled_while_down = w.stats.spilled
            assert w.stats.spilling
            server.start()
            time.sleep(3)
        finally:
            stop.set()
            producer.join()
        w.close(timeout=120)
        stats = w.stats
        assert during > 0 and spilled_while_down > 0
        assert stats.dropped == 0 and stats.failed == 0
        assert stats.replayed == stats.spilled >= spilled_while_down
        assert stats.written == len(sent)
        assert not stats.spilling and not (tmp_path / "spill.jsonl").exists()
        ids = _decision_ids(store)
        assert len(ids) == len(set(ids)) == len(sent)  # exactly once
        assert ids == [make_decision(i).id for i in sent]  # and in order
        store.close()
    finally:
        server.cleanup()

"""Opt-in raw body excerpts (issue #8): off by default, capped, own retention, migration 0005.

Every test runs on a real SQLite file and on a real PostgreSQL server started by
tests/helpers/pg.py (skipped with its reason where PostgreSQL is not installed).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from conftest import egresswatch_bin
from helpers import pg as pg_helpers
from helpers.storedata import make_decision
from sqlalchemy import LargeBinary, String, Text, create_engine, select, text

from egresswatch.model import Decision
from egresswatch.store import FlowFilter, Store, metadata, open_store, query_flows
from egresswatch.store.engine import _alembic_config
from egresswatch.store.retention import DAY, Retention, apply, prune
from egresswatch.store.schema import PAYLOAD_EXCERPTS, Flow

pg_server = pg_helpers.pg_server
store_url = pg_helpers.store_url

SECRET = b"sk-proj-RAWBODYSECRET0123456789abcdefXYZ"
BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"key ' + SECRET + b' pls"}]}'


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


def with_body(
    d: Decision, body: bytes, *, content_type: str | None = "application/json", truncated=False
) -> Decision:
    """The decision with a request body (and its Content-Type header) as a sensor saw it."""
    obs = d.observation
    headers = obs.headers + ((("content-type", content_type),) if content_type else ())
    obs = dataclasses.replace(obs, body=body, body_truncated=truncated, headers=headers)
    return dataclasses.replace(d, assessment=dataclasses.replace(d.assessment, observation=obs))


def excerpts(store: Store) -> dict[str, Any]:
    with store.connect() as conn:
        rows = conn.execute(select(PAYLOAD_EXCERPTS)).all()
    return {r.decision_id: r for r in rows}


def write(store: Store, tmp_path: Path, decisions: list[Decision], **kw: object) -> None:
    w = store.writer(spill_path=tmp_path / "spill.jsonl", flush_interval=0.05, **kw)  # type: ignore[arg-type]
    try:
        for d in decisions:
            w.record(d)
        assert w.flush(30)
        assert w.stats.written == len(decisions)
    finally:
        w.close()


def every_stored_value(store: Store) -> list[bytes]:
    """Every text and binary value in every table of the schema, as bytes."""
    out: list[bytes] = []
    with store.connect() as conn:
        for table in metadata.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, String | Text | LargeBinary)]
            for row in conn.execute(select(*cols)):
                for v in row:
                    if isinstance(v, str):
                        out.append(v.encode())
                    elif v is not None:
                        out.append(bytes(v))
    return out


def test_off_by_default_no_excerpt_and_the_secret_is_in_no_table(
    store: Store, tmp_path: Path
) -> None:
    decisions = [with_body(make_decision(i, findings=1), BODY) for i in range(5)]
    write(store, tmp_path, decisions)
    assert len(query_flows(store, FlowFilter())) == 5
    assert excerpts(store) == {}
    values = every_stored_value(store)
    assert values, "the scan must have read rows"
    assert not [v for v in values if SECRET in v or b"RAWBODYSECRET" in v]


def test_on_the_excerpt_is_capped_and_kept_with_its_flow(store: Store, tmp_path: Path) -> None:
    long = with_body(make_decision(1), BODY)
    short = with_body(make_decision(2), b"hi", content_type=None)
    gz = with_body(make_decision(3), b"\x1f\x8b\x08\x00binary\xff\x00", truncated=True)
    gz = dataclasses.replace(
        gz,
        assessment=dataclasses.replace(
            gz.assessment,
            observation=dataclasses.replace(
                gz.observation,
                headers=(*gz.observation.headers, ("content-encoding", "gzip")),
            ),
        ),
    )
    nobody = make_decision(4)
    write(store, tmp_path, [long, short, gz, nobody], raw_bodies=16)
    rows = excerpts(store)
    assert set(rows) == {long.id, short.id, gz.id}  # no body: no row
    assert bytes(rows[long.id].body) == BODY[:16]
    assert rows[long.id].truncated is True
    assert rows[long.id].content_type == "application/json"
    assert rows[long.id].ts == long.observation.time
    assert rows[long.id].sensor == "proxy"
    assert bytes(rows[short.id].body) == b"hi"
    assert rows[short.id].truncated is False
    assert rows[short.id].content_type is None
    # as the sensor saw it, before decoding; the sensor's own truncation is kept
    assert bytes(rows[gz.id].body) == b"\x1f\x8b\x08\x00binary\xff\x00"
    assert rows[gz.id].truncated is True
    assert rows[gz.id].content_encoding == "gzip"
    # the redaction promise holds for everything else: the secret is only in the excerpt
    write(store, tmp_path, [with_body(make_decision(9), BODY)], raw_bodies=len(BODY))
    holders = [v for v in every_stored_value(store) if SECRET in v]
    assert holders == [BODY]
    if store.path is not None:
        assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_excerpts_pruned_by_their_own_retention_while_flows_stay(
    store: Store, tmp_path: Path
) -> None:
    now = time.time()
    old = with_body(make_decision(1, ts=now - 2 * DAY), BODY)
    new = with_body(make_decision(2, ts=now - 60), BODY)
    write(store, tmp_path, [old, new], raw_bodies=64)
    assert set(excerpts(store)) == {old.id, new.id}
    result = apply(store, Retention(), now=now)  # flows 30 days, excerpts 1 day
    assert (result.excerpts, result.flows) == (1, 0)
    assert set(excerpts(store)) == {new.id}
    assert {r.decision_id for r in query_flows(store, FlowFilter())} == {old.id, new.id}


def test_excerpts_never_outlive_their_flows(store: Store, tmp_path: Path) -> None:
    now = time.time()
    d = with_body(make_decision(1, ts=now - 3 * DAY), BODY)
    write(store, tmp_path, [d], raw_bodies=64)
    result = prune(store, 2 * DAY, None, None, None, 10 * DAY, now=now)
    assert (result.flows, result.excerpts) == (1, 1)
    assert excerpts(store) == {}


def test_writer_prunes_excerpts_by_itself(store: Store, tmp_path: Path) -> None:
    now = time.time()
    old = with_body(make_decision(1, ts=now - 7200), BODY)
    new = with_body(make_decision(2, ts=now - 5), BODY)
    w = store.writer(
        spill_path=tmp_path / "spill.jsonl",
        flush_interval=0.05,
        raw_bodies=32,
        retention=Retention(excerpts=3600, interval=0.2),
    )
    try:
        w.record(old)
        w.record(new)
        assert w.flush(30)
        deadline = time.monotonic() + 15
        while old.id in excerpts(store) and time.monotonic() < deadline:
            w.record(make_decision(100 + int(time.monotonic() * 10) % 1000))  # keeps it busy
            time.sleep(0.1)
        assert set(excerpts(store)) == {new.id}
        assert {old.id, new.id} <= {r.decision_id for r in query_flows(store, FlowFilter())}
    finally:
        w.close()


def test_excerpt_survives_the_spill_journal(tmp_path: Path) -> None:
    """A batch spilled while the database is unreachable keeps its excerpt for the replay."""
    db = tmp_path / "egw.db"
    store = open_store(f"sqlite:///{db}")
    try:
        d = with_body(make_decision(1), BODY)
        w = store.writer(spill_path=tmp_path / "spill.jsonl", flush_interval=0.05, raw_bodies=20)
        try:
            records = [w._decision_record(d)]
            w._spill(records)  # as the writer does when the database is unreachable
            line = json.loads(w.spill_path.read_text().splitlines()[0])
            assert base64.b64decode(line["x"]["body"]) == BODY[:20]
            w._spilling = True
            w._retry_at = 0.0
            assert w.flush(30)
        finally:
            w.close()
        assert bytes(excerpts(store)[d.id].body) == BODY[:20]
    finally:
        store.close()


def test_upgrade_from_0004_keeps_data_and_adds_the_table(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO flows (decision_id, flow_id, ts, sensor, transport, protocol, "
                "country, geo_source, payload_types, flags, findings, verdict, action, mode, "
                "bytes_out, bytes_in) VALUES ('old4', 'f1', 1.0, 'proxy', 'tcp', 'https', 'US', "
                "'mmdb', ',chat-prompt,', ',', 0, 'allow', 'allow', 'monitor', 10, 20)"
            )
        )
    engine.dispose()
    store = open_store(store_url)
    try:
        assert store.revision() == "0005"
        assert [r.decision_id for r in query_flows(store, FlowFilter())] == ["old4"]
        assert excerpts(store) == {}
        with store.connect() as conn:
            assert conn.execute(select(Flow.bytes_out)).scalars().all() == [10]
    finally:
        store.close()


def test_cli_db_excerpt_shows_it_with_a_warning(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    d = with_body(make_decision(1), BODY + b"\x00\x1b[2J")
    try:
        write(store, tmp_path, [d], raw_bodies=len(BODY) + 5)
    finally:
        store.close()
    res = run("db", "excerpt", "--db", store_url, d.id)
    assert res.returncode == 0, res.stderr
    assert b"RAW request data" in res.stderr
    assert SECRET in res.stdout
    assert b"\x1b" not in res.stdout  # a control byte cannot reach the terminal
    assert b"truncated: False" in res.stdout
    res = run("db", "excerpt", "--db", store_url, "--json", d.id)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert base64.b64decode(doc["body_base64"]) == BODY + b"\x00\x1b[2J"
    assert doc["decision_id"] == d.id
    res = run("db", "excerpt", "--db", store_url, "--raw", d.id)
    assert res.stdout == BODY + b"\x00\x1b[2J"
    res = run("db", "excerpt", "--db", store_url, "nope")
    assert res.returncode == 3
    assert b"no raw body excerpt for decision 'nope'" in res.stderr
    assert b"Traceback" not in res.stderr


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The real CLI (its error handling and exit codes included)."""
    return subprocess.run([egresswatch_bin(), *args], capture_output=True, timeout=60, check=False)


def test_raw_bodies_must_not_be_negative(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'egw.db'}")
    try:
        with pytest.raises(ValueError, match="raw_bodies must be >= 0"):
            store.writer(spill_path=tmp_path / "s.jsonl", raw_bodies=-1)
    finally:
        store.close()


def test_retention_refuses_a_non_positive_excerpt_age() -> None:
    with pytest.raises(ValueError, match="retention excerpts must be positive"):
        Retention(excerpts=0)

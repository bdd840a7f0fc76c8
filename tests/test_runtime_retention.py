"""The retention and raw-body settings, from egresswatch.toml / env / flags through
``runtime.build_sinks`` to a real store (SQLite file and PostgreSQL, issues #3 and #8)."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest
from conftest import egresswatch_bin
from helpers import pg as pg_helpers
from helpers.ports import free_port, wait_port
from helpers.proxyrun import kill_all, post_chat, start_server, stop_when_recorded
from helpers.storedata import make_decision
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from egresswatch import config as cfg
from egresswatch.errors import ConfigError
from egresswatch.model import Decision
from egresswatch.runtime import Settings, build_sinks
from egresswatch.store import FlowFilter, open_store, query_flows
from egresswatch.store.retention import DAY, Retention
from egresswatch.store.schema import PAYLOAD_EXCERPTS

pg_server = pg_helpers.pg_server
store_url = pg_helpers.store_url

BODY = b'{"messages":[{"content":"my key sk-RUNTIMESECRET0123456789"}]}'


def with_body(d: Decision, body: bytes) -> Decision:
    obs = dataclasses.replace(d.observation, body=body)
    return dataclasses.replace(d, assessment=dataclasses.replace(d.assessment, observation=obs))


def test_defaults_keep_30_days_and_no_raw_body() -> None:
    s = Settings()
    assert s.retention == Retention()
    assert s.retention is not None
    assert (s.retention.flows, s.retention.excerpts) == (30 * DAY, 1 * DAY)
    assert s.raw_bodies == 0
    run = cfg.load(None, env={}).settings()
    assert run.retention == Retention()
    assert run.raw_bodies == 0


def test_build_sinks_passes_retention_and_raw_bodies_and_prunes_old_flows(
    store_url: str, tmp_path: Path
) -> None:
    now = time.time()
    old = with_body(make_decision(1, ts=now - 3 * 3600), BODY)
    new = with_body(make_decision(2, ts=now - 10), BODY)
    settings = Settings(
        db_url=store_url,
        metrics_listen=None,
        sensor_name="ret1",
        alert_log=tmp_path / "alerts.jsonl",
        spill_path=tmp_path / "spill.jsonl",
        retention=Retention(flows=2 * 3600, interval=0.2),
        raw_bodies=10,
    )
    sinks = build_sinks(settings, CollectorRegistry())
    try:
        assert sinks.writer is not None
        assert sinks.writer.retention == settings.retention
        assert sinks.writer.raw_bodies == 10
        sinks.record(old)
        sinks.record(new)
        assert sinks.writer.flush(30)
        store = sinks.store
        assert store is not None
        deadline = time.monotonic() + 15
        ids = {r.decision_id for r in query_flows(store, FlowFilter())}
        while old.id in ids and time.monotonic() < deadline:
            sinks.record(make_decision(1000 + len(ids), ts=time.time()))  # wakes the writer
            time.sleep(0.1)
            ids = {r.decision_id for r in query_flows(store, FlowFilter())}
        assert old.id not in ids
        assert new.id in ids
        with store.connect() as conn:
            rows = {r.decision_id: bytes(r.body) for r in conn.execute(select(PAYLOAD_EXCERPTS))}
        assert rows == {new.id: BODY[:10]}  # the old one went with its flow
    finally:
        sinks.close()


def test_default_settings_store_no_body(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'egw.db'}"
    settings = Settings(db_url=url, metrics_listen=None, alert_log=tmp_path / "a.jsonl")
    sinks = build_sinks(settings, CollectorRegistry())
    try:
        assert sinks.writer is not None
        assert sinks.writer.retention == Retention()
        sinks.record(with_body(make_decision(1), BODY))
        assert sinks.writer.flush(30)
    finally:
        sinks.close()
    store = open_store(url)
    try:
        with store.connect() as conn:
            assert conn.execute(select(PAYLOAD_EXCERPTS)).all() == []
        assert len(query_flows(store, FlowFilter())) == 1
    finally:
        store.close()


def test_config_file_env_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "egresswatch.toml"
    path.write_text(
        "[store]\n"
        'retention = "90d"\n'
        'findings_retention = "7d"\n'
        'raw_bodies = "4k"\n'
        'raw_body_retention = "12h"\n'
    )
    c = cfg.load(path, env={})
    s = c.settings()
    assert s.retention == Retention(flows=90 * DAY, findings=7 * DAY, excerpts=12 * 3600)
    assert s.raw_bodies == 4096
    assert c.origins["store.raw_bodies"] == f"{path}:4"
    c = cfg.load(
        path, env={"EGRESSWATCH_STORE_RETENTION": "off", "EGRESSWATCH_STORE_RAW_BODIES": "0"}
    )
    s = c.settings()
    assert s.retention is not None
    assert s.retention.flows is None  # kept forever
    assert s.retention.excerpts == 12 * 3600
    assert s.raw_bodies == 0
    # the effective configuration printed by --print-config reads back the same
    again = tmp_path / "again.toml"
    again.write_text(c.as_toml())
    assert cfg.load(again, env={}).settings().retention == s.retention


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ('[store]\nenabled = true\nretention = "30x"\n', 3, "store.retention", "not a duration"),
        ("[store]\nretention = 0\n", 2, "store.retention", "longer than zero"),
        ('[store]\n\nraw_bodies = "lots"\n', 3, "store.raw_bodies", "not a size"),
        ("[store]\nraw_bodies = -5\n", 2, "store.raw_bodies", "negative"),
        ('[store]\nraw_body_retention = "off"\n', 2, "store.raw_body_retention", "duration"),
        ("[store]\nfindings_retention = true\n", 2, "store.findings_retention", "boolean"),
    ],
)
def test_config_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert message in str(err)


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="EGRESSWATCH_STORE_RAW_BODY_RETENTION"):
        cfg.load(None, env={"EGRESSWATCH_STORE_RAW_BODY_RETENTION": "soon"})


def test_run_flags_parse_and_refuse(tmp_path: Path) -> None:
    env_args = ["run", "--print-config", "--retention", "14d", "--raw-bodies", "2k"]
    res = subprocess.run(
        [egresswatch_bin(), *env_args], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "retention = 1209600.0  # flag --retention" in res.stdout
    assert "raw_bodies = 2048  # flag --raw-bodies" in res.stdout
    res = subprocess.run(
        [egresswatch_bin(), "run", "--print-config", "--raw-body-retention", "1y"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert "--raw-body-retention" in res.stderr
    assert "not a duration" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("raw_bodies", [None, "16"])
def test_real_proxy_stores_a_raw_body_only_when_asked(
    tmp_path: Path, raw_bodies: str | None
) -> None:
    """mitmdump in the real ``egresswatch proxy``, curl as the client, a loopback server."""
    server_port, proxy_port = free_port(), free_port()
    server = start_server(server_port, tmp_path / "server.jsonl")
    db = tmp_path / "flows.db"
    args = [egresswatch_bin(), "proxy", "--listen", f"127.0.0.1:{proxy_port}"]
    args += ["--confdir", str(tmp_path / "conf"), "--db", f"sqlite:///{db}", "--no-metrics"]
    if raw_bodies is not None:
        args += ["--raw-bodies", raw_bodies]
    proxy = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    body = '{"messages": [{"role": "user", "content": "sk-PROXYSECRET0123456789abcdef"}]}'
    try:
        wait_port(proxy_port, proxy)
        post_chat(proxy_port, server_port, body)
        err = stop_when_recorded(proxy, db)
    finally:
        kill_all(proxy, server)
    assert ("Raw bodies: the first 16 bytes" in err) == (raw_bodies is not None)
    store = open_store(f"sqlite:///{db}")
    try:
        flows = query_flows(store, FlowFilter())
        with store.connect() as conn:
            rows = conn.execute(select(PAYLOAD_EXCERPTS)).all()
            kept = [(r.decision_id, bytes(r.body), r.truncated, r.content_type) for r in rows]
    finally:
        store.close()
    assert [f.path for f in flows] == ["/v1/chat/completions"]
    if raw_bodies is None:
        assert kept == []
        assert b"PROXYSECRET" not in db.read_bytes()
        return
    assert kept == [(flows[0].decision_id, body.encode()[:16], True, "application/json")]
    shown = subprocess.run(
        [egresswatch_bin(), "db", "excerpt", "--db", str(db), "--raw", flows[0].decision_id],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shown.stdout == body.encode()[:16]

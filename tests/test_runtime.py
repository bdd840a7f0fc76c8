"""runtime.build_sinks: the parts start, record, and close; nothing is silent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import helpers.pg as pg_helpers
import pytest
from prometheus_client import CollectorRegistry

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
from egresswatch.runtime import Settings, build_sinks

pg_server = pg_helpers.pg_server
store_url = pg_helpers.store_url


def _decision(action: Action) -> Decision:
    obs = Observation(
        sensor=Sensor.PROXY,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS,
        dst_addr="203.0.113.10",
        dst_port=443,
        client_addr="127.0.0.1",
        http_host="api.deepseek.com",
        method="POST",
        path="/chat/completions?key=secret",
    )
    a = Assessment(
        observation=obs,
        host="api.deepseek.com",
        geo=GeoAnswer("CN", GeoSource.MAXMIND),
        service=None,
        payload_types=(PayloadType.CHAT_PROMPT,),
        findings=(),
    )
    return Decision(a, Verdict(action, "jurisdiction", "CN is not approved", Mode.MONITOR))


def test_decisions_and_alerts_land_in_the_store_and_the_alert_log(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # for a server database the default alert log lives in the data folder, which a
    # fresh machine does not have yet
    data = tmp_path / "fresh" / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    settings = Settings(db_url=store_url, metrics_listen=None, sensor_name="t1")
    sinks = build_sinks(settings, CollectorRegistry())
    try:
        sinks.record(_decision(Action.BLOCK))
        sinks.record(_decision(Action.ALLOW))
        sinks.flow_closed(FlowClosed("x", Sensor.PROXY, 0.0, 1, 2, 0.1))
    finally:
        sinks.close()
    if store_url.startswith("sqlite"):
        db = Path(store_url.removeprefix("sqlite:///"))
        log = db.with_name(db.name + ".alerts.jsonl")
    else:
        [log] = (data / "egresswatch").glob("*.alerts.jsonl")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [x["rule"] for x in lines] == ["jurisdiction"]
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    from egresswatch.store import open_store
    from egresswatch.store.queries import FlowFilter, list_alerts, query_flows

    store = open_store(store_url)
    try:
        rows = query_flows(store, FlowFilter(), limit=10)
        assert len(rows) == 2
        assert all("secret" not in (r.path or "") for r in rows)
        alerts = list_alerts(store)
        assert [a.rule for a in alerts] == ["jurisdiction"]
        assert alerts[0].delivery_state == "delivered"
    finally:
        store.close()


def test_unreachable_database_fails_with_store_error_and_starts_nothing(tmp_path: Path) -> None:
    from egresswatch.errors import StoreError

    settings = Settings(
        db_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        metrics_listen=("127.0.0.1", 0),
        sensor_name="t2",
    )
    with pytest.raises(StoreError):
        build_sinks(settings, CollectorRegistry())

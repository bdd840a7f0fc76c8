"""deploy/ end to end: real egresswatch, real traffic, a real Prometheus, every shipped PromQL.

The three-namespace lab (tests/helpers/lab.py): a client namespace, a gateway running two
egresswatch sensors (``egresswatch run``, or ``egresswatch proxy`` where run is missing;
one in monitor mode with the shipped default policy, one forced to enforce: two gateways
in one Prometheus, as in deploy/README.md)
and a Debian Prometheus on the gateway's loopback, and an "internet" namespace with the
logging HTTPS test server (tests/helpers/servers.py) on documentation addresses that the
lab GeoIP database places in the US and China.

Prometheus gets deploy/prometheus/prometheus.yml and the shipped rule file, changed only
where a test must: the two targets, a 1 s scrape/evaluation interval and every ``for:``
shortened to 1 s. Then every expression of the dashboards and rule files is asked through
the HTTP API. Each either returns data or is listed in EXPECTED_EMPTY with the reason it
legitimately has no sample in this lab, together with a witness expression that must
return data (so "empty" means "the threshold is not crossed", not "a wrong name").
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import egresswatch_bin, is_root
from helpers.geoip import build_lab_db
from helpers.lab import INTERNET_V4, InternetLab, internet_lab, wait_for
from helpers.pg import PgServer, why_no_postgres
from helpers.prom import (
    PROMETHEUS,
    RULES,
    Expr,
    Prometheus,
    grafana_to_promql,
    shipped_expressions,
)
from helpers.servers import LabPKI, make_pki

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not is_root(), reason="needs root for namespaces"),
    pytest.mark.skipif(PROMETHEUS is None, reason="needs prometheus (Debian package)"),
]

HOSTS = {
    "api.openai.com": INTERNET_V4["us"],
    "api.deepseek.com": INTERNET_V4["cn"],
    # reached without the proxy: the sniffer's bypass witness (service deepseek-chat)
    "chat.deepseek.com": INTERNET_V4["cn"],
}
PROXY = {"e2e-monitor": 8080, "e2e-enforce": 8081}
METRICS = {"e2e-monitor": 9731, "e2e-enforce": 9732}
PROM_PORT = 9090
ROOT = Path(__file__).resolve().parent.parent

#: key (panel id + refId, or alert name) -> (why it has no sample here, witness expression)
EXPECTED_EMPTY: dict[str, tuple[str, str]] = {
    "EgressWatchAlertDeliveryFailing": (
        "the default log channel delivers every alert",
        'egresswatch_alert_notifications_total{channel="log",state="delivered"} > 0',
    ),
    "EgressWatchSensorDown": ("both sensors are up", 'up{job="egresswatch"} == 1'),
    "EgressWatchStoreBacklog": (
        "the SQLite writer keeps up with a handful of flows",
        "egresswatch_store_queue_length / egresswatch_store_queue_capacity",
    ),
    "EgressWatchStoreDropping": ("nothing is dropped", "egresswatch_store_dropped_total == 0"),
    "EgressWatchStoreLosing": (
        "the disk has room",
        "egresswatch_store_lost_total == 0",
    ),
    "EgressWatchStoreSpilling": (
        "the database is reachable",
        "egresswatch_store_spill_records == 0",
    ),
    "EgressWatchGeoIPStale": (
        "the lab GeoIP database was built seconds ago",
        "egresswatch_geoip_database_age_seconds < 3600",
    ),
}
#: core panels/rules whose answer must also be a positive number after the traffic
CORE_POSITIVE = {"1A", "2A", "3A", "4A", "5A", "8A", "9A", "10A", "11A", "14A"}


@dataclass
class E2ELab:
    net: InternetLab
    tmp: Path
    pki: LabPKI
    prom: Prometheus
    sensors: dict[str, subprocess.Popen[bytes]]
    #: the one database both gateways write to (PostgreSQL when the Debian server is here)
    store: str

    def curl(self, sensor: str, url: str, body: dict[str, Any]) -> tuple[int, str]:
        ca = self.tmp / sensor / "mitm" / "mitmproxy-ca-cert.pem"
        res = self.net.lab.sh(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
            "--cacert", str(ca), "-x", f"http://10.77.1.1:{PROXY[sensor]}",
            "-H", "content-type: application/json", "--data-binary", json.dumps(body), url,
            ns=self.net.client, check=False,
        )  # fmt: skip
        return res.returncode, res.stdout

    def curl_direct(self, url: str) -> tuple[int, str]:
        """A client that ignores the proxy: only the sniffer sees it."""
        res = self.net.lab.sh(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
            "--noproxy", "*", "--cacert", str(self.pki.ca_cert), url,
            ns=self.net.client, check=False,
        )  # fmt: skip
        return res.returncode, res.stdout


def _prometheus_config(tmp: Path) -> Path:
    """The shipped config with the lab's targets, fast intervals and short ``for``s."""
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    rules = RULES.read_text()
    rules, n = re.subn(r"(?m)^(\s+for:) \S+$", r"\1 1s", rules)
    assert n >= 8
    (tmp / "rules").mkdir()
    (tmp / "rules" / RULES.name).write_text(rules)
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = shipped["scrape_configs"]
    assert job["job_name"] == "egresswatch"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in METRICS.values()]}]
    assert shipped["rule_files"] == [f"rules/{RULES.name}"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(shipped))
    return path


def _sensor_argv(
    sensor: str, port: int, tmp: Path, db: Path, pki: LabPKI, net: InternetLab, store: str
) -> list[str]:
    argv = [
        egresswatch_bin(), "run",
        "--listen", f"10.77.1.1:{port}",
        "--metrics-listen", f"127.0.0.1:{METRICS[sensor]}",
        "--sensor-name", sensor,
        "--country-db", str(db), "--asn-db", str(db), "--geoip-dir", str(tmp),
        "--db", store,
        "--confdir", str(tmp / sensor / "mitm"),
        "--upstream-ca", str(pki.ca_cert),
        "--no-process-lookup",
        "--pid-file", str(tmp / sensor / "egresswatch.pid"),
    ]  # fmt: skip
    if sensor == "e2e-enforce":
        argv += ["--mode", "enforce"]
    else:
        # the shipped default policy (monitor mode), and the sniffer on the LAN side: the
        # witness for the client that goes around the proxy
        argv += ["--interface", net.client_iface]
    return argv


@contextlib.contextmanager
def _central_store(tmp: Path) -> Iterator[str]:
    """One database for both gateways: a real PostgreSQL when the Debian server is here.

    The server listens on the root namespace's loopback; the sensors in the gateway
    namespace reach it through its Unix socket (a path, not bound to a network namespace),
    so no lab traffic crosses into the host's network.
    """
    if why_no_postgres() is not None:
        yield f"sqlite:///{tmp / 'central.db'}"
        return
    with PgServer(fsync=False) as server:
        server.createdb("egresswatch")
        url = f"postgresql+psycopg://postgres@/egresswatch?host={server.sock}&port={server.port}"
        # migrate once before the sensors start (deploy/README.md: the central store)
        res = subprocess.run(
            [egresswatch_bin(), "db", "upgrade", "--db", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        yield url


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ELab]:
    tmp = tmp_path_factory.mktemp("prom-e2e")
    pki = make_pki(tmp / "pki", list(HOSTS), list(INTERNET_V4.values()))
    db = build_lab_db(tmp / "lab.mmdb")
    with _central_store(tmp) as store, internet_lab("pe", hosts=HOSTS, v6=False) as net:
        lab = net.lab
        lab.spawn(
            net.internet,
            [
                __import__("sys").executable, str(ROOT / "tests/helpers/servers.py"),
                "--bind", INTERNET_V4["us"], "--bind", INTERNET_V4["cn"], "--https", "443",
                "--cert", str(pki.cert), "--key", str(pki.key), "--log", str(tmp / "srv.jsonl"),
            ],
            ready="READY",
        )  # fmt: skip
        sensors = {}
        for sensor, port in PROXY.items():
            # the data directory exists, as on an installed system (run with a PostgreSQL
            # URL does not create it before opening its default alert log there)
            (tmp / sensor / "data" / "egresswatch").mkdir(parents=True)
            proc = sensors[sensor] = lab.spawn(
                net.gateway,
                _sensor_argv(sensor, port, tmp, db, pki, net, store),
                log=tmp / sensor / "egresswatch.log",
                # each sensor its own data directory (pid and state files)
                env={"XDG_DATA_HOME": str(tmp / sensor / "data"), "HOME": str(tmp / sensor)},
            )
            lab.wait_listen(net.gateway, port, proc=proc, timeout=40)
            lab.wait_listen(net.gateway, METRICS[sensor], proc=proc, timeout=10)
        prom = Prometheus(_prometheus_config(tmp), tmp, port=PROM_PORT, ns=net.gateway)
        with prom:
            yield E2ELab(net, tmp, pki, prom, sensors, store)


def _traffic(lab: E2ELab) -> None:
    prompt = {"model": "x", "messages": [{"role": "user", "content": "mail alice@example.org"}]}
    for sensor in PROXY:
        rc, code = lab.curl(sensor, "https://api.openai.com/v1/chat/completions", prompt)
        assert (rc, code) == (0, "200"), (sensor, rc, code)
        rc, code = lab.curl(sensor, "https://api.deepseek.com/v1/chat/completions", prompt)
        if sensor == "e2e-monitor":
            assert (rc, code) == (0, "200"), (rc, code)  # monitor: would-block, goes on
        else:
            assert code != "200", (rc, code)  # enforce: blocked at the ClientHello
    rc, code = lab.curl_direct("https://chat.deepseek.com/")
    assert rc == 0 and code.isdigit(), (rc, code)  # the server answered: nothing stopped it


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


@pytest.fixture(scope="module")
def scraped(e2e: E2ELab) -> E2ELab:
    """Two rounds of traffic, each seen by Prometheus (so increase() has two samples)."""
    prom = e2e.prom
    assert prom.wait(lambda: len(prom.query('up{job="egresswatch"} == 1')) == 2, 40), prom.tail()
    _traffic(e2e)
    assert prom.wait(lambda: prom.query("egresswatch_findings_total"), 20), prom.tail()
    time.sleep(2)  # a few scrapes at the first round's values
    _traffic(e2e)

    def second_round_seen() -> bool:
        res = prom.query('sum(egresswatch_flows_total{service="openai-api"})')
        return bool(res) and _value(res[0]) >= 4

    assert prom.wait(second_round_seen, 20), prom.tail()
    time.sleep(2)
    return e2e


def _firing(prom: Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_an_alert_fires_for_a_flow_to_an_unapproved_country(scraped: E2ELab) -> None:
    prom = scraped.prom
    name = "EgressWatchDataToUnapprovedJurisdiction"
    assert prom.wait(lambda: _firing(prom, name), 20), prom.alerts()
    by_key = {
        (a["labels"]["sensor"], a["labels"]["service"], a["labels"]["country"]): a
        for a in _firing(prom, name)
    }
    alert = by_key[("e2e-monitor", "deepseek-api", "CN")]
    assert alert["labels"]["severity"] == "critical"
    assert "outside the approved jurisdictions" in alert["annotations"]["summary"]
    # never for the approved US destination, never on the enforcing sensor (it blocked)
    assert [k for k in by_key if k[2] == "US" or k[0] == "e2e-enforce"] == []
    blocked = {
        (a["labels"]["sensor"], a["labels"]["service"], a["labels"]["country"])
        for a in _firing(prom, "EgressWatchEgressBlocked")
    }
    assert blocked == {("e2e-enforce", "deepseek-api", "CN")}
    # the allowed US flows carried an e-mail address: sensitive data, on both sensors
    sensitive = {
        (a["labels"]["sensor"], a["labels"]["service"], a["labels"]["country"], a["labels"]["kind"])
        for a in _firing(prom, "EgressWatchSensitiveDataEgress")
    }
    assert {("e2e-monitor", "openai-api", "US", "email"),
            ("e2e-enforce", "openai-api", "US", "email")} <= sensitive  # fmt: skip


def test_the_bypass_alert_fires_for_a_client_that_avoids_the_proxy(scraped: E2ELab) -> None:
    prom = scraped.prom
    name = "EgressWatchProxyBypass"
    assert prom.wait(lambda: _firing(prom, name), 20), prom.alerts()
    bypass = {(a["labels"]["sensor"], a["labels"]["service"]) for a in _firing(prom, name)}
    # chat.deepseek.com went straight out; api.openai.com and api.deepseek.com went through
    # the proxy, which inspected them, so the sniffer's sight of them is no bypass
    assert bypass == {("e2e-monitor", "deepseek-chat")}


def _cases() -> list[Expr]:
    return shipped_expressions()


@pytest.mark.parametrize("case", _cases(), ids=lambda e: e.key)
def test_every_shipped_expression_answers(scraped: E2ELab, case: Expr) -> None:
    prom = scraped.prom
    expr = grafana_to_promql(case.expr, rng="5m", rate="1m")
    result = prom.query(expr)  # raises on a PromQL error
    if case.key in EXPECTED_EMPTY:
        reason, witness = EXPECTED_EMPTY[case.key]
        assert result == [], f"{case.origin}: expected empty ({reason}), got {result}"
        assert prom.query(witness), f"{case.origin}: witness {witness!r} has no data either"
        return
    assert result, f"{case.origin}: no data for {expr}"
    if case.key in CORE_POSITIVE:
        assert any(_value(s) > 0 for s in result), (case.origin, result)


def test_expected_empty_keys_exist() -> None:
    keys = {e.key for e in _cases()}
    assert set(EXPECTED_EMPTY) <= keys
    assert keys >= CORE_POSITIVE


def test_operator_and_destination_country_answers(scraped: E2ELab) -> None:
    prom = scraped.prom
    by_key = {e.key: e for e in _cases()}
    res = prom.query(grafana_to_promql(by_key["3A"].expr))
    operator = {s["metric"]["operator_country"]: _value(s) for s in res}
    assert operator.get("CN", 0) > 0 and operator.get("US", 0) > 0, operator
    res = prom.query(grafana_to_promql(by_key["1A"].expr))
    assert {s["metric"]["country"] for s in res} == {"CN", "US"}
    # the sensor variable's query: both gateways
    res = prom.query("group by (sensor) (egresswatch_build_info)")
    assert {s["metric"]["sensor"] for s in res} == set(PROXY)


def test_both_gateways_record_to_one_database(scraped: E2ELab) -> None:
    """The several-gateway layout: both sensors' decisions in the one central store."""
    if not scraped.store.startswith("postgresql"):
        pytest.skip(f"no PostgreSQL server here ({why_no_postgres()}); the store was SQLite")
    from egresswatch.store import FlowFilter, open_store, query_flows

    rows: list[Any] = []

    def both() -> bool:
        nonlocal rows
        store = open_store(scraped.store, migrate=False)
        try:
            rows = list(query_flows(store, FlowFilter(services=("deepseek-api",)), limit=500))
        finally:
            store.close()
        return {r.node for r in rows} >= set(PROXY)

    assert wait_for(both, timeout=15, step=0.5), [(r.node, r.verdict) for r in rows]
    verdicts = {(r.node, r.verdict) for r in rows if r.sensor == "proxy"}
    assert ("e2e-monitor", "would-block") in verdicts and ("e2e-enforce", "block") in verdicts
    assert all(r.country == "CN" for r in rows if r.sensor == "proxy")


def test_sensor_down_fires_when_a_sensor_stops(scraped: E2ELab) -> None:
    """Last in this module: it stops the enforcing sensor (SIGTERM: a clean exit 0)."""
    prom = scraped.prom
    proc = scraped.sensors["e2e-enforce"]
    scraped.net.lab.stop(proc)
    assert proc.returncode == 0, (scraped.tmp / "e2e-enforce" / "egresswatch.log").read_text()
    assert prom.wait(lambda: _firing(prom, "EgressWatchSensorDown"), 30), prom.alerts()
    (alert,) = _firing(prom, "EgressWatchSensorDown")
    assert alert["labels"]["instance"] == f"127.0.0.1:{METRICS['e2e-enforce']}"
    assert alert["labels"]["severity"] == "critical"
    # the panel "Sensors up" shows it: one 1, one 0
    values = sorted(float(s["value"][1]) for s in prom.query('up{job="egresswatch"}'))
    assert values == [0.0, 1.0]

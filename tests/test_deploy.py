"""deploy/: Prometheus config and rules, Grafana provisioning and dashboards, systemd, compose.

Real tools where they exist here: promtool (check config, check rules, test rules, and
PromQL syntax of every dashboard expression through a generated rule file),
systemd-analyze (verify, security --offline). Docker is not available: compose files are
checked structurally (pinned images, mounts that exist, the several-gateway variant).
The end-to-end test with a real Prometheus is tests/test_prometheus_e2e.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.prom import (
    DATASOURCES,
    DEPLOY,
    PROMTOOL,
    RULES,
    dashboard_panels,
    dashboards,
    grafana_to_promql,
    rules,
    shipped_expressions,
)
from helpers.sinks import decision, email_finding
from prometheus_client import CollectorRegistry

from egresswatch.metrics import GeoDatabase, Metrics, StoreStats
from egresswatch.model import Action, FlowClosed, Mode, Sensor

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian prometheus)")
PROM_DIR = DEPLOY / "prometheus"


def _promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


# -- Prometheus --------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_config() -> None:
    res = _promtool("check", "config", PROM_DIR / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout


@needs_promtool
def test_promtool_check_rules() -> None:
    res = _promtool("check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(rules())} rules found" in res.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    tests = sorted((PROM_DIR / "tests").glob("*.yml"))
    assert tests
    res = _promtool("test", "rules", *tests)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_every_alert_rule_has_a_unit_test() -> None:
    tested: set[str] = set()
    for path in (PROM_DIR / "tests").glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        for t in doc["tests"]:
            for case in t.get("alert_rule_test", []):
                if case.get("exp_alerts"):  # a test that expects the alert to fire
                    tested.add(case["alertname"])
    names = {r["alert"] for r in rules() if "alert" in r}
    assert names - tested == set(), "rules never shown to fire in a promtool test"


def test_alert_rules_are_complete() -> None:
    names = []
    for r in rules():
        name = r["alert"]
        names.append(name)
        assert re.fullmatch(r"EgressWatch[A-Z][A-Za-z]+", name), name
        assert re.fullmatch(r"\d+[smh]", str(r["for"])), (name, r.get("for"))
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert r["annotations"]["summary"].strip(), name
        assert len(r["annotations"]["description"]) > 60, name
    assert len(names) == len(set(names))
    # the issue's list: jurisdiction, sensitive data, bypass, sensor down, store, GeoIP
    for wanted in (
        "EgressWatchDataToUnapprovedJurisdiction",
        "EgressWatchSensitiveDataEgress",
        "EgressWatchProxyBypass",
        "EgressWatchSensorDown",
        "EgressWatchStoreBacklog",
        "EgressWatchStoreDropping",
        "EgressWatchGeoIPStale",
    ):
        assert wanted in names


@needs_promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard expression as a recording rule (after Grafana's vars)."""
    panel_exprs = [e for e in shipped_expressions() if e.kind == "panel"]
    assert len(panel_exprs) >= 20
    doc = {
        "groups": [
            {
                "name": "dashboard-syntax",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e.expr)}
                    for i, e in enumerate(panel_exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(doc))
    res = _promtool("check", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(panel_exprs)} rules found" in res.stdout
    # and a broken one is refused: the check can fail
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "x",
                        "rules": [
                            {
                                "record": "dashboard:bad",
                                "expr": grafana_to_promql("sum by (x (rate(a[$__range]))"),
                            }
                        ],
                    }
                ]
            }
        )
    )
    assert _promtool("check", "rules", path).returncode != 0


# -- metric names ------------------------------------------------------------------------

#: PromQL words that are not metric names (functions, aggregations, keywords)
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "topk",
    "bottomk",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "label_replace",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "absent",
    "vector",
    "time",
}
#: series Prometheus itself makes: the scrape's health and the alert state
PROMETHEUS_SERIES = {"up", "ALERTS"}


def exported_names() -> set[str]:
    """Every sample name a real Metrics exposes, after one decision of each kind."""
    registry = CollectorRegistry()
    m = Metrics(registry, sensor_name="gw1", known_services={"deepseek-api"})
    m.watch_store(lambda: StoreStats(queue_length=1, queue_capacity=10, dropped=1))
    m.watch_geoip(lambda: [GeoDatabase("GeoLite2-Country", 1_700_000_000)])
    d = decision(findings=(email_finding(),), action=Action.BLOCK, mode=Mode.MONITOR, flow_id="f")
    m.record(d)
    m.flow_closed(FlowClosed("f", Sensor.PROXY, 0.0, 300, 4000, 1.0))
    m.alert_state({"channel": "webhook", "state": "failed"})
    m.bypass(d)
    m.watch_sniffer(lambda: {"packets": 5, "kernel_drops": 0, "malformed": {"short-ip": 1}})
    names = set()
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
    return names


def metric_names_in(expr: str) -> set[str]:
    """Metric names of a PromQL expression: identifiers outside strings, matchers, grouping."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    words = set(re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)", text))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", w)}


def test_metric_name_extraction_sees_names() -> None:
    assert metric_names_in(
        'sum by (a, b) (rate(x_total{a=~"y|z"}[5m])) / on (a) group_left (c) up offset 1h'
    ) == {"x_total", "up"}
    assert metric_names_in('label_replace(sum(q{s="or"}), "l", "v", "", "")') == {"q"}


def test_every_metric_used_in_deploy_exists_in_metrics_py() -> None:
    exported = exported_names()
    assert "egresswatch_store_dropped_total" in exported  # sanity: collectors are included
    used: dict[str, str] = {}
    for e in shipped_expressions():
        names = metric_names_in(e.expr)
        assert names, f"{e.origin}: no metric in {e.expr!r}"
        for name in names:
            used.setdefault(name, e.origin)
    missing = {n: o for n, o in used.items() if n not in exported | PROMETHEUS_SERIES}
    assert missing == {}
    # any egresswatch_* word anywhere in deploy/ (README, compose, units ...) too
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in {".yml", ".yaml", ".json", ".md", ".service"}:
            for name in set(re.findall(r"\begresswatch_[a-z0-9_]+", path.read_text())):
                if name.startswith(("egresswatch_prometheus", "egresswatch_grafana")):
                    continue
                assert name in exported, f"{path.relative_to(DEPLOY)}: {name}"


# -- Grafana -----------------------------------------------------------------------------


def _provisioned_uid() -> str:
    (path,) = DATASOURCES.glob("*.yml")
    doc = yaml.safe_load(path.read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus"
    return str(ds["uid"])


def _datasource_refs(node: Any) -> list[Any]:
    refs = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                refs.append(v)
            else:
                refs.extend(_datasource_refs(v))
    elif isinstance(node, list):
        for v in node:
            refs.extend(_datasource_refs(v))
    return refs


def test_dashboards_use_the_provisioned_datasource_uid() -> None:
    uid = _provisioned_uid()
    assert uid == "egresswatch-prometheus"
    docs = dashboards()
    assert docs
    for path, doc in docs.items():
        refs = _datasource_refs(doc)
        assert refs, path
        for ref in refs:
            assert ref == {"type": "prometheus", "uid": uid}, (path.name, ref)
        for p in dashboard_panels(doc):
            if p["type"] != "row":
                assert p["datasource"]["uid"] == uid and p["targets"], p["title"]


def test_dashboard_provider_points_at_the_dashboards() -> None:
    (path,) = (DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(path.read_text())["providers"]
    assert provider["type"] == "file"
    mount = provider["options"]["path"]
    # compose mounts deploy/grafana/dashboards exactly there
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert any(v.endswith(f":{mount}:ro") and "grafana/dashboards" in v for v in volumes)


def test_dashboard_uids_ids_and_sensor_variable() -> None:
    seen_uids = set()
    for path, doc in dashboards().items():
        assert re.fullmatch(r"egresswatch-[a-z0-9-]+", doc["uid"]), path
        assert doc["uid"] not in seen_uids
        seen_uids.add(doc["uid"])
        ids = [p["id"] for p in dashboard_panels(doc)]
        assert len(ids) == len(set(ids)), "panel ids must be unique and stable"
        (var,) = [v for v in doc["templating"]["list"] if v["name"] == "sensor"]
        assert "egresswatch_build_info" in var["definition"] and var["multi"]
        assert var["includeAll"] and var["allValue"] == ".*"
        for p in dashboard_panels(doc):
            for t in p.get("targets", []):
                if metric_names_in(t["expr"]) <= PROMETHEUS_SERIES:
                    # up{} is the scrape's (no sensor label); the firing-alerts table shows
                    # every sensor because EgressWatchSensorDown has only an instance
                    continue
                assert 'sensor=~"$sensor"' in t["expr"], (p["title"], t["expr"])


def test_dashboard_covers_the_issue() -> None:
    (doc,) = [d for d in dashboards().values() if d["uid"] == "egresswatch-overview"]
    panels = dashboard_panels(doc)
    kinds = {p["type"] for p in panels}
    assert "geomap" in kinds
    text = " ".join(
        p["title"].lower() + " " + " ".join(t["expr"] for t in p.get("targets", [])) for p in panels
    )
    for needle in (
        "destination country",
        "operator country",
        "by service",
        "payload_type",
        "would-block",
        "findings by kind",
        "bypass",
        "top sensors",
        "store queue",
        "dropped",
        "geoip",
        "egresswatch_store_spill_records",
    ):
        assert needle in text, needle
    (geo,) = [p for p in panels if p["type"] == "geomap"]
    (layer,) = geo["options"]["layers"]
    assert layer["location"] == {
        "mode": "lookup",
        "lookup": "country",
        "gazetteer": "public/gazetteer/countries.json",
    }
    assert geo["targets"][0]["instant"] and "by (country)" in geo["targets"][0]["expr"]


def test_dashboard_is_generated_from_the_catalog() -> None:
    res = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    # the operator-country mapping follows the shipped catalog
    from egresswatch.catalog import Catalog

    (doc,) = dashboards().values()
    (panel,) = [p for p in dashboard_panels(doc) if p["title"] == "Flows by operator country"]
    expr = panel["targets"][0]["expr"]
    for service in Catalog.load().services:
        block = re.search(
            rf'service=~"([^"]*\b{re.escape(service.id)}\b[^"]*)"\}}\[\$__range\]\)\), '
            rf'"operator_country", "([A-Z]{{2}})"',
            expr,
        )
        assert block, service.id
        assert block.group(2) == service.operator_country, service.id
        assert service.id in block.group(1).split("|")


# -- systemd -----------------------------------------------------------------------------

SYSTEMD = DEPLOY / "systemd"
INSTALLED_BIN = "/opt/egresswatch/.venv/bin/egresswatch"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}
#: unit -> the only capabilities it may have
CAPABILITIES = {
    "egresswatch-proxy.service": "",
    "egresswatch-sniffer.service": "CAP_NET_RAW",
    "egresswatch.service": "CAP_NET_RAW",
    "egresswatch-gateway.service": "CAP_NET_ADMIN",
}


def parse_unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values (keys may repeat; backslash continues a line)."""
    out: dict[str, list[str]] = {}
    section = ""
    logical = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_units_are_hardened_with_least_capabilities() -> None:
    units = sorted(SYSTEMD.glob("*.service"))
    assert {u.name for u in units} == set(CAPABILITIES)
    for unit in units:
        keys = parse_unit(unit)
        for key, value in HARDENING.items():
            assert keys.get(f"Service.{key}") == [value], (unit.name, key)
        caps = CAPABILITIES[unit.name]
        assert keys["Service.CapabilityBoundingSet"] == [caps], unit.name
        assert keys["Service.AmbientCapabilities"] == [caps], unit.name
        assert keys["Service.ExecStart"][0].startswith(INSTALLED_BIN), unit.name
        if unit.name != "egresswatch-gateway.service":
            # only the gateway's set-up may write /proc/sys/net; the sensors run unprivileged
            assert keys["Service.DynamicUser"] == ["yes"], unit.name
            assert keys["Service.ProtectKernelTunables"] == ["yes"], unit.name
        families = keys["Service.RestrictAddressFamilies"][0].split()
        assert ("AF_PACKET" in families) == (caps == "CAP_NET_RAW"), unit.name


def _installable_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's egresswatch (verify needs it)."""
    from conftest import egresswatch_bin

    copies = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_BIN, egresswatch_bin()))
        copies.append(copy)
    return copies


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    copies = _installable_copies(tmp_path)
    res = subprocess.run(
        ["systemd-analyze", "verify", *map(str, copies)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    for copy in copies:
        res = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(copy)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
        assert m, res.stdout[-500:] + res.stderr
        # systemd's scale: 0 (locked down) .. 10 (unprotected); below 3 rates "OK"
        assert float(m.group(1)) < 3.0, (copy.name, m.group(1))
    # the check can fail: an unknown directive is reported
    bad = tmp_path / "bad.service"
    bad.write_text(copies[0].read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert "NoNewPrivilege" in res.stderr


def _unit_command(unit: Path, key: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """A unit's command as systemd would run it, with its Environment= and paths under tmp."""
    import os
    import shlex

    from conftest import egresswatch_bin

    keys = parse_unit(unit)

    def local(text: str) -> str:
        return (
            text.replace(INSTALLED_BIN, egresswatch_bin())
            .replace("/var/lib/egresswatch", str(tmp / "state"))
            .replace("/run/", f"{tmp}/run/")
        )

    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSWATCH_")}
    env["HOME"] = str(tmp)
    for line in keys.get("Service.Environment", []):
        name, _, value = line.partition("=")
        env[name] = local(value)
    command = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], keys[f"Service.{key}"][0])
    return shlex.split(local(command)), env


def test_unit_commands_are_accepted_by_the_real_cli(tmp_path: Path) -> None:
    """Every ExecStart/ExecStop, expanded like systemd, runs: `run --check`, gateway --dry-run."""
    (tmp_path / "run").mkdir()
    for unit in sorted(SYSTEMD.glob("*.service")):
        keys = parse_unit(unit)
        for key in ("ExecStart", "ExecStop"):
            if f"Service.{key}" not in keys:
                continue
            argv, env = _unit_command(unit, key, tmp_path)
            if argv[1] == "run":
                argv.append("--check")  # load everything, print the banner, exit
                files = keys.get("Service.EnvironmentFile", [])
                if "-/etc/egresswatch/sniffer.env" in files:
                    env["EGRESSWATCH_SNIFFER_INTERFACES"] = "lo"  # what sniffer.env sets
            else:
                assert argv[1] == "gateway", argv
                argv.append("--dry-run")
            res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
            out = res.stdout + res.stderr
            assert res.returncode == 0, (unit.name, argv, out[-2000:])
            if argv[1] == "run":
                proxy = "Proxy: transparent on 0.0.0.0:8080" in out
                sniffer = "Sniffer: capturing on lo" in out
                # the proxy unit (no CAP_NET_RAW) never reads sniffer.env, so never captures;
                # the sniffer unit never proxies
                assert (proxy, sniffer) == {
                    "egresswatch.service": (True, True),
                    "egresswatch-proxy.service": (True, False),
                    "egresswatch-sniffer.service": (False, True),
                }[unit.name], out
                assert str(tmp_path / "state") in out  # the database in the state directory
            elif key == "ExecStart":
                assert "redirect to :8080" in out and "udp dport 443 drop" in out
            else:
                assert "nft delete table inet egresswatch" in out


# -- compose -----------------------------------------------------------------------------

COMPOSE = DEPLOY / "compose"
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.-]+)?(@sha256:[0-9a-f]{64})?$")


def _compose(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE / name).read_text())
    return doc


@pytest.mark.parametrize("name", ["compose.yml", "compose.multi.yml"])
def test_compose_images_pinned_and_mounts_exist(name: str) -> None:
    doc = _compose(name)
    services = doc["services"]
    assert {"egresswatch", "prometheus", "grafana"} <= set(services)
    for sname, svc in services.items():
        assert PINNED.match(svc["image"]), (sname, svc["image"])
        assert not svc["image"].endswith(":latest")
        if "build" in svc:
            dockerfile = COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), dockerfile
            froms = re.findall(r"(?m)^FROM\s+(\S+)", dockerfile.read_text())
            assert froms and all(PINNED.match(f) for f in froms), froms
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), (sname, volume)
            else:
                assert source in doc["volumes"], (sname, volume)  # a named volume
        if sname != "postgres":  # the official image needs its own user switching
            assert svc.get("cap_drop") == ["ALL"], sname
            assert "no-new-privileges:true" in svc.get("security_opt", []), sname
    # provisioning and dashboards are mounted where Grafana and the provider look
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning/datasources"] == "../grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "../grafana/provisioning/dashboards"
    prom = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config = COMPOSE / prom["/etc/prometheus/prometheus.yml"]
    assert yaml.safe_load(config.read_text())["rule_files"] == ["rules/egresswatch.rules.yml"]
    assert prom["/etc/prometheus/rules"] == "../prometheus/rules"
    # the proxy has no capabilities; Prometheus and Grafana listen on loopback
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


@needs_promtool
def test_compose_multi_gateway_variant() -> None:
    doc = _compose("compose.multi.yml")
    services = doc["services"]
    assert services["egresswatch"]["profiles"] == ["gateway"]
    for central in ("postgres", "prometheus", "grafana"):
        assert services[central]["profiles"] == ["central"]
    env = services["egresswatch"]["environment"]
    # a sensor name is required per gateway; all of them write to the one PostgreSQL
    assert env["EGRESSWATCH_SENSOR"].startswith("${EGRESSWATCH_SENSOR:?")
    assert "postgresql+psycopg://" in env["EGRESSWATCH_DB"]
    config = PROM_DIR / "prometheus.multi.yml"
    res = _promtool("check", "config", config)
    assert res.returncode == 0, res.stdout + res.stderr
    (job,) = yaml.safe_load(config.read_text())["scrape_configs"]
    assert job["job_name"] == "egresswatch"
    assert len(job["static_configs"][0]["targets"]) >= 2


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (the forms used in deploy/compose)."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        assert op != ":?", f"{name} is required: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


@pytest.mark.parametrize("name", ["compose.yml", "compose.multi.yml"])
def test_compose_egresswatch_command_runs_on_the_real_cli(name: str, tmp_path: Path) -> None:
    """The egresswatch service's command and environment, as compose would pass them."""
    import os

    from conftest import egresswatch_bin

    svc = _compose(name)["services"]["egresswatch"]
    outer = {
        "EGRESSWATCH_SENSOR": "gw2",
        "EGRESSWATCH_DB": f"sqlite:///{tmp_path}/central.db",  # stands for the PostgreSQL URL
    }
    if name == "compose.yml":
        outer = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSWATCH_")}
    env["HOME"] = str(tmp_path)
    for key, value in svc["environment"].items():
        value = _interpolate(str(value), outer)
        env[key] = value.replace("/var/lib/egresswatch", str(tmp_path / "state")).replace(
            "/opt/egresswatch/geoip", str(DEPLOY.parent / "geoip")
        )
    command = [_interpolate(str(c), outer) for c in svc["command"]]
    res = subprocess.run(
        [egresswatch_bin(), *command, "--check"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert "Proxy: transparent on 0.0.0.0:8080" in out
    sensor = "gw2" if name == "compose.multi.yml" else "lab-gw"
    assert f"sensor '{sensor}'" in out
    metrics = "0.0.0.0:9721" if name == "compose.multi.yml" else "127.0.0.1:9721"
    assert f"Metrics: http://{metrics}/metrics" in out
    if name == "compose.multi.yml":
        # without a sensor name the variant refuses to start instead of defaulting
        with pytest.raises(AssertionError, match="EGRESSWATCH_SENSOR is required"):
            _interpolate(svc["environment"]["EGRESSWATCH_SENSOR"], {})

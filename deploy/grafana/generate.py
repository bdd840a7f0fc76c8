"""Write deploy/grafana/dashboards/egresswatch-overview.json (run after a catalog change).

    .venv/bin/python deploy/grafana/generate.py          # rewrite the dashboard
    .venv/bin/python deploy/grafana/generate.py --check  # exit 1 if it is out of date

The dashboard is generated rather than hand-edited for one reason: "flows by operator
country" needs the catalog's service -> operator country table, and metrics carry only
the service id (an operator country label would be redundant on every series). The
table is written into the PromQL as one ``label_replace`` per operator country, so it
must follow the shipped catalog; tests/test_deploy.py fails when it does not.

Every panel uses the provisioned datasource uid ``egresswatch-prometheus``
(provisioning/datasources/egresswatch.yml); uids and panel ids are stable, so links
and provisioned copies survive regeneration.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "egresswatch-overview.json"
DATASOURCE = {"type": "prometheus", "uid": "egresswatch-prometheus"}
DASHBOARD_UID = "egresswatch-overview"
SEL = 'sensor=~"$sensor"'
_ID = re.compile(r"[a-z0-9][a-z0-9-]*")


def _operator_countries() -> dict[str, list[str]]:
    """operator country -> sorted catalog service ids, from the shipped catalog."""
    sys.path.insert(0, str(HERE.parent.parent))
    from egresswatch.catalog import Catalog

    by_country: dict[str, list[str]] = defaultdict(list)
    for service in Catalog.load().services:
        by_country[service.operator_country].append(service.id)
    return {c: sorted(ids) for c, ids in sorted(by_country.items())}


def operator_country_expr(table: dict[str, list[str]]) -> str:
    """Flows per operator country: one label_replace per country, joined with ``or``."""
    parts = []
    for country, ids in table.items():
        # ids are [a-z0-9-] (checked): no regex or PromQL string escaping needed
        bad = [i for i in ids if not _ID.fullmatch(i)]
        if bad:
            raise SystemExit(f"service ids need escaping in PromQL: {bad}")
        regex = "|".join(ids)
        parts.append(
            "label_replace(sum(increase(egresswatch_flows_total{"
            f'{SEL},service=~"{regex}"'
            f'}}[$__range])), "operator_country", "{country}", "", "")'
        )
    # service="other": not in the catalog (or a lookalike), operator unknown
    parts.append(
        "label_replace(sum(increase(egresswatch_flows_total{"
        f'{SEL},service="other"'
        '}[$__range])), "operator_country", "unknown", "", "")'
    )
    return "\nor ".join(parts)


def target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> dict:
    t: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "refId": ref}
    if legend:
        t["legendFormat"] = legend
    if instant:
        t.update(instant=True, range=False, format="table")
    else:
        t.update(range=True)
    return t


def panel(
    pid: int,
    kind: str,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[dict],
    *,
    description: str = "",
    unit: str = "short",
    options: dict | None = None,
    transformations: list[dict] | None = None,
) -> dict:
    x, y, w, h = grid
    p: dict[str, Any] = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options or {},
    }
    if transformations:
        p["transformations"] = transformations
    return p


def row(pid: int, title: str, y: int) -> dict:
    return {
        "id": pid,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def _bars() -> dict:
    return {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        "showUnfilled": True,
    }


def _table_sort(field: str) -> dict:
    return {"showHeader": True, "sortBy": [{"displayName": field, "desc": True}]}


def _organize(exclude: tuple[str, ...] = ("Time",)) -> list[dict]:
    return [{"id": "organize", "options": {"excludeByName": {k: True for k in exclude}}}]


def dashboard(table: dict[str, list[str]]) -> dict:
    flows = f"egresswatch_flows_total{{{SEL}}}"
    panels: list[dict] = [
        row(100, "Egress: where data goes", 0),
        panel(
            1,
            "geomap",
            "Egress by destination country",
            (0, 1, 12, 11),
            [
                target(
                    "sum by (country) (increase(egresswatch_flows_total"
                    f'{{{SEL},country!="ZZ"}}[$__range]))',
                    instant=True,
                )
            ],
            description="Flows in the time range by the country of the destination address "
            "(GeoIP). ZZ (unknown) has no place on a map: see the bar chart.",
            options={
                "view": {"id": "zero", "lat": 20, "lon": 0, "zoom": 1},
                "controls": {"showZoom": True, "mouseWheelZoom": False},
                "basemap": {"type": "default", "name": "Basemap"},
                "layers": [
                    {
                        "type": "markers",
                        "name": "Flows",
                        "config": {
                            "showLegend": True,
                            "style": {
                                "size": {"field": "Value", "fixed": 5, "min": 4, "max": 30},
                                "color": {"field": "Value", "fixed": "dark-green"},
                                "opacity": 0.6,
                            },
                        },
                        "location": {
                            "mode": "lookup",
                            "lookup": "country",
                            "gazetteer": "public/gazetteer/countries.json",
                        },
                        "tooltip": True,
                    }
                ],
                "tooltip": {"mode": "details"},
            },
        ),
        panel(
            2,
            "bargauge",
            "Flows by destination country",
            (12, 1, 6, 11),
            [
                target(
                    f"topk(20, sum by (country) (increase({flows}[$__range])))",
                    "{{country}}",
                    instant=True,
                )
            ],
            description="Country of the destination address; ZZ is unknown.",
            options=_bars(),
        ),
        panel(
            3,
            "bargauge",
            "Flows by operator country",
            (18, 1, 6, 11),
            [target(operator_country_expr(table), "{{operator_country}}", instant=True)],
            description="Legal home of the company that runs the service (shipped catalog; "
            "generated by deploy/grafana/generate.py). 'unknown': hosts not in the catalog.",
            options=_bars(),
        ),
        panel(
            4,
            "timeseries",
            "Flows by service",
            (0, 12, 12, 8),
            [target(f"sum by (service) (rate({flows}[$__rate_interval]))", "{{service}}")],
            description="Catalogued services by id; everything else is 'other'.",
            unit="reqps",
        ),
        panel(
            5,
            "timeseries",
            "Payload types",
            (12, 12, 12, 8),
            [
                target(
                    "sum by (payload_type) (rate(egresswatch_payloads_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{payload_type}}",
                )
            ],
            description="Decisions by the payload type they carried (chat prompt, "
            "credential, telemetry ...).",
            unit="reqps",
        ),
        panel(
            6,
            "timeseries",
            "Bytes sent by service",
            (0, 20, 12, 8),
            [
                target(
                    "sum by (service) (rate(egresswatch_sent_bytes_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{service}}",
                )
            ],
            description="Bytes clients sent, counted when a flow closes.",
            unit="Bps",
        ),
        panel(
            7,
            "table",
            "Service × country × payload type",
            (12, 20, 12, 8),
            [
                target(
                    "sum by (service, country, payload_type, verdict) "
                    f"(increase(egresswatch_payloads_total{{{SEL}}}[$__range])) > 0",
                    instant=True,
                )
            ],
            description="Decisions in the time range.",
            options=_table_sort("Value"),
            transformations=_organize(),
        ),
        row(101, "Policy: blocks, findings, alerts", 28),
        panel(
            8,
            "timeseries",
            "Blocked and would-block",
            (0, 29, 12, 8),
            [
                target(
                    "sum by (verdict) (rate(egresswatch_blocked_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{verdict}}",
                )
            ],
            description="block: stopped (enforce mode). would-block: the policy would stop it, "
            "the sensor runs in monitor mode and let it go.",
            unit="reqps",
        ),
        panel(
            9,
            "table",
            "Blocked and would-block by service and country",
            (12, 29, 12, 8),
            [
                target(
                    "sum by (service, country, verdict) "
                    f"(increase(egresswatch_blocked_total{{{SEL}}}[$__range])) > 0",
                    instant=True,
                )
            ],
            options=_table_sort("Value"),
            transformations=_organize(),
        ),
        panel(
            10,
            "timeseries",
            "Findings by kind",
            (0, 37, 12, 8),
            [
                target(
                    "sum by (kind) (rate(egresswatch_findings_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{kind}}",
                )
            ],
            description="Sensitive items found in payloads (e-mail, API key, card ...). "
            "The database keeps redacted evidence only.",
            unit="reqps",
        ),
        panel(
            11,
            "bargauge",
            "Findings by kind and service",
            (12, 37, 12, 8),
            [
                target(
                    "sum by (kind, service) "
                    f"(increase(egresswatch_findings_total{{{SEL}}}[$__range]))",
                    "{{kind}} → {{service}}",
                    instant=True,
                )
            ],
            options=_bars(),
        ),
        panel(
            12,
            "table",
            "Firing egresswatch alerts",
            (0, 45, 12, 8),
            [target('ALERTS{alertname=~"EgressWatch.*", alertstate="firing"}', instant=True)],
            description="Alerts of deploy/prometheus/rules/egresswatch.rules.yml firing now, "
            "all sensors (EgressWatchSensorDown has no sensor label).",
            transformations=_organize(("Time", "Value", "__name__", "alertstate")),
        ),
        panel(
            13,
            "timeseries",
            "Bypass: flows around the proxy",
            (12, 45, 12, 8),
            [
                target(
                    "sum by (sensor, service, country) (increase(egresswatch_bypass_flows_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "bypass {{sensor}} {{service}} {{country}}",
                ),
                target(
                    f"sum by (source) (rate({flows}[$__rate_interval]))",
                    "{{source}}",
                    ref="B",
                ),
                target(
                    'sum by (sensor, service) (ALERTS{alertname="EgressWatchProxyBypass", '
                    f'alertstate="firing",{SEL}}})',
                    "alert {{sensor}} {{service}}",
                    ref="C",
                ),
            ],
            description="Flows the sniffer saw leave that the proxy never handled (QUIC, DNS "
            "over HTTPS, hard-coded addresses, other ports), next to the flow rate per source "
            "and the EgressWatchProxyBypass alert. The alert log names client and destination.",
        ),
        panel(
            14,
            "bargauge",
            "Top sensors",
            (0, 53, 12, 8),
            [
                target(
                    f"topk(10, sum by (sensor, source) (increase({flows}[$__range])))",
                    "{{sensor}} ({{source}})",
                    instant=True,
                )
            ],
            description="Flows per gateway and source. Client addresses are never metric "
            "labels (unbounded, and personal data): top clients are in "
            "`egresswatch report` (from the database).",
            options=_bars(),
        ),
        panel(
            15,
            "table",
            "Alert notifications",
            (12, 53, 12, 8),
            [
                target(
                    "sum by (sensor, channel, state) "
                    f"(increase(egresswatch_alert_notifications_total{{{SEL}}}[$__range]))",
                    instant=True,
                )
            ],
            description="egresswatch's own alert channels (log, webhook, Slack, syslog) by "
            "delivery state. Empty when no channel is configured.",
            transformations=_organize(),
        ),
        row(102, "Sensor health", 61),
        panel(
            16,
            "stat",
            "Sensors up",
            (0, 62, 6, 6),
            [target('up{job="egresswatch"}', "{{instance}}")],
            description="Prometheus' scrape of each sensor (1 up, 0 down).",
            options={
                "colorMode": "background",
                "graphMode": "none",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        ),
        panel(
            17,
            "timeseries",
            "Store queue",
            (6, 62, 9, 6),
            [
                target(f"egresswatch_store_queue_length{{{SEL}}}", "{{sensor}} queued"),
                target(
                    f"egresswatch_store_queue_capacity{{{SEL}}}", "{{sensor}} capacity", ref="B"
                ),
            ],
            description="Decisions waiting for the database writer, and the queue's size.",
        ),
        panel(
            18,
            "timeseries",
            "Store drops and spill journal",
            (15, 62, 9, 6),
            [
                target(
                    "sum by (sensor) (increase(egresswatch_store_dropped_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{sensor}} dropped",
                ),
                target(
                    f"egresswatch_store_spill_records{{{SEL}}}", "{{sensor}} spilled", ref="B"
                ),
                target(
                    "sum by (sensor) (increase(egresswatch_capture_dropped_packets_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{sensor}} capture drops",
                    ref="C",
                ),
            ],
            description="Dropped: the queue was full, the decision is not in the database. "
            "Spilled: the database is unreachable, decisions wait in the local journal. "
            "Capture drops: packets the kernel dropped before the sniffer read them.",
        ),
        panel(
            19,
            "bargauge",
            "GeoIP database age",
            (0, 68, 8, 6),
            [
                target(
                    f"egresswatch_geoip_database_age_seconds{{{SEL}}}",
                    "{{sensor}} {{database}}",
                    instant=True,
                )
            ],
            description="Time since each MaxMind-format database was built. "
            "EgressWatchGeoIPStale fires past 45 days. The registry fallback has no age here.",
            unit="s",
            options=_bars(),
        ),
        panel(
            20,
            "timeseries",
            "Inspector latency",
            (8, 68, 10, 6),
            [
                target(
                    "histogram_quantile(0.99, sum by (le, sensor) "
                    "(rate(egresswatch_decision_duration_seconds_bucket"
                    f"{{{SEL}}}[$__rate_interval])))",
                    "p99 {{sensor}}",
                ),
                target(
                    "histogram_quantile(0.5, sum by (le, sensor) "
                    "(rate(egresswatch_decision_duration_seconds_bucket"
                    f"{{{SEL}}}[$__rate_interval])))",
                    "p50 {{sensor}}",
                    ref="B",
                ),
            ],
            description="Time the inspector took per observation.",
            unit="s",
        ),
        panel(
            21,
            "table",
            "Versions",
            (18, 68, 6, 6),
            [target(f"egresswatch_build_info{{{SEL}}}", instant=True)],
            transformations=_organize(("Time", "Value", "__name__")),
        ),
    ]
    return {
        "uid": DASHBOARD_UID,
        "title": "egresswatch: AI egress",
        "description": "Where AI clients send data: destination and operator countries, "
        "services, payload types, blocks, findings, bypasses and sensor health.",
        "tags": ["egresswatch"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "sensor",
                    "label": "Sensor",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(egresswatch_build_info, sensor)",
                        "refId": "sensor",
                    },
                    "definition": "label_values(egresswatch_build_info, sensor)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                }
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(_operator_countries()), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

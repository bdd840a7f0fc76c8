"""Report: built from a real SQLite store, rendered four ways, the HTML checked in Chromium."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import helpers.pg as pg_helpers
import pytest
from click.testing import CliRunner
from helpers.chromium import count_color, dump_dom, needs_chromium, read_png, screenshot
from helpers.sinks import OPENAI, decision, email_finding

from egresswatch.cli import cli
from egresswatch.commands.report import TimeType
from egresswatch.model import Action, Finding, FindingKind, FlowClosed, Mode, PayloadType
from egresswatch.report import (
    Report,
    bucket_for,
    build_report,
    human_bytes,
    render_html,
    render_json,
    render_markdown,
    render_text,
)
from egresswatch.store import AlertRecord, Store, insert_alert, open_store

# fixtures: every store-backed test runs on a real SQLite file and a real PostgreSQL
pg_server = pg_helpers.pg_server
store_url = pg_helpers.store_url

NOW = 1_795_000_000.0  # a fixed "now" (2026-11-18), so buckets and windows are exact
HOUR = 3600.0


def _write(store: Store, items: list[tuple[object, int]], spill: Path) -> None:
    writer = store.writer(spill_path=spill)
    for d, sent in items:
        writer.record(d)  # type: ignore[arg-type]
        o = d.observation  # type: ignore[attr-defined]
        writer.flow_closed(FlowClosed(o.flow_id, o.sensor, o.time + 1, sent, sent // 10, 1.0))
    writer.close()


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A real SQLite file, and a real PostgreSQL, with a known mix of flows, findings, alerts."""
    s = open_store(store_url)
    api_key = Finding(FindingKind.API_KEY, "sk-...abcd", "header:authorization")
    block = {"action": Action.BLOCK, "mode": Mode.ENFORCE, "rule": "no-cn"}
    items = [
        # three prompts to DeepSeek in CN, blocked, from one client
        *[
            (decision(at=NOW - 2 * HOUR + i, client="10.0.0.1", **block), 1000)  # type: ignore[arg-type]
            for i in range(3)
        ],
        # two OpenAI flows in the US with prompt + file upload, allowed, from another client
        *[
            (
                decision(
                    service=OPENAI,
                    host="api.openai.com",
                    country="US",
                    at=NOW - 5 * HOUR + i,
                    client="10.0.0.2",
                    payload_types=(PayloadType.CHAT_PROMPT, PayloadType.FILE_UPLOAD),
                    findings=(email_finding(), email_finding()) if i == 0 else (api_key,),
                ),
                5000,
            )
            for i in range(2)
        ],
        # telemetry to an unknown place, would-block in monitor mode
        (
            decision(
                service=None,
                host="t.example.net",
                country=None,
                action=Action.BLOCK,
                mode=Mode.MONITOR,
                rule="unknown",
                payload_types=(PayloadType.TELEMETRY,),
                at=NOW - 1 * HOUR,
                client="10.0.0.3",
            ),
            100,
        ),
        # an alert verdict
        (
            decision(
                action=Action.ALERT,
                rule="watch-cn",
                at=NOW - 30 * 60,
                client="10.0.0.3",
                payload_types=(PayloadType.TELEMETRY,),
            ),
            50,
        ),
        # two days old: outside a 24 h report
        (decision(at=NOW - 48 * HOUR, client="10.0.0.9"), 999_999),
    ]
    _write(s, items, tmp_path / "spill.jsonl")
    insert_alert(
        s,
        AlertRecord(
            ts=NOW - 2 * HOUR,
            last_ts=NOW - 2 * HOUR + 2,
            rule="no-cn",
            severity="critical",
            count=3,
            client_addr="10.0.0.1",
            service_id="deepseek",
            country="CN",
            summary="block: chat-prompt to DeepSeek API (address in CN) from 10.0.0.1",
            sink="webhook",
            delivery_state="delivered",
        ),
    )
    insert_alert(
        s,
        AlertRecord(
            ts=NOW - 30 * 60,
            rule="watch-cn",
            severity="warning",
            sink="webhook",
            delivery_state="failed",
            last_error="HTTP 500",
        ),
    )
    yield s
    s.close()


@pytest.fixture
def report(store: Store) -> Report:
    return build_report(store, NOW - 24 * HOUR, NOW)


def test_totals_and_verdicts(report: Report) -> None:
    t = report.totals
    assert (t.flows, t.allow, t.alert, t.would_block, t.block) == (7, 2, 1, 1, 3)
    assert t.bytes_out == 3 * 1000 + 2 * 5000 + 100 + 50
    assert report.findings_total == 3


def test_countries_ranked_by_bytes_sent(report: Report) -> None:
    rows = [(c.country, c.counts.flows, c.counts.bytes_out) for c in report.countries]
    assert rows == [("US", 2, 10000), ("CN", 4, 3050), ("ZZ", 1, 100)]
    cn = next(c for c in report.countries if c.country == "CN")
    assert dict(cn.bytes_by_verdict) == {"allow": 0, "alert": 50, "would-block": 0, "block": 3000}


def test_services_and_payload_types(report: Report) -> None:
    by_id = {s.service_id: s for s in report.services}
    assert set(by_id) == {"deepseek", "openai", None}
    assert dict(by_id["openai"].payload_types) == {"chat-prompt": 2, "file-upload": 2}
    assert dict(by_id["deepseek"].payload_types) == {"chat-prompt": 3, "telemetry": 1}
    assert by_id["deepseek"].operator_country == "CN"
    assert by_id["deepseek"].counts.block == 3
    assert dict(report.payload_types) == {"chat-prompt": 5, "file-upload": 2, "telemetry": 2}


def test_egress_cells(report: Report) -> None:
    cells = {
        (r.service_id, r.country, r.payload_type, r.verdict): (r.flows, r.bytes_out)
        for r in report.egress
    }
    assert cells[("deepseek", "CN", "chat-prompt", "block")] == (3, 3000)
    assert cells[("openai", "US", "file-upload", "allow")] == (2, 10000)
    assert cells[(None, "ZZ", "telemetry", "would-block")] == (1, 100)


def test_clients_findings_alerts(report: Report) -> None:
    clients = [(c.client_addr, c.flows, c.bytes_out, c.blocked) for c in report.clients]
    assert clients == [("10.0.0.2", 2, 10000, 0), ("10.0.0.1", 3, 3000, 3), ("10.0.0.3", 2, 150, 1)]
    assert {(f.kind, f.findings, f.decisions) for f in report.findings} == {
        ("email", 2, 1),
        ("api-key", 1, 1),
    }
    by_rule = {a.rule: a for a in report.alerts}
    assert by_rule["no-cn"].occurrences == 3 and by_rule["no-cn"].undelivered == 0
    assert by_rule["watch-cn"].undelivered == 1
    assert [a.rule for a in report.recent_alerts] == ["watch-cn", "no-cn"]


def test_timeline_buckets(report: Report) -> None:
    assert report.bucket_seconds == 900  # 24 h in 96 quarter hours
    assert sum(b.flows for b in report.timeline) == 7
    assert all(b.start % 900 == 0 for b in report.timeline)
    blocks = [b for b in report.timeline if b.verdict == "block"]
    assert blocks == [type(blocks[0])(float((NOW - 2 * HOUR) // 900 * 900), "block", 3)]


@pytest.mark.parametrize(
    ("span", "size"), [(3600, 300), (86400, 900), (7 * 86400, 3 * 3600), (365 * 86400, 7 * 86400)]
)
def test_bucket_for(span: float, size: int) -> None:
    assert bucket_for(span) == size


def test_all_time_includes_old_flows(store: Store) -> None:
    report = build_report(store, None, NOW)
    assert report.totals.flows == 8


def test_empty_store_renders(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "empty.db"))
    report = build_report(s, NOW - 24 * HOUR, NOW)
    s.close()
    assert report.totals.flows == 0
    assert "0 flows" in render_text(report)
    assert json.loads(render_json(report))["totals"]["flows"] == 0
    assert "_none_" in render_markdown(report)
    assert "None in this period" in render_html(report)


def test_text_render(report: Report) -> None:
    text = render_text(report)
    assert "\x1b[" not in text  # no colour codes when not on a terminal
    assert "7 flows, 12.8 KiB sent, 3 blocked, 1 would-block, 1 alerted, 3 findings" in text
    line = next(x for x in text.splitlines() if "DeepSeek API" in x and "block" in x)
    assert re.search(r"DeepSeek API\s+CN\s+CN\s+chat-prompt\s+block\s+3\s+2.9 KiB", line), line
    assert "ZZ (unknown)" in text
    for title in ("Top clients", "Findings by kind", "Alerts by rule", "Destination countries"):
        assert title in text
    # recent alerts, newest first, with why a delivery failed
    recent = text[text.index("Recent alerts") :]
    assert re.search(r"watch-cn\s+1\s+webhook failed \(HTTP 500\)", recent), recent
    assert re.search(r"no-cn\s+3\s+10\.0\.0\.1\s+webhook delivered", recent), recent


def test_markdown_render(report: Report) -> None:
    md = render_markdown(report)
    assert md.startswith("# egresswatch report")
    assert "| DeepSeek API | CN | CN | chat-prompt | block | 3 | 2.9 KiB |" in md
    # each table: header, separator with the same number of columns, then rows
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") or line.startswith("|--"):
            assert lines[i - 1].count("|") == line.count("|")


def test_json_render(report: Report) -> None:
    data = json.loads(render_json(report))
    assert data["totals"]["flows"] == 7
    assert data["totals"]["would-block"] == 1
    assert data["countries"][0]["country"] == "US"
    assert data["timeline"]["bucket_seconds"] == 900
    assert {f["kind"] for f in data["findings"]} == {"email", "api-key"}
    assert data["top_clients"][0]["client_addr"] == "10.0.0.2"


def test_no_secret_reaches_any_rendering(report: Report) -> None:
    # the query string of the helper's default path carries "s3cret"; findings only redacted
    for text in (render_text(report), render_markdown(report), render_json(report)):
        assert "s3cret" not in text
    html = render_html(report)
    assert "s3cret" not in html
    assert "j***@example.com" not in html  # findings by kind only


class _Refs(HTMLParser):
    """Collects every URL-bearing attribute and external-resource tag."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "xlink:href") and value:
                self.urls.append(value)


def test_html_is_self_contained(report: Report) -> None:
    page = render_html(report)
    refs = _Refs()
    refs.feed(page)
    assert refs.urls == []
    assert "link" not in refs.tags and "iframe" not in refs.tags
    assert "@import" not in page and "url(" not in page
    # the CSP forbids any fetch even if something slipped in
    assert "default-src 'none'" in page


def test_html_escapes_data(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "x.db"))
    evil = "</script><script>alert(1)</script>"
    d = decision(at=NOW - 60, client_app=evil, rule=evil, action=Action.ALERT)
    _write(s, [(d, 10)], tmp_path / "spill.jsonl")
    page = render_html(build_report(s, NOW - HOUR, NOW))
    s.close()
    assert evil not in page
    assert page.count("<script") == 2  # the JSON data block and the chart script


@needs_chromium
def test_html_charts_render_in_chromium(report: Report, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(report))
    dom = dump_dom(page, tmp_path / "profile")
    assert 'data-charts="drawn"' in dom  # the script ran to the end
    # country bars: ranked by bytes sent; total bar length proportional to bytes
    bars = re.findall(r'<g class="bar" data-country="(\w+)" data-value="(\d+)">(.*?)</g>', dom)
    assert [(c, int(v)) for c, v, _ in bars] == [("US", 10000), ("CN", 3050), ("ZZ", 100)]

    def width(inner: str) -> float:
        return sum(float(w) for w in re.findall(r'<rect[^>]*width="([\d.]+)"', inner))

    widths = {c: width(inner) for c, _, inner in bars}
    assert widths["US"] > 300  # laid out against the real page width, not zero
    assert widths["CN"] / widths["US"] == pytest.approx(3050 / 10000, rel=0.02)
    cn = next(inner for c, _, inner in bars if c == "CN")
    assert re.findall(r'data-verdict="([\w-]+)"', cn) == ["alert", "block"]
    # heat map: one cell per service x payload type, values from the data
    cells = re.findall(
        r'<rect[^>]*class="cell" data-service="(\w*)" data-type="([\w-]+)" data-value="(\d+)"', dom
    )
    assert ("openai", "file-upload", "2") in cells
    assert ("deepseek", "chat-prompt", "3") in cells
    assert len(cells) == 3 * 3
    # timeline: one column per quarter hour of the period (a partial one at the start)
    cols = re.findall(r'<g class="col" data-start="(\d+)">', dom)
    first, last = (NOW - 24 * HOUR) // 900, (NOW - 1e-6) // 900
    assert [int(c) for c in cols] == [int(q * 900) for q in range(int(first), int(last) + 1)]
    segs = re.findall(
        r'data-verdict="([\w-]+)" data-value="(\d+)"', dom.split('id="chart-time"')[1]
    )
    assert sum(int(n) for _, n in segs) == 7


@needs_chromium
def test_html_screenshot_shows_the_charts(report: Report, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(report))
    png = screenshot(page, tmp_path / "shot.png", tmp_path / "profile", size=(1100, 900))
    width, height, rows = read_png(png)
    assert (width, height) == (1100, 900)
    # the chart colours (CSS variables in report.py) are on screen in real areas
    block = count_color(rows, (0xD6, 0x45, 0x41))
    allow = count_color(rows, (0x2F, 0x9E, 0x66))
    would = count_color(rows, (0x8E, 0x5C, 0xD9))
    assert block > 500 and allow > 500 and would > 50, (block, allow, would)
    # allow bytes (10,000 to the US) dwarf blocked bytes (3,000): so do their bars
    assert allow > block


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"


# -- the command -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("24h", NOW - 86400),
        ("90m", NOW - 5400),
        ("7d", NOW - 7 * 86400),
        ("2w", NOW - 14 * 86400),
        ("1.5h", NOW - 5400),
        ("2026-11-18", datetime(2026, 11, 18, tzinfo=UTC).timestamp()),
        ("2026-11-18T01:00:00+01:00", datetime(2026, 11, 18, tzinfo=UTC).timestamp()),
        ("2026-11-18 06:30", datetime(2026, 11, 18, 6, 30, tzinfo=UTC).timestamp()),
        ("1795000000", 1_795_000_000.0),
        ("all", None),
    ],
)
def test_time_type(text: str, want: float | None) -> None:
    assert TimeType(now=NOW).convert(text, None, None) == want


@pytest.mark.parametrize("bad", ["yesterday", "24", "3x", "-2h", "2026-13-01"])
def test_time_type_rejects(bad: str) -> None:
    import click

    with pytest.raises(click.BadParameter, match="is not a time"):
        TimeType(now=NOW).convert(bad, None, None)


def _db_path(store: Store) -> str:
    return store.url  # a SQLite file URL or the PostgreSQL URL


def test_cli_formats(store: Store, tmp_path: Path) -> None:
    runner = CliRunner()
    since, until = str(NOW - 24 * HOUR), str(NOW)
    base = ["report", "--db", _db_path(store), "--since", since, "--until", until]
    result = runner.invoke(cli, [*base, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["flows"] == 7
    result = runner.invoke(cli, [*base, "--format", "markdown"])
    assert result.exit_code == 0 and "## Top clients" in result.output
    result = runner.invoke(cli, base)
    assert result.exit_code == 0 and "Findings by kind" in result.output
    out = tmp_path / "r.html"
    result = runner.invoke(cli, [*base, "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("<!doctype html>")


def test_cli_env_db(store: Store) -> None:
    result = CliRunner(env={"EGRESSWATCH_DB": _db_path(store)}).invoke(
        cli, ["report", "--since", "all", "--until", str(NOW), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["flows"] == 8


def test_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "--since", "soon"])
    assert result.exit_code == 2
    assert "is not a time" in result.output
    result = runner.invoke(cli, ["report", "--format", "pdf"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["report", "--since", "1h", "--until", "2h"])
    assert result.exit_code == 2 and "--since must be before --until" in result.output
    missing = tmp_path / "nope.db"
    result = runner.invoke(cli, ["report", "--db", str(missing)])
    assert result.exit_code == 4
    assert f"no database at {missing}" in result.output
    assert not missing.exists()  # a report never creates a database
    assert "Traceback" not in result.output


def test_cli_help_explains() -> None:
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0
    for word in ("--since", "duration ago", "self-contained", "EGRESSWATCH_DB"):
        assert word in result.output


def test_written_in_time(report: Report) -> None:
    assert report.generated <= time.time()
    assert report.until == NOW


def test_timeline_buckets_floor_on_every_engine(store: Store, tmp_path: Path) -> None:
    """A flow late in a bucket belongs to that bucket (PostgreSQL's CAST rounds; floor it)."""
    start = NOW + 10 * HOUR  # away from the fixture's flows
    size = 300  # bucket_for(1 h)
    base = start // size * size + size  # a bucket boundary inside the range
    times = [base + 1, base + size * 0.6, base + size - 1]  # early, past the middle, last second
    _write(
        store,
        [(decision(at=t, action=Action.ALERT, client="10.0.7.7"), 1) for t in times],
        tmp_path / "spill2.jsonl",
    )
    report = build_report(store, start, start + HOUR)
    assert report.bucket_seconds == size
    assert [(b.start, b.verdict, b.flows) for b in report.timeline] == [(base, "alert", 3)]


def test_egress_table_matches_the_store_query(store: Store) -> None:
    """build_report derives the big table from its own scan: it must equal egress_summary."""
    from egresswatch.store import FlowFilter, egress_summary

    report = build_report(store, NOW - 24 * HOUR, NOW)
    assert list(report.egress) == egress_summary(store, FlowFilter(NOW - 24 * HOUR, NOW))


def test_console_script_writes_the_html_report(store: Store, tmp_path: Path) -> None:
    """The installed `egresswatch` entry point, as a user runs it, in a fresh process."""
    import subprocess

    from conftest import egresswatch_bin

    out = tmp_path / "cli.html"
    proc = subprocess.run(
        [
            egresswatch_bin(),
            "report",
            "--db",
            store.url,
            "--since",
            str(NOW - 24 * HOUR),
            "--until",
            str(NOW),
            "--format",
            "html",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out} (html, 7 flows)" in proc.stderr
    page = out.read_text()
    assert '"flows":7' in page.replace(" ", "")
    bad = subprocess.run(
        [egresswatch_bin(), "report", "--since", "tomorrow-ish"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "is not a time" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_cell_in_both_halves_of_the_period_is_counted_once_per_flow(
    store_url: str, tmp_path: Path
) -> None:
    """build_report scans [since, mid) and [mid, until) side by side and merges the cells."""
    s = open_store(store_url)
    try:
        block = {"action": Action.BLOCK, "mode": Mode.ENFORCE, "rule": "no-cn"}
        hours = (5.5, 4.0, 2.0, 0.5)  # two before the middle of [NOW-6h, NOW), two after
        items = [(decision(at=NOW - h * HOUR, client="10.0.0.1", **block), 1000) for h in hours]  # type: ignore[arg-type]
        _write(s, items, tmp_path / "spill.jsonl")
        r = build_report(s, NOW - 6 * HOUR, NOW)
    finally:
        s.close()
    assert [(e.country, e.payload_type, e.verdict, e.flows, e.bytes_out) for e in r.egress] == [
        ("CN", "chat-prompt", "block", 4, 4000)
    ]
    assert (r.totals.block, r.totals.bytes_out, r.totals.bytes_in) == (4, 4000, 400)
    assert [(c.country, c.counts.flows) for c in r.countries] == [("CN", 4)]
    assert r.services[0].service_name and r.services[0].counts.flows == 4

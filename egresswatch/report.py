"""The egress report: what went where, as data, and rendered as text, Markdown, JSON or HTML.

:func:`build_report` reads the store once per section (each an indexed
group-by, see :mod:`egresswatch.store.queries`) and returns a frozen
:class:`Report`; the renderers are pure functions of that value, so the same
report can be printed, saved and tested without a database.

The HTML report is one self-contained file: CSS, JavaScript and the data are
inline, nothing is fetched (no CDN, no fonts), so it opens offline and can be
mailed. A small script in the page draws the charts as SVG from the embedded
data; the tables below the charts carry the same numbers for readers without
JavaScript.
"""

from __future__ import annotations

import html
import io
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from egresswatch import __version__
from egresswatch.store import (
    AlertCount,
    AlertRecord,
    ClientRow,
    EgressRow,
    FindingCount,
    Flow,
    FlowFilter,
    Store,
    TimeBucket,
    alerts_by_rule,
    findings_by_kind,
    list_alerts,
    top_clients,
    verdicts_over_time,
)
from egresswatch.store.hashagg import Agg, grouped
from egresswatch.store.rows import split_set

VERDICTS = ("allow", "alert", "would-block", "block")
#: rows of the big egress table shown in text/markdown (JSON and HTML keep all)
EGRESS_ROWS_SHOWN = 40
RECENT_ALERTS = 20
#: of which text and Markdown show (HTML and JSON keep all)
RECENT_ALERTS_SHOWN = 10
TOP_CLIENTS = 10


@dataclass(frozen=True, slots=True)
class VerdictCounts:
    """Flows per verdict, and bytes sent under each."""

    allow: int = 0
    alert: int = 0
    would_block: int = 0
    block: int = 0
    bytes_out: int = 0
    bytes_in: int = 0

    @property
    def flows(self) -> int:
        return self.allow + self.alert + self.would_block + self.block

    def as_dict(self) -> dict[str, int]:
        return {
            "flows": self.flows,
            "allow": self.allow,
            "alert": self.alert,
            "would-block": self.would_block,
            "block": self.block,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
        }


@dataclass(frozen=True, slots=True)
class CountryRow:
    """Egress to one destination-address country (``ZZ``: unknown)."""

    country: str
    counts: VerdictCounts
    #: bytes out per verdict, for the stacked bars
    bytes_by_verdict: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """Egress to one catalogued service (``service_id`` None: not in the catalog)."""

    service_id: str | None
    service_name: str | None
    operator_country: str | None
    counts: VerdictCounts
    #: flows per payload type (a flow with several types counts under each)
    payload_types: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Report:
    """Everything a report shows, for one time range. Times are UNIX seconds."""

    generated: float
    since: float | None
    until: float
    store: str
    totals: VerdictCounts
    findings_total: int
    egress: tuple[EgressRow, ...]
    countries: tuple[CountryRow, ...]
    services: tuple[ServiceRow, ...]
    payload_types: tuple[tuple[str, int], ...]
    timeline: tuple[TimeBucket, ...]
    bucket_seconds: int
    clients: tuple[ClientRow, ...]
    findings: tuple[FindingCount, ...]
    alerts: tuple[AlertCount, ...]
    recent_alerts: tuple[AlertRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stable keys; documented in docs/report.md)."""
        return {
            "generated": self.generated,
            "since": self.since,
            "until": self.until,
            "store": self.store,
            "version": __version__,
            "totals": {**self.totals.as_dict(), "findings": self.findings_total},
            "egress": [asdict(r) for r in self.egress],
            "countries": [
                {
                    "country": c.country,
                    **c.counts.as_dict(),
                    "bytes_out_by_verdict": dict(c.bytes_by_verdict),
                }
                for c in self.countries
            ],
            "services": [
                {
                    "service_id": s.service_id,
                    "service_name": s.service_name,
                    "operator_country": s.operator_country,
                    **s.counts.as_dict(),
                    "payload_types": dict(s.payload_types),
                }
                for s in self.services
            ],
            "payload_types": dict(self.payload_types),
            "timeline": {
                "bucket_seconds": self.bucket_seconds,
                "buckets": [asdict(b) for b in self.timeline],
            },
            "top_clients": [asdict(c) for c in self.clients],
            "findings": [asdict(f) for f in self.findings],
            "alerts": [asdict(a) for a in self.alerts],
            "recent_alerts": [asdict(a) for a in self.recent_alerts],
        }


# -- building ---------------------------------------------------------------------------


def bucket_for(span: float) -> int:
    """A time-bucket size giving 24-96 columns for a range of ``span`` seconds."""
    for size in (300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400):
        if span / size <= 96:
            return size
    return 30 * 86400


def _counts(by_verdict: dict[str, int], bytes_out: int, bytes_in: int) -> VerdictCounts:
    return VerdictCounts(
        allow=by_verdict.get("allow", 0),
        alert=by_verdict.get("alert", 0),
        would_block=by_verdict.get("would-block", 0),
        block=by_verdict.get("block", 0),
        bytes_out=bytes_out,
        bytes_in=bytes_in,
    )


def _cell_scan(store: Store, flt: FlowFilter) -> list[tuple[Any, ...]]:
    """(service id, name, operator country, country, payload-type set, verdict, flows,
    bytes out, bytes in, first ts) per stored combination in the period."""
    if store.dialect == "sqlite":
        # SQLite sorts every row for a GROUP BY on four text keys (~1 s of CPU for a
        # day at 10 million flows); upserts into a table of the groups take half that
        source = flt.apply(
            select(
                Flow.service_id,
                Flow.country,
                Flow.payload_types,
                Flow.verdict,
                Flow.service_name,
                Flow.operator_country,
                Flow.ts,
                Flow.bytes_out,
                Flow.bytes_in,
                Flow.ts,
            )
        )
        aggs: tuple[Agg, ...] = ("max", "max", "count", "sum", "sum", "min")
        with store.connect() as conn:
            return [
                (sid, sname, opc, country, ptypes, verdict, n, bout or 0, bin_ or 0, ts_min)
                for sid, country, ptypes, verdict, sname, opc, n, bout, bin_, ts_min in grouped(
                    conn, source, 4, aggs
                )
            ]
    stmt = flt.apply(
        select(
            Flow.service_id,
            func.max(Flow.service_name),
            func.max(Flow.operator_country),
            Flow.country,
            Flow.payload_types,
            Flow.verdict,
            func.count(),
            func.coalesce(func.sum(Flow.bytes_out), 0),
            func.coalesce(func.sum(Flow.bytes_in), 0),
            func.min(Flow.ts),
        )
    ).group_by(Flow.service_id, Flow.country, Flow.payload_types, Flow.verdict)
    with store.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def _merge_cells(parts: Iterable[list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Cells of disjoint periods added up per (service, country, type set, verdict)."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for part in parts:
        for sid, sname, opc, country, ptypes, verdict, n, bout, bin_, ts_min in part:
            key = (sid, country, ptypes, verdict)
            cell = merged.get(key)
            if cell is None:
                merged[key] = [sid, sname, opc, country, ptypes, verdict, n, bout, bin_, ts_min]
                continue
            cell[1] = max(filter(None, (cell[1], sname)), default=None)
            cell[2] = max(filter(None, (cell[2], opc)), default=None)
            cell[6] += n
            cell[7] += bout
            cell[8] += bin_
            if ts_min is not None and (cell[9] is None or ts_min < cell[9]):
                cell[9] = ts_min
    return [tuple(c) for c in merged.values()]


def build_report(store: Store, since: float | None, until: float | None = None) -> Report:
    """Read the report for ``[since, until)`` (None: from the first / up to now).

    Raises :class:`~egresswatch.errors.StoreError` when the database cannot be read.
    """
    now = time.time()
    until = now if until is None else until
    flt = FlowFilter(since=since, until=until)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="egresswatch-report") as pool:
        return _build(store, pool, now, since, until, flt)


def _build(
    store: Store,
    pool: ThreadPoolExecutor,
    now: float,
    since: float | None,
    until: float,
    flt: FlowFilter,
) -> Report:
    # The sections are independent queries: they run side by side, each on its own
    # connection. SQLite and PostgreSQL do the work without the GIL, so on a
    # 10-million-flow store the report takes about as long as its longest query instead
    # of their sum (bench/store.py).
    #
    # One scan feeds three sections: grouped by the stored payload-type set (as
    # store.egress_summary does), each flow is in exactly one cell, so totals per
    # country and service add up without double counting; splitting the sets
    # afterwards gives the service x country x type x verdict table. (Calling
    # egress_summary as well would read every row of the period a second time.)
    # It is the longest query, so with a bounded period it runs as two halves
    # ([since, mid) and [mid, until): no flow in both), submitted first, whose cells
    # are merged.
    if since is not None:
        mid = since + (until - since) / 2
        halves = [
            pool.submit(_cell_scan, store, replace(flt, until=mid)),
            pool.submit(_cell_scan, store, replace(flt, since=mid)),
        ]
    clients = pool.submit(top_clients, store, flt, TOP_CLIENTS)
    timeline = None
    if since is not None:
        bucket = bucket_for(max(1.0, until - since))
        timeline = pool.submit(verdicts_over_time, store, flt, bucket)
    findings_f = pool.submit(findings_by_kind, store, flt)
    alerts = pool.submit(alerts_by_rule, store, flt)
    recent = pool.submit(list_alerts, store, since, until, RECENT_ALERTS)
    if since is not None:
        cells = _merge_cells(h.result() for h in halves)
    else:
        cells = _cell_scan(store, flt)

    total_v: dict[str, int] = defaultdict(int)
    total_b = [0, 0]
    country_v: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    country_bv: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    country_b: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    service_meta: dict[str | None, tuple[str | None, str | None]] = {}
    service_v: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    service_b: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
    first_ts: float | None = None
    split: dict[tuple[str | None, str, str, str], list[Any]] = {}
    for sid, sname, opc, country, ptypes, verdict, n, bout, bin_, ts_min in cells:
        bout, bin_ = int(bout), int(bin_)
        for ptype in split_set(ptypes) or ("other",):
            cell = split.get((sid, country, ptype, verdict))
            if cell is None:
                split[(sid, country, ptype, verdict)] = [sname, opc, n, bout, bin_]
            else:
                cell[2] += n
                cell[3] += bout
                cell[4] += bin_
        total_v[verdict] += n
        total_b[0] += bout
        total_b[1] += bin_
        country_v[country][verdict] += n
        country_bv[country][verdict] += bout
        country_b[country][0] += bout
        country_b[country][1] += bin_
        old = service_meta.get(sid, (None, None))
        service_meta[sid] = (old[0] or sname, old[1] or opc)
        service_v[sid][verdict] += n
        service_b[sid][0] += bout
        service_b[sid][1] += bin_
        if ts_min is not None and (first_ts is None or ts_min < first_ts):
            first_ts = float(ts_min)

    egress = [
        EgressRow(sid, sname, opc, country, ptype, verdict, n, bout, bin_)
        for (sid, country, ptype, verdict), (sname, opc, n, bout, bin_) in split.items()
    ]
    egress.sort(
        key=lambda r: (-r.bytes_out, -r.flows, r.service_id or "", r.country, r.payload_type)
    )
    per_service_types: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_type: dict[str, int] = defaultdict(int)
    for row in egress:
        per_service_types[row.service_id][row.payload_type] += row.flows
        per_type[row.payload_type] += row.flows

    countries = [
        CountryRow(
            c,
            _counts(country_v[c], *country_b[c]),
            tuple((v, country_bv[c].get(v, 0)) for v in VERDICTS),
        )
        for c in country_v
    ]
    countries.sort(key=lambda r: (-r.counts.bytes_out, -r.counts.flows, r.country))
    services = [
        ServiceRow(
            sid,
            service_meta[sid][0],
            service_meta[sid][1],
            _counts(service_v[sid], *service_b[sid]),
            tuple(sorted(per_service_types[sid].items(), key=lambda kv: (-kv[1], kv[0]))),
        )
        for sid in service_v
    ]
    services.sort(key=lambda r: (-r.counts.flows, -r.counts.bytes_out, r.service_id or "~"))

    if timeline is None:  # from the first flow: the bucket follows the period found
        start = first_ts if first_ts is not None else until - 86400
        bucket = bucket_for(max(1.0, until - start))
        timeline = pool.submit(verdicts_over_time, store, flt, bucket)
    findings = findings_f.result()
    return Report(
        generated=now,
        since=since,
        until=until,
        store=store.display_url,
        totals=_counts(total_v, *total_b),
        findings_total=sum(f.findings for f in findings),
        egress=tuple(egress),
        countries=tuple(countries),
        services=tuple(services),
        payload_types=tuple(sorted(per_type.items(), key=lambda kv: (-kv[1], kv[0]))),
        timeline=tuple(timeline.result()),
        bucket_seconds=bucket,
        clients=tuple(clients.result()),
        findings=tuple(findings),
        alerts=tuple(alerts.result()),
        recent_alerts=tuple(recent.result()),
    )


# -- formatting helpers -----------------------------------------------------------------


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (IEC binary prefixes)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _ts(ts: float | None) -> str:
    if ts is None:
        return "the beginning"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _period(report: Report) -> str:
    return f"{_ts(report.since)} – {_ts(report.until)}"


def _service(name: str | None, sid: str | None) -> str:
    return name or sid or "(not in catalog)"


def _country(code: str) -> str:
    return "ZZ (unknown)" if code == "ZZ" else code


# -- text (rich) ------------------------------------------------------------------------

_VERDICT_STYLE = {"allow": "green", "alert": "yellow", "would-block": "magenta", "block": "red"}


def _table(title: str, *columns: str, right: Iterable[int] = ()) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", title_style="bold")
    rights = set(right)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i in rights else "left")
    return table


def renderables(report: Report) -> list[RenderableType]:
    """The report as rich renderables (tables), for a terminal or :func:`render_text`."""
    t = report.totals
    head = Text()
    head.append("egresswatch report", style="bold")
    head.append(f"  {_period(report)}\n")
    head.append(f"{t.flows} flows, {human_bytes(t.bytes_out)} sent, ")
    head.append(f"{t.block} blocked", style="red")
    head.append(", ")
    head.append(f"{t.would_block} would-block", style="magenta")
    head.append(", ")
    head.append(f"{t.alert} alerted", style="yellow")
    head.append(f", {report.findings_total} findings")
    out: list[RenderableType] = [head]

    egress = _table(
        "Egress by service × country × payload type × verdict",
        "service",
        "op.",
        "country",
        "payload type",
        "verdict",
        "flows",
        "sent",
        right=(5, 6),
    )
    for row in report.egress[:EGRESS_ROWS_SHOWN]:
        egress.add_row(
            _service(row.service_name, row.service_id),
            row.operator_country or "",
            _country(row.country),
            row.payload_type,
            Text(row.verdict, style=_VERDICT_STYLE.get(row.verdict, "")),
            str(row.flows),
            human_bytes(row.bytes_out),
        )
    if len(report.egress) > EGRESS_ROWS_SHOWN:
        egress.caption = f"{len(report.egress) - EGRESS_ROWS_SHOWN} more rows in --format json"
    out.append(egress)

    countries = _table(
        "Destination countries",
        "country",
        "flows",
        "sent",
        "blocked",
        "would-block",
        "alerted",
        right=(1, 2, 3, 4, 5),
    )
    for c in report.countries:
        countries.add_row(
            _country(c.country),
            str(c.counts.flows),
            human_bytes(c.counts.bytes_out),
            str(c.counts.block),
            str(c.counts.would_block),
            str(c.counts.alert),
        )
    out.append(countries)

    clients = _table(
        "Top clients",
        "client",
        "app",
        "flows",
        "sent",
        "blocked",
        "alerted",
        "services",
        right=(2, 3, 4, 5, 6),
    )
    for cl in report.clients:
        clients.add_row(
            cl.client_addr or "?",
            cl.client_app or "",
            str(cl.flows),
            human_bytes(cl.bytes_out),
            str(cl.blocked),
            str(cl.alerted),
            str(cl.services),
        )
    out.append(clients)

    findings = _table("Findings by kind", "kind", "findings", "decisions", right=(1, 2))
    for f in report.findings:
        findings.add_row(f.kind, str(f.findings), str(f.decisions))
    out.append(findings)

    alerts = _table(
        "Alerts by rule",
        "rule",
        "severity",
        "alerts",
        "occurrences",
        "undelivered",
        right=(2, 3, 4),
    )
    for a in report.alerts:
        alerts.add_row(a.rule, a.severity, str(a.alerts), str(a.occurrences), str(a.undelivered))
    out.append(alerts)

    recent = _table(
        "Recent alerts", "time", "severity", "rule", "count", "client", "delivery", right=(3,)
    )
    for r in report.recent_alerts[:RECENT_ALERTS_SHOWN]:
        recent.add_row(*_recent_cells(r))
    out.append(recent)
    return out


def _recent_cells(a: AlertRecord) -> tuple[str, str, str, str, str, str]:
    delivery = f"{a.sink or ''} {a.delivery_state}".strip()
    if a.last_error and a.delivery_state != "delivered":
        delivery += f" ({a.last_error})"
    return (_ts(a.ts), a.severity, a.rule, str(a.count), a.client_addr or "", delivery)


def render_text(report: Report, width: int = 120) -> str:
    """Plain text tables (no colour codes), as ``egresswatch report`` prints to a pipe."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    console.print(Group(*renderables(report)))
    return buf.getvalue()


# -- markdown ---------------------------------------------------------------------------


def _egress_cells(rows: Iterable[Any]) -> Iterator[tuple[object, ...]]:
    """Cells of the egress table (Markdown and HTML share them)."""
    for r in rows:
        yield (
            _service(r.service_name, r.service_id),
            r.operator_country or "",
            _country(r.country),
            r.payload_type,
            r.verdict,
            r.flows,
            human_bytes(r.bytes_out),
        )


def _client_cells(clients: Iterable[Any]) -> Iterator[tuple[object, ...]]:
    """Cells of the top-clients table (Markdown and HTML share them)."""
    for c in clients:
        yield (
            c.client_addr or "?",
            c.client_app or "",
            c.flows,
            human_bytes(c.bytes_out),
            c.blocked,
            c.alerted,
        )


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()
) -> str:
    rights = set(right)
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append(
        "|" + "|".join("---:" if i in rights else "---" for i in range(len(headers))) + "|"
    )
    body = [("| " + " | ".join(_md_cell(v) for v in row) + " |") for row in rows]
    if not body:
        return "_none_\n"
    return "\n".join(lines + body) + "\n"


def render_markdown(report: Report) -> str:
    """GitHub-flavoured Markdown: a heading per section, one table each."""
    t = report.totals
    parts = [
        "# egresswatch report\n",
        f"{_period(report)} · {t.flows} flows · {human_bytes(t.bytes_out)} sent · "
        f"**{t.block} blocked** · {t.would_block} would-block · {t.alert} alerted · "
        f"{report.findings_total} findings\n",
        "## Egress by service × country × payload type × verdict\n",
        _md_table(
            ["service", "operator country", "country", "payload type", "verdict", "flows", "sent"],
            _egress_cells(report.egress[:EGRESS_ROWS_SHOWN]),
            right=(5, 6),
        ),
        "## Destination countries\n",
        _md_table(
            ["country", "flows", "sent", "blocked", "would-block", "alerted"],
            (
                (
                    _country(c.country),
                    c.counts.flows,
                    human_bytes(c.counts.bytes_out),
                    c.counts.block,
                    c.counts.would_block,
                    c.counts.alert,
                )
                for c in report.countries
            ),
            right=(1, 2, 3, 4, 5),
        ),
        "## Top clients\n",
        _md_table(
            ["client", "app", "flows", "sent", "blocked", "alerted"],
            _client_cells(report.clients),
            right=(2, 3, 4, 5),
        ),
        "## Findings by kind\n",
        _md_table(
            ["kind", "findings", "decisions"],
            ((f.kind, f.findings, f.decisions) for f in report.findings),
            right=(1, 2),
        ),
        "## Alerts by rule\n",
        _md_table(
            ["rule", "severity", "alerts", "occurrences", "undelivered"],
            ((a.rule, a.severity, a.alerts, a.occurrences, a.undelivered) for a in report.alerts),
            right=(2, 3, 4),
        ),
        "## Recent alerts\n",
        _md_table(
            ["time", "severity", "rule", "count", "client", "delivery"],
            (_recent_cells(a) for a in report.recent_alerts[:RECENT_ALERTS_SHOWN]),
            right=(3,),
        ),
    ]
    return "\n".join(parts)


# -- json -------------------------------------------------------------------------------


def render_json(report: Report) -> str:
    """The report as one JSON document (see :meth:`Report.to_dict`)."""
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"


# -- html -------------------------------------------------------------------------------


def _json_for_script(data: Any) -> str:
    # Inside <script>, "</" would end the element and "<!--" open a comment
    # (HTML Living Standard, 'Restrictions for contents of script elements').
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _html_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()
) -> str:
    rights = set(right)
    head = "".join(
        f'<th class="{"num" if i in rights else ""}">{html.escape(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if i in rights else ""}">{html.escape(str(v))}</td>'
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return '<p class="none">None in this period.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report) -> str:
    """One self-contained HTML file: inline CSS, inline script drawing SVG charts, tables."""
    t = report.totals
    data = report.to_dict()
    cards = [
        ("flows", f"{t.flows:,}", ""),
        ("sent", human_bytes(t.bytes_out), ""),
        ("blocked", f"{t.block:,}", "block"),
        ("would-block", f"{t.would_block:,}", "would-block"),
        ("alerted", f"{t.alert:,}", "alert"),
        ("findings", f"{report.findings_total:,}", ""),
    ]
    cards_html = "".join(
        f'<div class="card {cls}" data-card="{html.escape(k)}"><div class="v">{html.escape(v)}'
        f'</div><div class="k">{html.escape(k)}</div></div>'
        for k, v, cls in cards
    )
    tables = "".join(
        [
            "<h2>Egress by service × country × payload type × verdict</h2>",
            _html_table(
                ["service", "operator", "country", "payload type", "verdict", "flows", "sent"],
                _egress_cells(report.egress),
                right=(5, 6),
            ),
            '<div class="cols"><div>',
            "<h2>Top clients</h2>",
            _html_table(
                ["client", "app", "flows", "sent", "blocked", "alerted"],
                _client_cells(report.clients),
                right=(2, 3, 4, 5),
            ),
            "</div><div>",
            "<h2>Findings by kind</h2>",
            _html_table(
                ["kind", "findings", "decisions"],
                ((f.kind, f.findings, f.decisions) for f in report.findings),
                right=(1, 2),
            ),
            "<h2>Alerts by rule</h2>",
            _html_table(
                ["rule", "severity", "alerts", "occurrences", "undelivered"],
                (
                    (a.rule, a.severity, a.alerts, a.occurrences, a.undelivered)
                    for a in report.alerts
                ),
                right=(2, 3, 4),
            ),
            "</div></div>",
            "<h2>Recent alerts</h2>",
            _html_table(
                ["time", "severity", "rule", "count", "client", "summary", "delivery"],
                (
                    (
                        _ts(a.ts),
                        a.severity,
                        a.rule,
                        a.count,
                        a.client_addr or "",
                        a.summary or "",
                        _recent_cells(a)[5],
                    )
                    for a in report.recent_alerts
                ),
                right=(3,),
            ),
        ]
    )
    return (
        _HTML.replace("%%TITLE%%", html.escape(f"egresswatch report · {_period(report)}"))
        .replace("%%PERIOD%%", html.escape(_period(report)))
        .replace("%%STORE%%", html.escape(report.store))
        .replace("%%VERSION%%", html.escape(__version__))
        .replace("%%CARDS%%", cards_html)
        .replace("%%TABLES%%", tables)
        .replace("%%CSS%%", _CSS)
        .replace("%%JS%%", _JS)
        .replace("%%DATA%%", _json_for_script(data))
    )


_CSS = """
:root{--allow:#2f9e66;--alert:#e0a100;--would-block:#8e5cd9;--block:#d64541;--ink:#1d2430;
--muted:#6b7280;--line:#e5e7eb;--bg:#f7f8fa;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
header{padding:20px 32px 8px}
h1{font-size:22px;margin:0}
h2{font-size:16px;margin:24px 0 8px}
.sub{color:var(--muted);font-size:12px;margin-bottom:6px}
header .sub{font-size:14px}
main{padding:0 32px 40px;max-width:1280px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 16px;
min-width:130px}
.card .v{font-size:24px;font-weight:650}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.block .v{color:var(--block)}.card.alert .v{color:var(--alert)}
.card.would-block .v{color:var(--would-block)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px;
margin:12px 0}
.panel h2{margin-top:4px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}
@media (max-width:900px){.grid,.cols{grid-template-columns:1fr}}
.legend{display:flex;gap:14px;color:var(--muted);font-size:12px;margin:4px 0}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
svg{display:block;width:100%;overflow:visible}
svg text{font:12px system-ui,sans-serif;fill:var(--ink)}
svg .muted{fill:var(--muted)}
.seg-allow{fill:var(--allow)}.seg-alert{fill:var(--alert)}
.seg-would-block{fill:var(--would-block)}.seg-block{fill:var(--block)}
table{border-collapse:collapse;width:100%;background:var(--card);font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.none{color:var(--muted)}
footer{color:var(--muted);font-size:12px;padding:0 32px 24px}
"""

# The charts are laid out by this script from the embedded JSON (no library):
# ranked stacked bars per country, a service x payload-type heat map, and
# stacked columns of verdicts over time. Each bar carries data-* attributes so
# a test can read the rendered geometry back from the DOM.
_JS = r"""
(function(){
"use strict";
var D=JSON.parse(document.getElementById("report-data").textContent);
var V=["allow","alert","would-block","block"];
var NS="http://www.w3.org/2000/svg";
function el(name,attrs,parent,text){var e=document.createElementNS(NS,name);
 for(var k in attrs){e.setAttribute(k,attrs[k]);} if(text!==undefined){e.textContent=text;}
 if(parent){parent.appendChild(e);} return e;}
function bytes(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;while(n>=1024&&i<u.length-1){n/=1024;i++;}
 return (i?n.toFixed(1):n.toFixed(0))+" "+u[i];}
function nice(n){var p=Math.pow(10,Math.floor(Math.log10(n))),f=n/p;
 var steps=[1,1.2,1.5,2,2.5,3,4,5,6,8,10];
 for(var i=0;i<steps.length;i++){if(f<=steps[i]){return Math.round(steps[i]*p*100)/100;}}
 return 10*p;}
function svgIn(id,h){var host=document.getElementById(id);host.textContent="";
 var w=Math.max(320,host.clientWidth||640);
 var s=el("svg",{width:w,height:h,viewBox:"0 0 "+w+" "+h,role:"img"},host);return [s,w];}
function empty(id){var host=document.getElementById(id);host.textContent="";
 var p=document.createElement("p");p.className="none";p.textContent="No flows in this period.";
 host.appendChild(p);}

function countries(){
 var rows=D.countries.slice(0,15);
 if(!rows.length){return empty("chart-country");}
 var useBytes=D.totals.bytes_out>0;
 function val(c,v){return useBytes?(c.bytes_out_by_verdict[v]||0):(c[v]||0);}
 function tot(c){return useBytes?c.bytes_out:c.flows;}
 var max=Math.max.apply(null,rows.map(tot))||1,rowH=24,left=110,right=150;
 var r=svgIn("chart-country",rows.length*rowH+4),s=r[0],w=r[1],span=w-left-right;
 rows.forEach(function(c,i){
  var y=i*rowH+2,x=left,g=el("g",{"class":"bar","data-country":c.country,
   "data-value":tot(c)},s);
  el("text",{x:left-8,y:y+15,"text-anchor":"end"},g,c.country==="ZZ"?"unknown":c.country);
  V.forEach(function(v){var n=val(c,v);if(!n){return;}var bw=Math.max(1,span*n/max);
   el("rect",{x:x,y:y+3,width:bw,height:rowH-8,rx:2,"class":"seg seg-"+v,"data-verdict":v,
    "data-value":n},g);x+=bw;});
  el("text",{x:x+6,y:y+15,"class":"muted"},g,
   (useBytes?bytes(c.bytes_out)+" · ":"")+c.flows+" flows");
 });
}

function heat(){
 var svcs=D.services.slice(0,12);
 var types=Object.keys(D.payload_types).slice(0,10);
 if(!svcs.length||!types.length){return empty("chart-service");}
 var max=1;svcs.forEach(function(s){types.forEach(function(t){
  max=Math.max(max,s.payload_types[t]||0);});});
 var left=150,top=86,cell=0,rowH=26;
 var r=svgIn("chart-service",top+svcs.length*rowH+4),s=r[0],w=r[1];
 cell=Math.min(72,(w-left-60)/types.length);
 types.forEach(function(t,j){var x=left+j*cell+cell/2;
  el("text",{x:x,y:top-8,transform:"rotate(-40 "+x+" "+(top-8)+")","class":"muted"},s,t);});
 svcs.forEach(function(sv,i){var y=top+i*rowH;
  var name=sv.service_name||sv.service_id||"(not in catalog)";
  if(sv.operator_country){name+=" · "+sv.operator_country;}
  el("text",{x:left-8,y:y+17,"text-anchor":"end"},s,name);
  types.forEach(function(t,j){var n=sv.payload_types[t]||0;
   var a=n?0.15+0.85*n/max:0;
   var c=el("rect",{x:left+j*cell+1,y:y+1,width:cell-2,height:rowH-2,rx:3,"class":"cell",
    "data-service":sv.service_id||"","data-type":t,"data-value":n,
    fill:n?"rgba(47,111,214,"+a.toFixed(3)+")":"#f1f3f6"},s);
   el("title",{},c,name+" / "+t+": "+n+" flows");
   if(n){el("text",{x:left+j*cell+cell/2,y:y+17,"text-anchor":"middle",
    fill:a>0.55?"#fff":"#1d2430"},s,String(n));}
  });
 });
}

function timeline(){
 var B=D.timeline.buckets,size=D.timeline.bucket_seconds;
 if(!B.length){return empty("chart-time");}
 var by={},starts=[];
 B.forEach(function(b){if(!(b.start in by)){by[b.start]={};starts.push(b.start);}
  by[b.start][b.verdict]=(by[b.start][b.verdict]||0)+b.flows;});
 var lo=D.since!==null?Math.floor(D.since/size)*size:starts[0];
 var hi=Math.floor((D.until-1e-6)/size)*size,cols=[];
 for(var t=lo;t<=hi&&cols.length<400;t+=size){cols.push(t);}
 var max=1;cols.forEach(function(t){var m=0,o=by[t]||{};V.forEach(function(v){m+=o[v]||0;});
  max=Math.max(max,m);});
 max=nice(max);
 var h=200,bottom=22,left=40;
 var r=svgIn("chart-time",h+bottom),s=r[0],w=r[1],cw=(w-left)/cols.length;
 [0,0.5,1].forEach(function(f){var y=h-(h-10)*f;
  el("line",{x1:left,x2:w,y1:y,y2:y,stroke:"#e5e7eb"},s);
  el("text",{x:left-6,y:y+4,"text-anchor":"end","class":"muted"},s,String(Math.round(max*f)));});
 cols.forEach(function(t,i){var o=by[t]||{},y=h,x=left+i*cw;
  var g=el("g",{"class":"col","data-start":t},s);
  V.forEach(function(v){var n=o[v]||0;if(!n){return;}var bh=(h-10)*n/max;y-=bh;
   var rc=el("rect",{x:x+1,y:y,width:Math.max(1,cw-2),height:bh,"class":"seg seg-"+v,
    "data-verdict":v,"data-value":n},g);
   el("title",{},rc,new Date(t*1000).toISOString().slice(0,16).replace("T"," ")+" UTC · "+v+": "+n);
  });
  var every=Math.ceil(cols.length/8);
  if(i%every===0){var d=new Date(t*1000);
   var lab=size>=86400?d.toISOString().slice(5,10):d.toISOString().slice(11,16);
   el("text",{x:x+cw/2,y:h+16,"text-anchor":"middle","class":"muted"},s,lab);}
 });
}

function draw(){countries();heat();timeline();
 document.body.setAttribute("data-charts","drawn");}
draw();
var pending=null;window.addEventListener("resize",function(){clearTimeout(pending);
 pending=setTimeout(draw,100);});
})();
"""

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
</head>
<body>
<header>
<h1>egresswatch report</h1>
<div class="sub">%%PERIOD%%</div>
</header>
<main>
<div class="cards">%%CARDS%%</div>
<div class="legend"><span><i style="background:var(--allow)"></i>allow</span>
<span><i style="background:var(--alert)"></i>alert</span>
<span><i style="background:var(--would-block)"></i>would-block</span>
<span><i style="background:var(--block)"></i>block</span></div>
<div class="grid">
<section class="panel"><h2>Egress by destination country</h2>
<div class="sub">Bar length: bytes sent to addresses in that country; colour: verdict.</div>
<div id="chart-country" class="chart"><noscript>Charts need JavaScript; the tables below
have the same numbers.</noscript></div></section>
<section class="panel"><h2>Flows by service and payload type</h2>
<div class="sub">Service · legal home of its operator. A flow can carry several types.</div>
<div id="chart-service" class="chart"></div></section>
</div>
<section class="panel"><h2>Verdicts over time</h2>
<div class="sub" id="time-caption">Flows per time bucket, stacked by verdict.</div>
<div id="chart-time" class="chart"></div></section>
%%TABLES%%
</main>
<footer>egresswatch %%VERSION%% · %%STORE%% · findings are shown by kind, never by value.
This file contains client addresses: share it like the database.</footer>
<script type="application/json" id="report-data">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

"""Reading the store: filtered flows, report aggregates, alerts.

Everything here takes a :class:`~egresswatch.store.engine.Store` and a
:class:`FlowFilter` and returns frozen rows, so the CLI and the report never
touch SQLAlchemy. Each function is one indexed SQL query (see the indexes in
``schema.py``); multi-valued payload types are split in Python after grouping,
which keeps the SQL portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    case,
    cast,
    func,
    insert,
    or_,
    select,
    update,
)

from egresswatch.store.engine import Store
from egresswatch.store.rows import split_set
from egresswatch.store.schema import ALERTS, FLOWS, AlertRow, FindingRow, Flow

#: what ``--service none`` matches: flows to no catalogued service
NO_SERVICE = "none"


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """Which flows to read. Empty tuples mean "any"; values within a field are OR-ed.

    Times are UNIX seconds. ``after_id`` reads only rows inserted after that row
    id (``tail`` uses it: ids grow with insertion order on both engines).
    """

    since: float | None = None
    until: float | None = None
    countries: tuple[str, ...] = ()
    operator_countries: tuple[str, ...] = ()
    #: service id or name (case-insensitive); ``none`` = no catalogued service
    services: tuple[str, ...] = ()
    payload_types: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    #: client addresses
    clients: tuple[str, ...] = ()
    #: sensor kind (proxy, sniffer) or sensor node name
    sensors: tuple[str, ...] = ()
    after_id: int | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE terms on ``flows`` for this filter."""
        terms: list[ColumnElement[bool]] = []
        if self.since is not None:
            terms.append(Flow.ts >= self.since)
        if self.until is not None:
            terms.append(Flow.ts < self.until)
        if self.countries:
            terms.append(Flow.country.in_([c.upper() for c in self.countries]))
        if self.operator_countries:
            terms.append(Flow.operator_country.in_([c.upper() for c in self.operator_countries]))
        if self.services:
            alts: list[ColumnElement[bool]] = []
            names = [s.lower() for s in self.services if s.lower() != NO_SERVICE]
            if names:
                alts.append(Flow.service_id.in_(names))
                alts.append(func.lower(Flow.service_name).in_(names))
            if len(names) != len(self.services):
                alts.append(Flow.service_id.is_(None))
            terms.append(or_(*alts))
        if self.payload_types:
            terms.append(or_(*(Flow.payload_types.contains(f",{p},") for p in self.payload_types)))
        if self.verdicts:
            terms.append(Flow.verdict.in_(self.verdicts))
        if self.clients:
            terms.append(Flow.client_addr.in_(self.clients))
        if self.sensors:
            terms.append(or_(Flow.sensor.in_(self.sensors), Flow.node.in_(self.sensors)))
        if self.after_id is not None:
            terms.append(Flow.id > self.after_id)
        return terms

    def apply[S: Select](self, stmt: S) -> S:
        terms = self.conditions()
        return stmt.where(and_(*terms)) if terms else stmt


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One recorded decision, as ``egresswatch flows`` shows it."""

    id: int
    decision_id: str
    flow_id: str
    ts: float
    sensor: str
    node: str | None
    stage: str | None
    client_addr: str | None
    client_port: int | None
    client_app: str | None
    client_process: str | None
    client_pid: int | None
    transport: str
    protocol: str
    dst_addr: str | None
    dst_port: int | None
    host: str | None
    sni: str | None
    http_host: str | None
    dns_name: str | None
    method: str | None
    path: str | None
    country: str
    asn: int | None
    as_org: str | None
    geo_source: str
    geo_label: str | None
    service_id: str | None
    service_name: str | None
    service_match: str | None
    operator: str | None
    operator_country: str | None
    payload_types: tuple[str, ...]
    flags: tuple[str, ...]
    findings: int
    verdict: str
    action: str
    mode: str
    rule: str | None
    reason: str | None
    bytes_out: int
    bytes_in: int
    duration: float | None
    status: str | None
    closed_ts: float | None
    elapsed: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["payload_types"] = list(self.payload_types)
        d["flags"] = list(self.flags)
        return d


_FLOW_COLUMNS = [c.name for c in FLOWS.columns]


def _flow_row(mapping: Any) -> FlowRow:
    values = dict(mapping)
    values["payload_types"] = split_set(values["payload_types"])
    values["flags"] = split_set(values["flags"])
    return FlowRow(**values)


def query_flows(
    store: Store,
    flt: FlowFilter = FlowFilter(),
    limit: int | None = 100,
    *,
    newest_first: bool = True,
) -> list[FlowRow]:
    """Flows matching ``flt``, newest first (or oldest first, for ``tail``)."""
    table = FLOWS
    # ts alone (not ts, id): the time index then yields rows already in order and
    # a LIMIT stops the scan early; a second sort key would sort every match first
    order = (table.c.ts.desc(),) if newest_first else (table.c.id.asc(),)
    stmt = flt.apply(select(table)).order_by(*order)
    if limit is not None:
        stmt = stmt.limit(limit)
    with store.connect() as conn:
        return [_flow_row(m) for m in conn.execute(stmt).mappings()]


def latest_flow_id(store: Store) -> int:
    """The highest flows.id so far (0 for an empty table); ``tail`` starts after it."""
    with store.connect() as conn:
        return conn.execute(select(func.coalesce(func.max(Flow.id), 0))).scalar_one()


def count_flows(store: Store, flt: FlowFilter = FlowFilter()) -> int:
    """How many flows match ``flt``."""
    with store.connect() as conn:
        return conn.execute(flt.apply(select(func.count()).select_from(FLOWS))).scalar_one()


@dataclass(frozen=True, slots=True)
class EgressRow:
    """One cell of "egress by service x country x payload type x verdict"."""

    service_id: str | None
    service_name: str | None
    operator_country: str | None
    country: str
    payload_type: str
    verdict: str
    flows: int
    bytes_out: int
    bytes_in: int


def egress_summary(store: Store, flt: FlowFilter = FlowFilter()) -> list[EgressRow]:
    """Flows and bytes grouped by service, address country, payload type and verdict.

    A flow with several payload types counts once under each of them, so the
    flows column of this table does not sum to the number of flows; use
    :func:`count_flows` for that. A flow without payload type is under ``other``.
    Sorted by bytes out, then flows, descending.
    """
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
        )
    ).group_by(Flow.service_id, Flow.country, Flow.payload_types, Flow.verdict)
    cells: dict[tuple[Any, ...], list[Any]] = {}
    with store.connect() as conn:
        for sid, sname, opc, country, ptypes, verdict, n, bout, bin_ in conn.execute(stmt):
            for ptype in split_set(ptypes) or ("other",):
                key = (sid, country, ptype, verdict)
                cell = cells.get(key)
                if cell is None:
                    cells[key] = [sname, opc, n, int(bout), int(bin_)]
                else:
                    cell[2] += n
                    cell[3] += int(bout)
                    cell[4] += int(bin_)
    rows = [
        EgressRow(sid, sname, opc, country, ptype, verdict, n, bout, bin_)
        for (sid, country, ptype, verdict), (sname, opc, n, bout, bin_) in cells.items()
    ]
    rows.sort(key=lambda r: (-r.bytes_out, -r.flows, r.service_id or "", r.country, r.payload_type))
    return rows


@dataclass(frozen=True, slots=True)
class ClientRow:
    """A client address and what it sent."""

    client_addr: str | None
    #: the app hint of the newest flow from that address that had one
    client_app: str | None
    flows: int
    bytes_out: int
    blocked: int
    alerted: int
    services: int


def top_clients(store: Store, flt: FlowFilter = FlowFilter(), limit: int = 10) -> list[ClientRow]:
    """Clients by bytes sent, with counts of blocked (incl. would-block) and alerted flows.

    The ranking reads only the covering time index; the app hint of each of the
    ``limit`` clients is then one short lookup (the newest matching row).
    """
    blocked = func.sum(case((Flow.verdict.in_(("block", "would-block")), 1), else_=0))
    alerted = func.sum(case((Flow.verdict == "alert", 1), else_=0))
    bytes_out = func.coalesce(func.sum(Flow.bytes_out), 0)
    stmt = (
        flt.apply(
            select(
                Flow.client_addr,
                func.count(),
                bytes_out,
                blocked,
                alerted,
                func.count(Flow.service_id.distinct()),
            )
        )
        .group_by(Flow.client_addr)
        .order_by(bytes_out.desc(), func.count().desc(), Flow.client_addr)
        .limit(limit)
    )
    with store.connect() as conn:
        ranked = list(conn.execute(stmt))
        out = []
        for addr, n, b, bl, al, svc in ranked:
            app_stmt = flt.apply(select(Flow.client_app)).where(
                Flow.client_addr.is_(None) if addr is None else Flow.client_addr == addr,
                Flow.client_app.is_not(None),
            )
            app = conn.execute(app_stmt.order_by(Flow.ts.desc()).limit(1)).scalar()
            out.append(ClientRow(addr, app, n, int(b), int(bl or 0), int(al or 0), svc))
    return out


@dataclass(frozen=True, slots=True)
class FindingCount:
    """How many findings of one kind, and in how many decisions."""

    kind: str
    findings: int
    decisions: int


def findings_by_kind(store: Store, flt: FlowFilter = FlowFilter()) -> list[FindingCount]:
    """Findings per kind in the filter's time range (only ``since``/``until``/``sensors`` apply:
    findings may outlive or predate their flows under a shorter retention)."""
    stmt = select(FindingRow.kind, func.count(), func.count(FindingRow.decision_id.distinct()))
    if flt.since is not None:
        stmt = stmt.where(FindingRow.ts >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(FindingRow.ts < flt.until)
    if flt.sensors:
        stmt = stmt.where(FindingRow.sensor.in_(flt.sensors))
    stmt = stmt.group_by(FindingRow.kind).order_by(func.count().desc(), FindingRow.kind)
    with store.connect() as conn:
        return [FindingCount(k, n, d) for k, n, d in conn.execute(stmt)]


@dataclass(frozen=True, slots=True)
class TimeBucket:
    """Flows with one verdict in one time bucket."""

    start: float
    verdict: str
    flows: int


def verdicts_over_time(
    store: Store, flt: FlowFilter = FlowFilter(), bucket_seconds: int = 3600
) -> list[TimeBucket]:
    """Flows per verdict per time bucket (bucket start = floor(ts / size) * size)."""
    if bucket_seconds <= 0:
        raise ValueError("bucket_seconds must be positive")
    # floor() is not portable: SQLite has it only when built with math functions
    # (3.35+, SQLITE_ENABLE_MATH_FUNCTIONS); there CAST truncates, which is floor for the
    # positive times we store. PostgreSQL's CAST rounds, so it gets floor().
    if store.dialect == "sqlite":
        bucket = cast(Flow.ts / bucket_seconds, BigInteger)
    else:
        bucket = cast(func.floor(Flow.ts / bucket_seconds), BigInteger)
    stmt = flt.apply(select(bucket, Flow.verdict, func.count())).group_by(bucket, Flow.verdict)
    stmt = stmt.order_by(bucket, Flow.verdict)
    with store.connect() as conn:
        return [TimeBucket(float(b * bucket_seconds), v, n) for b, v, n in conn.execute(stmt)]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as the alert sinks hand it to the store (after deduplication)."""

    ts: float
    rule: str
    severity: str
    count: int = 1
    last_ts: float | None = None
    decision_id: str | None = None
    sensor: str | None = None
    client_addr: str | None = None
    service_id: str | None = None
    country: str | None = None
    summary: str | None = None
    sink: str | None = None
    delivery_state: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    delivered_ts: float | None = None
    #: the row id once stored
    id: int | None = field(default=None)


def insert_alert(store: Store, alert: AlertRecord) -> int:
    """Store an alert; returns its id. Synchronous: call it off the event loop."""
    values = asdict(alert)
    values.pop("id")
    if values["last_ts"] is None:
        values["last_ts"] = values["ts"]
    with store.connect() as conn:
        result = conn.execute(insert(ALERTS).values(**values).returning(AlertRow.id))
        return int(result.scalar_one())


def update_alert(
    store: Store,
    alert_id: int,
    *,
    delivery_state: str | None = None,
    attempts: int | None = None,
    last_error: str | None = None,
    delivered_ts: float | None = None,
    count: int | None = None,
    last_ts: float | None = None,
) -> None:
    """Update an alert's delivery state, or fold more occurrences into it (count, last_ts)."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "delivery_state": delivery_state,
            "attempts": attempts,
            "last_error": last_error,
            "delivered_ts": delivered_ts,
            "count": count,
            "last_ts": last_ts,
        }.items()
        if v is not None
    }
    if not changes:
        return
    with store.connect() as conn:
        conn.execute(update(ALERTS).where(AlertRow.id == alert_id).values(**changes))


def list_alerts(
    store: Store, since: float | None = None, until: float | None = None, limit: int | None = 100
) -> list[AlertRecord]:
    """Alerts, newest first."""
    table = ALERTS
    stmt = select(table)
    if since is not None:
        stmt = stmt.where(table.c.ts >= since)
    if until is not None:
        stmt = stmt.where(table.c.ts < until)
    stmt = stmt.order_by(table.c.ts.desc(), table.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    with store.connect() as conn:
        return [AlertRecord(**dict(m)) for m in conn.execute(stmt).mappings()]


@dataclass(frozen=True, slots=True)
class AlertCount:
    """Alerts per rule and severity, with delivery outcome."""

    rule: str
    severity: str
    alerts: int
    occurrences: int
    undelivered: int


def alerts_by_rule(store: Store, flt: FlowFilter = FlowFilter()) -> list[AlertCount]:
    """Alerts per rule and severity in the filter's time range."""
    undelivered = func.sum(case((AlertRow.delivery_state != "delivered", 1), else_=0))
    stmt = select(
        AlertRow.rule,
        AlertRow.severity,
        func.count(),
        func.coalesce(func.sum(AlertRow.count), 0),
        undelivered,
    )
    if flt.since is not None:
        stmt = stmt.where(AlertRow.ts >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(AlertRow.ts < flt.until)
    stmt = stmt.group_by(AlertRow.rule, AlertRow.severity).order_by(func.count().desc())
    with store.connect() as conn:
        return [
            AlertCount(r, s, n, int(occ), int(und or 0)) for r, s, n, occ, und in conn.execute(stmt)
        ]


def since_ago(seconds: float, now: float | None = None) -> float:
    """``now - seconds``: the ``since`` of a "last 24h" filter."""
    return (time.time() if now is None else now) - seconds

"""Turning a :class:`~egresswatch.model.Decision` into table rows.

Plain dicts keyed by column name: they go to ``INSERT ... executemany`` as they
are, and to the spill journal as JSON. Privacy rules are applied here, once:
query-string values are redacted, bodies and header values are never read,
findings carry only their redacted form.
"""

from __future__ import annotations

import math
from typing import Any

from egresswatch.classify.redact import QUERY_VALUE_REDACTED, redact_path
from egresswatch.model import UNKNOWN_COUNTRY, Action, Decision, FlowClosed, Mode

_BLOCK = Action.BLOCK
_MONITOR = Mode.MONITOR

#: what replaces every query-string value (keys stay: ``?key=…&model=…``)
REDACTED = QUERY_VALUE_REDACTED

#: column -> max length, from schema.py (PostgreSQL refuses longer strings)
_LIMITS = {
    "decision_id": 64,
    "flow_id": 64,
    "node": 64,
    "stage": 16,
    "client_addr": 45,
    "client_app": 256,
    "client_process": 128,
    "dst_addr": 45,
    "host": 255,
    "sni": 255,
    "http_host": 255,
    "dns_name": 255,
    "method": 16,
    "path": 2048,
    "as_org": 255,
    "geo_label": 64,
    "service_id": 64,
    "service_name": 128,
    "operator": 128,
    "payload_types": 255,
    "flags": 255,
    "rule": 128,
    "status": 32,
}


def clip(value: str | None, limit: int) -> str | None:
    """Cut ``value`` to ``limit`` characters (None stays None)."""
    if value is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


def join_set(values: tuple[str, ...] | list[str]) -> str:
    """``("a", "b") -> ",a,b,"``: delimited so ``LIKE '%,a,%'`` is exact."""
    return "," + ",".join(str(v) for v in values) + "," if values else ","


def split_set(value: str | None) -> tuple[str, ...]:
    """Inverse of :func:`join_set`."""
    if not value:
        return ()
    return tuple(v for v in value.split(",") if v)


#: the flows columns a decision fills, in table order (``id`` is the database's)
FLOW_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "flow_id",
    "ts",
    "sensor",
    "node",
    "stage",
    "client_addr",
    "client_port",
    "client_app",
    "client_process",
    "client_pid",
    "transport",
    "protocol",
    "dst_addr",
    "dst_port",
    "host",
    "sni",
    "http_host",
    "dns_name",
    "method",
    "path",
    "country",
    "asn",
    "as_org",
    "geo_source",
    "geo_label",
    "service_id",
    "service_name",
    "service_match",
    "operator",
    "operator_country",
    "payload_types",
    "flags",
    "findings",
    "verdict",
    "action",
    "mode",
    "rule",
    "reason",
    "bytes_out",
    "bytes_in",
    "duration",
    "status",
    "closed_ts",
    "elapsed",
)
#: positions of the columns a FlowClosed sets
CLOSE_COLUMNS = ("bytes_out", "bytes_in", "duration", "status", "closed_ts")
CLOSE_POSITIONS = tuple(FLOW_COLUMNS.index(c) for c in CLOSE_COLUMNS)
#: (position, limit) of every text column with a length limit
_CLIPPED = tuple((FLOW_COLUMNS.index(c), n) for c, n in _LIMITS.items())


#: What the SQLite writer binds for a missing value: a float NaN, which SQLite stores
#: as NULL (it has no NaN; sqlite3_bind_double turns one into NULL). Python's sqlite3
#: module binds None only after looking for an adapter for it (a tuple, a dict lookup
#: and two attribute lookups per value): ~7,000 of the ~100,000 instructions a
#: decision cost through the writer, for the ~7 missing values of a typical row
#: (valgrind --tool=callgrind, docs/performance.md). A float binds directly.
SQLITE_NULL = math.nan

#: raw path -> redacted path, for the paths a sensor sees again and again (API endpoints);
#: cleared when full. Raw paths may hold query tokens: this lives in process memory only,
#: as the flows that carried them do.
_PATHS: dict[str, str | None] = {}
_PATHS_MAX = 4096


def _redacted_path(path: str | None) -> str | None:
    if path is None:
        return None
    hit = _PATHS.get(path, _PATHS)
    if hit is not _PATHS:
        return hit  # type: ignore[return-value]
    if len(_PATHS) >= _PATHS_MAX:
        _PATHS.clear()
    red = _PATHS[path] = redact_path(path)
    return red


def flow_values(decision: Decision, node: str | None = None, absent: Any = None) -> tuple[Any, ...]:
    """The ``flows`` row of a decision as values in :data:`FLOW_COLUMNS` order.

    The hot path of the writer: built positionally, without a dict. Enum members
    are read through ``_value_`` (a plain attribute; ``.value`` is a descriptor
    and was a fifth of the time here), and the StrEnum payload types join as the
    strings they are. A tuple: rows wait in the writer's queue, and a tuple of
    plain values is one the garbage collector stops scanning, where a list stays
    tracked for as long as it waits.

    ``absent`` stands for every missing value (None by default). The SQLite
    writer passes :data:`SQLITE_NULL`: see there.
    """
    a = decision.assessment
    o = a.observation
    v = decision.verdict
    geo = a.geo
    m = a.service
    svc = m.service if m is not None else None
    country = geo.country
    opc = a.operator_country
    no = absent
    # x if (x := ...) is not None else no: a missing value becomes ``absent``
    x: Any
    row: tuple[Any, ...] = (
        decision.id,
        o.flow_id,
        o.time,
        o.sensor._value_,
        node if node is not None else no,
        o.stage._value_,
        x if (x := o.client_addr) is not None else no,
        x if (x := o.client_port) is not None else no,
        x if (x := o.client_app) is not None else no,
        x if (x := o.client_process) is not None else no,
        x if (x := o.client_pid) is not None else no,
        o.transport._value_,
        o.protocol._value_,
        x if (x := o.dst_addr) is not None else no,
        x if (x := o.dst_port) is not None else no,
        x if (x := a.host) is not None else no,
        x if (x := o.sni) is not None else no,
        x if (x := o.http_host) is not None else no,
        x if (x := o.dns_name) is not None else no,
        x if (x := o.method) is not None else no,
        x if (x := _redacted_path(o.path)) is not None else no,
        country.upper()[:2] if country else UNKNOWN_COUNTRY,
        x if (x := geo.asn) is not None else no,
        x if (x := geo.org) is not None else no,
        geo.source._value_,
        x if (x := geo.label) is not None else no,
        svc.id if svc else no,
        svc.name if svc else no,
        m.kind._value_ if m is not None else no,
        x if svc and (x := svc.operator) is not None else no,
        opc.upper()[:2] if opc else no,
        "," + ",".join(a.payload_types) + "," if a.payload_types else ",",
        "," + ",".join(a.flags) + "," if a.flags else ",",
        len(a.findings),
        # Verdict.label, inlined (a property call per row): block in monitor mode
        "would-block" if v.action is _BLOCK and v.mode is _MONITOR else v.action._value_,
        v.action._value_,
        v.mode._value_,
        x if (x := v.rule) is not None else no,
        x if (x := v.reason) is not None else no,
        o.bytes_out,
        o.bytes_in,
        no,  # duration, status, closed_ts: set when the flow closes
        no,
        no,
        x if (x := decision.elapsed) is not None else no,
    )
    for pos, limit in _CLIPPED:
        value = row[pos]
        if value is not no and len(value) > limit:
            return _clipped(row, no)  # rare: built as a tuple, copied only to cut
    return row


def _clipped(row: tuple[Any, ...], absent: Any) -> tuple[Any, ...]:
    """``row`` with every text value over its column's limit cut (see :func:`clip`)."""
    out = list(row)
    for pos, limit in _CLIPPED:
        value = out[pos]
        if value is not absent and len(value) > limit:
            out[pos] = clip(value, limit)
    return tuple(out)


def flow_row(decision: Decision, node: str | None = None) -> dict[str, Any]:
    """The ``flows`` row of a decision as a dict keyed by column."""
    return dict(zip(FLOW_COLUMNS, flow_values(decision, node), strict=True))


#: the findings columns a decision fills, in table order (``id`` is the database's)
FINDING_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "seq",
    "ts",
    "sensor",
    "kind",
    "redacted",
    "where",
    "detail",
    "service_id",
    "country",
)


def finding_values(decision: Decision) -> tuple[tuple[Any, ...], ...]:
    """The ``findings`` rows of a decision as values in :data:`FINDING_COLUMNS` order."""
    return tuple(tuple(r.values()) for r in finding_rows(decision))


def finding_rows(decision: Decision) -> list[dict[str, Any]]:
    """The ``findings`` rows of a decision: kind and redacted value only."""
    a = decision.assessment
    if not a.findings:
        return []  # most decisions: nothing to compute
    o = a.observation
    country = (a.geo.country or UNKNOWN_COUNTRY).upper()[:2]
    service_id = a.service.service.id if a.service else None
    return [
        {
            "decision_id": decision.id,
            "seq": i,
            "ts": o.time,
            "sensor": str(o.sensor),
            "kind": str(f.kind),
            "redacted": clip(f.redacted, 256),
            "where": clip(f.where, 64),
            "detail": clip(f.detail, 64),
            "service_id": service_id,
            "country": country,
        }
        for i, f in enumerate(a.findings)
    ]


def closed_row(event: FlowClosed) -> dict[str, Any]:
    """The values a :class:`FlowClosed` sets on the latest row of its flow."""
    return {
        "flow_id": event.flow_id,
        "sensor": str(event.sensor),
        "closed_ts": event.time,
        "bytes_out": event.bytes_out,
        "bytes_in": event.bytes_in,
        "duration": event.duration,
        "status": clip(event.status, 32),
    }

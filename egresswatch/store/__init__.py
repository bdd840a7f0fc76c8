"""The SQL store: every decision recorded, on SQLite (default) or PostgreSQL.

Public API (names are stable; the report, metrics and alert modules use them)::

    store = open_store(url)                  # None: $EGRESSWATCH_DB or the XDG default file
    writer = store.writer(spill_path=...)    # a ports.Sink: record / flow_closed / close
    rows = query_flows(store, FlowFilter(since=..., countries=("CN",)), limit=50)
    egress_summary(store, flt); top_clients(store, flt); findings_by_kind(store, flt)
    alerts_by_rule(store, flt); list_alerts(store); verdicts_over_time(store, flt, 3600)
    insert_alert(store, AlertRecord(...)); update_alert(store, id, delivery_state=...)
    prune(store, flows_older_than=30 * 86400, findings_older_than=7 * 86400)

The tables (``FLOWS``, ``FINDINGS``, ``ALERTS``, ``DNS_ANSWERS``, and ``metadata``),
their columns (``Flow.ts``, ``FindingRow.kind`` ...) and ``store.connect()`` are there
for anything else.
"""

from __future__ import annotations

from egresswatch.store.engine import Store, StoreInfo, default_url, open_store
from egresswatch.store.queries import (
    AlertCount,
    AlertRecord,
    ClientRow,
    EgressRow,
    FindingCount,
    FlowFilter,
    FlowRow,
    TimeBucket,
    alerts_by_rule,
    count_flows,
    egress_summary,
    findings_by_kind,
    insert_alert,
    latest_flow_id,
    list_alerts,
    query_flows,
    since_ago,
    top_clients,
    update_alert,
    verdicts_over_time,
)
from egresswatch.store.schema import (
    ALERTS,
    DNS_ANSWERS,
    FINDINGS,
    FLOWS,
    AlertRow,
    DnsAnswerRow,
    FindingRow,
    Flow,
    metadata,
)

__all__ = [
    "ALERTS",
    "DNS_ANSWERS",
    "FINDINGS",
    "FLOWS",
    "AlertCount",
    "AlertRecord",
    "AlertRow",
    "ClientRow",
    "DnsAnswerRow",
    "EgressRow",
    "FindingCount",
    "FindingRow",
    "Flow",
    "FlowFilter",
    "FlowRow",
    "Store",
    "StoreInfo",
    "TimeBucket",
    "alerts_by_rule",
    "count_flows",
    "default_url",
    "egress_summary",
    "findings_by_kind",
    "insert_alert",
    "latest_flow_id",
    "list_alerts",
    "metadata",
    "open_store",
    "query_flows",
    "since_ago",
    "top_clients",
    "update_alert",
    "verdicts_over_time",
]

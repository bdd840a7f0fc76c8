"""SQLAlchemy 2 tables: flows, findings, alerts, DNS answers and opt-in raw body excerpts.

The schema itself is created and changed only by the alembic migrations in
``egresswatch/store/migrations`` (never ``metadata.create_all``), so an old
database is upgraded in place. These tables must match the head revision; a
test compares them.

Core ``Table`` objects, not ORM classes: every read and write here is a Core
statement, and importing ``sqlalchemy.orm`` cost each command ~0.15 s of start-up
(``egresswatch report`` at 10 million flows: 1.7 s in all). ``Flow.ts``,
``FindingRow.kind`` ... are the tables' column collections (``FLOWS.c``), so
statements read as they did with the models.

Conventions, chosen for speed on both SQLite and PostgreSQL:

* times are UNIX seconds in a double (``ts``): comparisons and time buckets are
  plain arithmetic on both engines, and no time-zone conversion can differ;
* a flow's payload types and flags are stored as one delimited string
  (``",chat-prompt,telemetry,"``) so a row is one insert; the leading and
  trailing comma make ``LIKE '%,chat-prompt,%'`` exact;
* a country is always two letters; ``ZZ`` (``model.UNKNOWN_COUNTRY``) when
  nobody knew, so group-bys need no NULL handling;
* text that comes from the network is truncated to the column length in
  :mod:`egresswatch.store.rows` before insertion (PostgreSQL would refuse it).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

#: SQLite only makes ``INTEGER PRIMARY KEY`` an alias of the rowid (fast, autoincrementing);
#: PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


#: the covering time index of flows: ts first, then what reports group and filter by
FLOWS_REPORT_COLUMNS = (
    "ts",
    "verdict",
    "country",
    "service_id",
    "payload_types",
    "operator_country",
    "client_addr",
    "sensor",
    "bytes_out",
    "bytes_in",
    "service_name",
)


#: every egresswatch table; what the migrations must produce (tests/test_store.py)
metadata = MetaData()


#: One row per :class:`~egresswatch.model.Decision` (``decision_id`` is unique).
#:
#: Several decisions may share a ``flow_id`` (a TLS ClientHello, then a request
#: on the same connection). When the flow closes, its *latest* row receives the
#: final byte counts, duration and status and the earlier rows of that flow get
#: zero bytes, so ``SUM(bytes_out)`` over rows counts every byte once.
FLOWS = Table(
    "flows",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False),
    Column("flow_id", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    #: sensor kind: proxy | sniffer | explain | verify
    Column("sensor", String(16), nullable=False),
    #: the sensor instance (host name by default): tells sensors apart in a central store
    Column("node", String(64)),
    Column("stage", String(16)),
    Column("client_addr", String(45)),
    Column("client_port", Integer),
    #: app hint: User-Agent or process name
    Column("client_app", String(256)),
    Column("client_process", String(128)),
    Column("client_pid", Integer),
    Column("transport", String(8), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("dst_addr", String(45)),
    Column("dst_port", Integer),
    #: the normalised name the flow was judged by
    Column("host", String(255)),
    Column("sni", String(255)),
    Column("http_host", String(255)),
    Column("dns_name", String(255)),
    Column("method", String(16)),
    #: path with every query-string value redacted (keys kept)
    Column("path", String(2048)),
    Column("country", String(2), nullable=False),
    Column("asn", BigInteger),
    Column("as_org", String(255)),
    Column("geo_source", String(16), nullable=False),
    Column("geo_label", String(64)),
    Column("service_id", String(64)),
    Column("service_name", String(128)),
    #: official | lookalike
    Column("service_match", String(16)),
    Column("operator", String(128)),
    #: legal home of the operator; only for official matches (``Assessment.operator_country``)
    Column("operator_country", String(2)),
    Column("payload_types", String(255), nullable=False, default=","),
    Column("flags", String(255), nullable=False, default=","),
    Column("findings", Integer, nullable=False, default=0),
    #: allow | alert | block | would-block (``Verdict.label``)
    Column("verdict", String(16), nullable=False),
    Column("action", String(8), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("rule", String(128)),
    Column("reason", Text),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    Column("bytes_in", BigInteger, nullable=False, default=0),
    #: seconds from first to last packet; set when the flow closes
    Column("duration", Float),
    #: HTTP status or a short error ("reset"); set when the flow closes
    Column("status", String(32)),
    Column("closed_ts", Float),
    #: seconds the inspector took for this decision
    Column("elapsed", Float),
    Index("ux_flows_decision_id", "decision_id", unique=True),
    # every read is time-bounded; the other columns make the report's group-bys
    # index-only (migration 0004)
    Index("ix_flows_ts_report", *FLOWS_REPORT_COLUMNS),
)


#: A sensitive item found in a flow: its kind and redacted form only, never the value.
FINDINGS = Table(
    "findings",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False),
    #: position within the decision: (decision_id, seq) makes replays idempotent
    Column("seq", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("sensor", String(16), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("redacted", String(256), nullable=False),
    Column("where", String(64)),
    Column("detail", String(64)),
    Column("service_id", String(64)),
    Column("country", String(2), nullable=False),
    Index("ux_findings_decision_seq", "decision_id", "seq", unique=True),
    Index("ix_findings_ts_kind", "ts", "kind", "sensor", "decision_id"),
)


#: An alert raised by a rule, after deduplication, and the state of its delivery.
ALERTS = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    #: time of the last occurrence folded into this alert by deduplication
    Column("last_ts", Float, nullable=False),
    Column("rule", String(128), nullable=False),
    Column("severity", String(16), nullable=False),
    #: how many occurrences deduplication folded into this alert
    Column("count", Integer, nullable=False, default=1),
    Column("decision_id", String(64)),
    Column("sensor", String(16)),
    Column("client_addr", String(45)),
    Column("service_id", String(64)),
    Column("country", String(2)),
    Column("summary", Text),
    #: the delivery target: log | webhook | slack | syslog
    Column("sink", String(32)),
    #: pending | delivered | failed | retrying
    Column("delivery_state", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("delivered_ts", Float),
    Index("ix_alerts_ts", "ts"),
    Index("ix_alerts_rule_ts", "rule", "ts"),
    Index("ix_alerts_state", "delivery_state"),
)


#: A DNS answer seen by the sniffer: which name an address was given for.
DNS_ANSWERS = Table(
    "dns_answers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("sensor", String(16), nullable=False),
    Column("node", String(64)),
    Column("client_addr", String(45)),
    Column("qname", String(255), nullable=False),
    #: A | AAAA | CNAME | HTTPS ... (RFC 1035 section 3.2.2 type mnemonics)
    Column("rtype", String(16), nullable=False),
    Column("answer", String(255), nullable=False),
    Column("ttl", Integer),
    Index("ix_dns_answer_ts", "answer", "ts"),
    Index("ix_dns_qname", "qname"),
    Index("ix_dns_ts", "ts"),
)


#: The first bytes of a request body, kept only when the user opted in (``store.raw_bodies``).
#:
#: This is raw data, unlike everything else in the store: the bytes as the
#: sensor saw them, before any content decoding, capped at the configured size.
#: Kept for its own, short retention (``Retention.excerpts``, a day by default).
PAYLOAD_EXCERPTS = Table(
    "payload_excerpts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("sensor", String(16), nullable=False),
    #: the first ``raw_bodies`` bytes of the body, as sent (possibly content-encoded)
    Column("body", LargeBinary, nullable=False),
    #: True when the body was longer than what is kept
    Column("truncated", Boolean, nullable=False),
    #: the request's Content-Type header, if any
    Column("content_type", String(128)),
    #: the Content-Encoding header (gzip, br ...): the excerpt is not decoded
    Column("content_encoding", String(64)),
    Index("ux_payload_excerpts_decision_id", "decision_id", unique=True),
    Index("ix_payload_excerpts_ts", "ts"),
)


#: column collections, for statements that read like the old models: ``Flow.ts >= since``
Flow = FLOWS.c
FindingRow = FINDINGS.c
AlertRow = ALERTS.c
DnsAnswerRow = DNS_ANSWERS.c
PayloadExcerptRow = PAYLOAD_EXCERPTS.c

"""SQLAlchemy 2 models: flows, findings, alerts, DNS answers and opt-in raw body excerpts.

The schema itself is created and changed only by the alembic migrations in
``egresswatch/store/migrations`` (never ``metadata.create_all``), so an old
database is upgraded in place. These models must match the head revision; a
test compares them.

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

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


class Base(DeclarativeBase):
    """Declarative base of the egresswatch schema."""


class Flow(Base):
    """One row per :class:`~egresswatch.model.Decision` (``decision_id`` is unique).

    Several decisions may share a ``flow_id`` (a TLS ClientHello, then a request
    on the same connection). When the flow closes, its *latest* row receives the
    final byte counts, duration and status and the earlier rows of that flow get
    zero bytes, so ``SUM(bytes_out)`` over rows counts every byte once.
    """

    __tablename__ = "flows"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(64), nullable=False)
    flow_id: Mapped[str] = mapped_column(String(64), nullable=False)
    ts: Mapped[float] = mapped_column(Float, nullable=False)
    #: sensor kind: proxy | sniffer | explain | verify
    sensor: Mapped[str] = mapped_column(String(16), nullable=False)
    #: the sensor instance (host name by default): tells sensors apart in a central store
    node: Mapped[str | None] = mapped_column(String(64))
    stage: Mapped[str | None] = mapped_column(String(16))
    client_addr: Mapped[str | None] = mapped_column(String(45))
    client_port: Mapped[int | None] = mapped_column(Integer)
    #: app hint: User-Agent or process name
    client_app: Mapped[str | None] = mapped_column(String(256))
    client_process: Mapped[str | None] = mapped_column(String(128))
    client_pid: Mapped[int | None] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(8), nullable=False)
    protocol: Mapped[str] = mapped_column(String(16), nullable=False)
    dst_addr: Mapped[str | None] = mapped_column(String(45))
    dst_port: Mapped[int | None] = mapped_column(Integer)
    #: the normalised name the flow was judged by
    host: Mapped[str | None] = mapped_column(String(255))
    sni: Mapped[str | None] = mapped_column(String(255))
    http_host: Mapped[str | None] = mapped_column(String(255))
    dns_name: Mapped[str | None] = mapped_column(String(255))
    method: Mapped[str | None] = mapped_column(String(16))
    #: path with every query-string value redacted (keys kept)
    path: Mapped[str | None] = mapped_column(String(2048))
    country: Mapped[str] = mapped_column(String(2), nullable=False)
    asn: Mapped[int | None] = mapped_column(BigInteger)
    as_org: Mapped[str | None] = mapped_column(String(255))
    geo_source: Mapped[str] = mapped_column(String(16), nullable=False)
    geo_label: Mapped[str | None] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(String(64))
    service_name: Mapped[str | None] = mapped_column(String(128))
    #: official | lookalike
    service_match: Mapped[str | None] = mapped_column(String(16))
    operator: Mapped[str | None] = mapped_column(String(128))
    #: legal home of the operator; only for official matches (``Assessment.operator_country``)
    operator_country: Mapped[str | None] = mapped_column(String(2))
    payload_types: Mapped[str] = mapped_column(String(255), nullable=False, default=",")
    flags: Mapped[str] = mapped_column(String(255), nullable=False, default=",")
    findings: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: allow | alert | block | would-block (``Verdict.label``)
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(8), nullable=False)
    mode: Mapped[str] = mapped_column(String(8), nullable=False)
    rule: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    bytes_out: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    #: seconds from first to last packet; set when the flow closes
    duration: Mapped[float | None] = mapped_column(Float)
    #: HTTP status or a short error ("reset"); set when the flow closes
    status: Mapped[str | None] = mapped_column(String(32))
    closed_ts: Mapped[float | None] = mapped_column(Float)
    #: seconds the inspector took for this decision
    elapsed: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ux_flows_decision_id", "decision_id", unique=True),
        # every read is time-bounded; the other columns make the report's group-bys
        # index-only (migration 0004)
        Index("ix_flows_ts_report", *FLOWS_REPORT_COLUMNS),
    )


class FindingRow(Base):
    """A sensitive item found in a flow: its kind and redacted form only, never the value."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(64), nullable=False)
    #: position within the decision: (decision_id, seq) makes replays idempotent
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    ts: Mapped[float] = mapped_column(Float, nullable=False)
    sensor: Mapped[str] = mapped_column(String(16), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    redacted: Mapped[str] = mapped_column(String(256), nullable=False)
    where: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str] = mapped_column(String(2), nullable=False)

    __table_args__ = (
        Index("ux_findings_decision_seq", "decision_id", "seq", unique=True),
        Index("ix_findings_ts_kind", "ts", "kind", "sensor", "decision_id"),
    )


class AlertRow(Base):
    """An alert raised by a rule, after deduplication, and the state of its delivery."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, nullable=False)
    #: time of the last occurrence folded into this alert by deduplication
    last_ts: Mapped[float] = mapped_column(Float, nullable=False)
    rule: Mapped[str] = mapped_column(String(128), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    #: how many occurrences deduplication folded into this alert
    count: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    decision_id: Mapped[str | None] = mapped_column(String(64))
    sensor: Mapped[str | None] = mapped_column(String(16))
    client_addr: Mapped[str | None] = mapped_column(String(45))
    service_id: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str | None] = mapped_column(String(2))
    summary: Mapped[str | None] = mapped_column(Text)
    #: the delivery target: log | webhook | slack | syslog
    sink: Mapped[str | None] = mapped_column(String(32))
    #: pending | delivered | failed | retrying
    delivery_state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_ts: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_alerts_ts", "ts"),
        Index("ix_alerts_rule_ts", "rule", "ts"),
        Index("ix_alerts_state", "delivery_state"),
    )


class DnsAnswerRow(Base):
    """A DNS answer seen by the sniffer: which name an address was given for."""

    __tablename__ = "dns_answers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, nullable=False)
    sensor: Mapped[str] = mapped_column(String(16), nullable=False)
    node: Mapped[str | None] = mapped_column(String(64))
    client_addr: Mapped[str | None] = mapped_column(String(45))
    qname: Mapped[str] = mapped_column(String(255), nullable=False)
    #: A | AAAA | CNAME | HTTPS ... (RFC 1035 section 3.2.2 type mnemonics)
    rtype: Mapped[str] = mapped_column(String(16), nullable=False)
    answer: Mapped[str] = mapped_column(String(255), nullable=False)
    ttl: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_dns_answer_ts", "answer", "ts"),
        Index("ix_dns_qname", "qname"),
        Index("ix_dns_ts", "ts"),
    )


class PayloadExcerptRow(Base):
    """The first bytes of a request body, kept only when the user opted in (``store.raw_bodies``).

    This is raw data, unlike everything else in the store: the bytes as the
    sensor saw them, before any content decoding, capped at the configured size.
    Kept for its own, short retention (``Retention.excerpts``, a day by default).
    """

    __tablename__ = "payload_excerpts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(64), nullable=False)
    ts: Mapped[float] = mapped_column(Float, nullable=False)
    sensor: Mapped[str] = mapped_column(String(16), nullable=False)
    #: the first ``raw_bodies`` bytes of the body, as sent (possibly content-encoded)
    body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    #: True when the body was longer than what is kept
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    #: the request's Content-Type header, if any
    content_type: Mapped[str | None] = mapped_column(String(128))
    #: the Content-Encoding header (gzip, br ...): the excerpt is not decoded
    content_encoding: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ux_payload_excerpts_decision_id", "decision_id", unique=True),
        Index("ix_payload_excerpts_ts", "ts"),
    )

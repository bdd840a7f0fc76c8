"""Retention: deleting what is older than the configured age.

Findings may be kept for a shorter time than flows (they are the more
sensitive part, even redacted); deleting a flow also deletes its findings.
Raw body excerpts (``payload_excerpts``, only written when the user opted in
with ``store.raw_bodies``) have their own, short retention: one day by default,
never longer than the flows they belong to.
``egresswatch db prune`` calls :func:`prune`; a writer given a
:class:`Retention` prunes by itself every ``interval`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from egresswatch.store.engine import Store
from egresswatch.store.schema import (
    ALERTS,
    DNS_ANSWERS,
    FINDINGS,
    FLOWS,
    PAYLOAD_EXCERPTS,
)

DAY = 86_400.0
#: rows deleted per transaction by prune
PRUNE_CHUNK = 20_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long rows are kept, in seconds; None keeps them forever."""

    flows: float | None = 30 * DAY
    #: None: as long as flows
    findings: float | None = None
    #: None: as long as flows
    alerts: float | None = None
    #: DNS answers only help name addresses seen recently
    dns_answers: float | None = 7 * DAY
    #: raw body excerpts (opt-in, the most sensitive rows): a day; never longer than flows
    excerpts: float | None = 1 * DAY
    #: seconds between automatic prunes in the writer
    interval: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("flows", "findings", "alerts", "dns_answers", "excerpts"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"retention {name} must be positive, got {value}")
        if self.interval <= 0:
            raise ValueError("retention interval must be positive")


@dataclass(frozen=True, slots=True)
class PruneResult:
    """Rows deleted (or, for a dry run, that would be deleted) per table."""

    flows: int
    findings: int
    alerts: int
    dns_answers: int
    excerpts: int = 0
    dry_run: bool = False


def prune(
    store: Store,
    flows_older_than: float | None,
    findings_older_than: float | None = None,
    alerts_older_than: float | None = None,
    dns_older_than: float | None = None,
    excerpts_older_than: float | None = None,
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete rows older than the given ages (seconds). None keeps that table.

    ``findings_older_than`` and ``alerts_older_than`` default to the flows age;
    a findings age longer than the flows age has no effect beyond it, since the
    findings of deleted flows go too. Raw body excerpts follow the same rule:
    ``excerpts_older_than`` defaults to, and is capped at, the flows age.
    """
    now = time.time() if now is None else now
    if findings_older_than is None:
        findings_older_than = flows_older_than
    if alerts_older_than is None:
        alerts_older_than = flows_older_than
    if findings_older_than is not None and flows_older_than is not None:
        findings_older_than = min(findings_older_than, flows_older_than)
    if excerpts_older_than is None:
        excerpts_older_than = flows_older_than
    elif flows_older_than is not None:
        excerpts_older_than = min(excerpts_older_than, flows_older_than)
    # excerpts first: the most sensitive rows never outlive their flow, even between chunks
    plan = (
        ("excerpts", PAYLOAD_EXCERPTS, excerpts_older_than),
        ("flows", FLOWS, flows_older_than),
        ("findings", FINDINGS, findings_older_than),
        ("alerts", ALERTS, alerts_older_than),
        ("dns_answers", DNS_ANSWERS, dns_older_than),
    )
    counts: dict[str, int] = {}
    for name, table, age in plan:
        if age is None:
            counts[name] = 0
            continue
        cutoff = now - age
        if dry_run:
            with store.connect() as conn:
                stmt = select(func.count()).select_from(table).where(table.c.ts < cutoff)
                counts[name] = int(conn.execute(stmt).scalar_one())
            continue
        # in chunks, one transaction each: a writer waiting for the lock (SQLite) gets
        # its turn between chunks instead of timing out and spilling
        total = 0
        while True:
            ids = select(table.c.id).where(table.c.ts < cutoff).limit(PRUNE_CHUNK)
            with store.connect() as conn:
                deleted = int(conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount or 0)
            total += deleted
            if deleted < PRUNE_CHUNK:
                break
        counts[name] = total
    return PruneResult(dry_run=dry_run, **counts)


def apply(store: Store, retention: Retention, now: float | None = None) -> PruneResult:
    """Prune according to a :class:`Retention` setting."""
    return prune(
        store,
        retention.flows,
        retention.findings,
        retention.alerts,
        retention.dns_answers,
        retention.excerpts,
        now=now,
    )

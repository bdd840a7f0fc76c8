"""The store writer: one thread behind a bounded queue, committing in batches.

:class:`StoreWriter` is a ``ports.Sink``. ``record()`` and ``flow_closed()``
only append to a bounded queue (a full queue is counted in
``stats.dropped``, never silent), so a sensor's event loop never waits on the
disk. Decisions are mapped to rows as they are queued; the writer thread commits
a batch when it has ``batch_size`` items or when the oldest item waited
``flush_interval`` seconds.

When the database cannot be reached (PostgreSQL restarting, SQLite locked for
longer than its busy timeout), batches go to a :class:`SpillJournal` and, from
then on, every new batch too, so that order is kept. The thread probes the
database with a growing back-off and, once it answers, replays the journal in
order; inserts are idempotent (``ON CONFLICT DO NOTHING`` on ``decision_id``),
so every decision ends up in the database exactly once.

A :class:`~egresswatch.model.FlowClosed` updates the latest row of its flow
(``flow_id`` + ``sensor``) and zeroes the byte counts of that flow's earlier
rows, so a sum over rows counts each byte once. The writer remembers the
decision ids of the flows it wrote (bounded), so a close is two updates by the
unique ``decision_id`` index and ``flows`` needs no index on a second random
key (which halved the insert rate, bench/store.py). When the writer knows no
decision of the flow yet (still queued, or dropped), the close waits in a
bounded table and is applied when the decision is inserted.

Raw bodies are never stored unless the writer is given ``raw_bodies > 0`` (the
user's opt-in, ``store.raw_bodies``): then the first ``raw_bodies`` bytes of each
request body, as the sensor saw them, go to ``payload_excerpts`` in the same
transaction as their flow row.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import logging
import os
import socket
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from egresswatch.errors import StoreError
from egresswatch.model import Decision, FlowClosed
from egresswatch.store import retention as retention_mod
from egresswatch.store.engine import Store, _short
from egresswatch.store.rows import (
    CLOSE_COLUMNS,
    CLOSE_POSITIONS,
    FINDING_COLUMNS,
    FLOW_COLUMNS,
    SQLITE_NULL,
    closed_row,
    finding_values,
    flow_values,
)
from egresswatch.store.schema import DNS_ANSWERS, PAYLOAD_EXCERPTS
from egresswatch.store.spill import SpillJournal
from egresswatch.store.sqlmany import ManyRows, max_variables, values_sql

log = logging.getLogger("egresswatch.store")

EXCERPT_COLUMNS: tuple[str, ...] = tuple(c.name for c in PAYLOAD_EXCERPTS.columns if c.name != "id")

#: journals (writers sharing one base path) at most, see _claim_journal
MAX_JOURNAL_SLOTS = 32
#: flows whose decision ids the writer remembers for their close, at most; a close
#: for a flow forgotten meanwhile waits like one that overtook its decision
MAX_TRACKED_FLOWS = 200_000
#: UPDATE ... FROM arrived in SQLite 3.33; older libraries update closes row by row
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_BYTES_OUT = FLOW_COLUMNS.index("bytes_out")
_BYTES_IN = FLOW_COLUMNS.index("bytes_in")
_WIDTH = len(FLOW_COLUMNS)
#: closes waiting for their decision row, at most (oldest are forgotten first)
MAX_PENDING_CLOSES = 50_000
#: seconds a close waits for its decision row before it is forgotten
PENDING_CLOSE_TTL = 3600.0
#: back-off between probes of an unreachable database: first and longest wait
RETRY_FIRST = 0.5
RETRY_MAX = 5.0


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """A DNS answer the sniffer saw (RFC 1035 section 4.1.3 resource record, reduced)."""

    time: float
    qname: str
    rtype: str
    answer: str
    ttl: int | None = None
    client_addr: str | None = None
    sensor: str = "sniffer"


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer's counters (metrics read it at scrape time)."""

    #: decisions accepted onto the queue since start
    queued: int
    #: decisions committed to the database (directly or by replay)
    written: int
    #: decisions (and closes) refused because the queue was full or the writer closed
    dropped: int
    #: decisions written to the spill journal
    spilled: int
    #: decisions replayed from the journal into the database
    replayed: int
    #: decisions the database refused (bad data), after a row-by-row retry
    failed: int
    #: decisions neither the database nor the spill journal could take (a full disk)
    lost: int
    #: failed database writes (batches or rows), for a "store cannot write" alert
    write_errors: int
    #: closes waiting for their decision row
    closes_pending: int
    queue_length: int
    queue_capacity: int
    #: journal bytes and records waiting for replay
    spill_bytes: int
    spill_records: int
    #: True while the database is unreachable and batches go to the journal
    spilling: bool
    last_error: str | None


class _Flush:
    """A flush request travelling through the queue."""

    def __init__(self) -> None:
        self.done = threading.Event()


_WAKE = object()

#: a decision on its way through the queue: its ``flows`` values (FLOW_COLUMNS order),
#: its ``findings`` rows (FINDING_COLUMNS order) or None, its raw excerpt or None.
#: Closes and DNS answers travel as dicts ``{"k": "c"|"n", ...}``, and so does every
#: record read back from the spill journal (a decision there is ``{"k": "d", ...}``).
_DecisionRecord = tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...] | None, dict[str, Any] | None]


def _is_decision(rec: Any) -> bool:
    return type(rec) is tuple or rec["k"] == "d"


def _is_unreachable(e: BaseException) -> bool:
    """Errors that mean "try again later" rather than "this row is bad"."""
    if isinstance(e, OperationalError | InterfaceError):
        return True
    return isinstance(e, DBAPIError) and bool(e.connection_invalidated)


class StoreWriter:
    """A ``ports.Sink`` that writes decisions to a :class:`Store` from one thread."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        queue_size: int = 100_000,
        spill_path: Path,
        node: str | None = None,
        retention: retention_mod.Retention | None = None,
        raw_bodies: int = 0,
        thread: bool = True,
    ) -> None:
        check_sizes(batch_size, queue_size, flush_interval, raw_bodies)
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.node = node if node is not None else socket.gethostname()
        self.retention = retention
        #: bytes of each request body kept raw in payload_excerpts; 0 (default): none
        self.raw_bodies = raw_bodies
        #: what a missing value is in a queued row: SQLite binds a NaN as NULL, and
        #: faster than None (store/rows.py, SQLITE_NULL); PostgreSQL gets None
        self._absent = None if store.dialect == "postgresql" else SQLITE_NULL
        # A deque (append/popleft are atomic under the GIL) bounded by hand: a queue.Queue
        # took a lock and a condition notify per put and per get, ~1.5 us each, four times
        # per proxied request (decision + close), half of it on the sensor's thread.
        self._queue: deque[Any] = deque()
        self._queue_size = queue_size
        self._lock_fd, journal_path = _claim_journal(spill_path)
        self._journal = SpillJournal(journal_path)
        self._queued = itertools.count()
        self._dropped = itertools.count()
        self._n_queued = 0
        self._n_dropped = 0
        self._written = 0
        self._spilled = 0
        self._replayed = 0
        self._failed = 0
        self._lost = 0
        self._write_errors = 0
        self._last_error: str | None = None
        #: (flow_id, sensor) -> decision ids written for it, oldest first (for closes).
        #: Tuples, not lists: up to MAX_TRACKED_FLOWS long-lived lists were containers the
        #: garbage collector scanned on every full collection; tuples of strings it untracks.
        self._flows: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self._pending: OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]] = OrderedDict()
        self._spilling = self._journal.pending > 0
        self._retry_at = 0.0
        self._retry_wait = RETRY_FIRST
        self._next_prune = time.monotonic() + (retention.interval if retention else 0.0)
        self._closing = threading.Event()
        self._closed = False
        # Set by flush/close and each time a batch's worth was queued: the thread sleeps on
        # it between batches instead of blocking in queue.get() per item, which woke it (and
        # handed it the GIL) once per decision and once per close (docs/performance.md).
        self._wake = threading.Event()
        self._puts = itertools.count(1)
        self._insert_excerpts = self._insert_sql(
            "payload_excerpts", EXCERPT_COLUMNS, "decision_id", 1
        )
        self._update_close, self._zero_close = self._close_statements()
        #: SQLite: many-row statements, built on the first write (they need the connection)
        self._many: dict[str, ManyRows] | None = None
        #: None when the owner drives the writer itself (``thread=False``, see process())
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="egresswatch-store", daemon=True)
            self._thread.start()

    # -- the Sink interface (called from sensors' threads) -----------------------------

    def record(self, decision: Decision) -> None:
        """Queue a decision as its rows; never blocks. A full queue counts a drop.

        The rows are built here, on the sensor's thread (a few microseconds per
        decision): the writer thread is left with the SQL, most of which runs without
        the GIL, so a proxy's event loop never waits behind a batch's worth of Python
        mapping (docs/performance.md). A decision that cannot be mapped is counted in
        ``stats.failed`` and logged.
        """
        # _refuse() and _queued_item() inlined: this runs once per decision on the
        # sensor's thread, and each method call cost about as much as its body
        q = self._queue
        if (self._closed or len(q) >= self._queue_size) and self._refuse():
            return
        try:
            rec = self._decision_record(decision)
        except Exception:  # a mapping bug must not reach the sensor: counted and logged
            self._failed += 1
            log.exception("store: decision %s could not be mapped to rows", decision.id)
            return
        q.append(rec)
        self._n_queued = next(self._queued) + 1
        if next(self._puts) % self.batch_size == 0:
            self._wake.set()  # a batch's worth: no need to wait for the interval

    def flow_closed(self, event: FlowClosed) -> None:
        """Queue the final byte counts of a flow; never blocks."""
        if not self._refuse():
            self._queue.append(close_record(event))
            self._queued_item()

    def dns_answer(self, answer: DnsAnswer) -> None:
        """Queue a DNS answer seen by the sniffer; never blocks."""
        if self._refuse():
            return
        self._queue.append(dns_record(answer, self.node))
        self._queued_item()

    def _refuse(self) -> bool:
        """True (and a drop counted) when closed or the queue is full."""
        if not self._closed and len(self._queue) < self._queue_size:
            return False
        self._n_dropped = next(self._dropped) + 1
        if not self._closed and (self._n_dropped in (1, 10, 100) or self._n_dropped % 10_000 == 0):
            log.warning("store queue full: %d events dropped so far", self._n_dropped)
        return True

    def _queued_item(self) -> None:
        if next(self._puts) % self.batch_size == 0:
            self._wake.set()  # a batch's worth: no need to wait for the interval

    def _decision_record(self, decision: Decision) -> _DecisionRecord:
        return decision_record(decision, self.node, self._absent, self.raw_bodies)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued before this call is committed or safely spilled.

        Returns False on timeout. Blocks: call it from shutdown code, not from
        an event loop.
        """
        if self._closed or self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._queue.append(marker)  # beyond the bound if need be: a marker is tiny
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything and stop the thread; what cannot be written stays in the journal.

        Call it from the owner's SIGTERM/SIGINT handling. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._thread is None:
            self._run()  # what is queued, then the journal's last chance
        else:
            self._queue.append(_WAKE)
            self._wake.set()
            self._thread.join(timeout)
        if self._thread is not None and self._thread.is_alive():
            log.error("store writer did not finish within %.0f s", timeout)
            return  # the thread still uses the journal: keep it claimed
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)  # releases the flock

    @property
    def stats(self) -> WriterStats:
        """Current counters."""
        return WriterStats(
            queued=self._n_queued,
            written=self._written,
            dropped=self._n_dropped,
            spilled=self._spilled,
            replayed=self._replayed,
            failed=self._failed,
            lost=self._lost,
            write_errors=self._write_errors,
            closes_pending=len(self._pending),
            queue_length=len(self._queue),
            queue_capacity=self._queue_size,
            spill_bytes=self._journal.size_bytes,
            spill_records=self._journal.pending,
            spilling=self._spilling,
            last_error=self._last_error,
        )

    @property
    def spill_path(self) -> Path:
        return self._journal.path

    # -- the writer thread -------------------------------------------------------------

    def process(self, records: list[Any]) -> None:
        """Write records now, on the caller's thread (a writer made with ``thread=False``).

        One batch, as the thread writes it: committed, or spilled to the journal
        when the database is unreachable; then the journal is replayed if the
        database answers again, and old rows pruned when due. Call it with an
        empty list now and then (every ``flush_interval``) for the replay and
        the pruning. The child process of :mod:`egresswatch.store.remote` runs
        its writer this way: one thread that unpickles and writes, instead of
        two taking turns at the GIL.
        """
        self._n_queued += sum(1 for r in records if _is_decision(r))
        self._step(records)

    def _step(self, batch: list[Any]) -> None:
        try:
            if batch:
                self._handle(batch)
            if self._spilling:
                self._replay()
            self._maybe_prune()
        except Exception as e:  # the writer must survive anything
            self._last_error = f"{type(e).__name__}: {e}"
            log.exception("store writer error")

    def _run(self) -> None:
        while True:
            batch, markers = self._collect()
            self._step(batch)
            for m in markers:
                m.done.set()
            if self._closing.is_set() and not self._queue:
                if self._spilling:
                    self._retry_at = 0.0
                    self._replay()
                return

    def _collect(self) -> tuple[list[Any], list[_Flush]]:
        """Gather items until batch_size, a flush marker, or flush_interval has passed."""
        batch: list[Any] = []
        markers: list[_Flush] = []
        q = self._queue
        deadline = time.monotonic() + self.flush_interval
        if not q and not self._closing.is_set():
            # Idle: sleep an interval, or until a producer signals a full batch, a flush or
            # the close. A lone item does not wake the thread (a wake-up per decision hands
            # it the GIL per decision); it waits at most this interval.
            wait = self.flush_interval
            if self._spilling:
                wait = max(0.05, min(wait, self._retry_at - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            deadline = 0.0  # what queued during the wait has waited long enough
        popleft = q.popleft
        while True:
            try:
                item = popleft()
            except IndexError:
                # shutting down: take what is there, wait for nothing
                timeout = 0.0 if self._closing.is_set() else deadline - time.monotonic()
                if timeout <= 0:
                    return batch, markers
                # Sleep until the interval ends or a producer signals a full batch, a
                # flush or the close; then take what queued meanwhile.
                self._wake.wait(timeout)
                self._wake.clear()
                try:
                    item = popleft()
                except IndexError:
                    return batch, markers
            if isinstance(item, _Flush):
                markers.append(item)
                return batch, markers  # flush now
            if item is not _WAKE:
                batch.append(item)
            if len(batch) >= self.batch_size:
                return batch, markers

    def _handle(self, records: list[Any]) -> None:
        if self._spilling:
            self._spill(records)
            return
        try:
            self._write(records)
        except SQLAlchemyError as e:
            if _is_unreachable(e):
                self._unreachable(e)
                self._spill(records)
                return
            stopped = self._write_one_by_one(records, e)
            if stopped is not None:
                self._spill(records[stopped:])

    def _write_one_by_one(self, records: list[Any], first: SQLAlchemyError) -> int | None:
        """A batch was refused for its data: find and count the bad rows, keep the rest.

        Returns None when done, or the index of the first record not written
        because the database became unreachable meanwhile.
        """
        self._last_error = _short(first)
        log.warning("store batch refused (%s); retrying row by row", self._last_error)
        for i, rec in enumerate(records):
            try:
                self._write([rec])
            except SQLAlchemyError as e:
                if _is_unreachable(e):
                    self._unreachable(e)
                    return i
                self._last_error = _short(e)
                self._write_errors += 1
                if _is_decision(rec):
                    self._failed += 1
                log.warning("store refused a record: %s", self._last_error)
        return None

    def _spill(self, records: list[Any]) -> None:
        decisions = sum(1 for r in records if _is_decision(r))
        try:
            self._journal.append([_journal_form(r) for r in records])
        except OSError as e:
            # neither the database nor the journal takes them (a full disk under both):
            # counted in stats.lost, never silent
            self._lost += decisions
            self._last_error = f"spill journal {self._journal.path}: {e.strerror or e}"
            log.error("store: %d decisions lost: %s", decisions, self._last_error)
            return
        self._spilled += decisions

    def _unreachable(self, e: BaseException) -> None:
        self._write_errors += 1
        self._last_error = _short(e)
        if not self._spilling:
            log.warning(
                "database unreachable (%s); spilling to %s", self._last_error, self._journal.path
            )
        self._spilling = True
        self._retry_wait = RETRY_FIRST
        self._retry_at = time.monotonic() + self._retry_wait

    def _replay(self) -> None:
        """If the database answers again, move the journal into it, oldest first."""
        if time.monotonic() < self._retry_at:
            return
        try:
            with self.store.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as e:
            self._last_error = _short(e)
            self._retry_wait = min(self._retry_wait * 2, RETRY_MAX)
            self._retry_at = time.monotonic() + self._retry_wait
            return
        log.info("database reachable again; replaying %d records", self._journal.pending)
        while True:
            records, offset, lines = self._journal.read(self.batch_size)
            if lines == 0:
                self._journal.clear()
                self._spilling = False
                self._retry_wait = RETRY_FIRST
                log.info("spill journal replayed")
                return
            try:
                self._write(records)
            except SQLAlchemyError as e:
                if _is_unreachable(e):
                    self._unreachable(e)
                    return
                if self._write_one_by_one(records, e) is not None:
                    return  # unreachable again: the offset stays, the chunk is replayed later
            self._journal.commit(offset, lines)
            self._replayed += sum(1 for r in records if _is_decision(r))
            # keep the queue flowing during a long replay: newer items queue up behind
            # the journal, in order
            self._drain_into_journal()

    def _drain_into_journal(self) -> None:
        batch: list[Any] = []
        markers: list[_Flush] = []
        for _ in range(self.batch_size * 4):
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Flush):
                markers.append(item)
            elif item is not _WAKE:
                batch.append(item)
        if batch:
            self._spill(batch)
        for m in markers:
            m.done.set()

    # -- SQL -----------------------------------------------------------------------------

    def _insert_sql(self, table: str, cols: tuple[str, ...], key: str, rows: int) -> str:
        """Driver-level ``INSERT ... VALUES (...) x rows ON CONFLICT (key) DO NOTHING``.

        Run with ``exec_driver_sql`` and plain sequences: SQLAlchemy's per-row
        parameter processing cost more than SQLite's insert itself (bench/store.py).
        Both engines accept ``ON CONFLICT (cols) DO NOTHING`` (SQLite >= 3.24,
        PostgreSQL >= 9.5).
        """
        dialect = self.store.engine.dialect
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        one = "(" + ", ".join(mark for _ in cols) + ")"
        return (
            f"INSERT INTO {table} ({', '.join(quote(c) for c in cols)}) "
            f"VALUES {', '.join(one for _ in range(rows))} ON CONFLICT ({key}) DO NOTHING"
        )

    def _close_statements(self) -> tuple[str, str]:
        """Driver-level UPDATEs for a close, by the unique ``decision_id`` index.

        The first sets the final counts on the flow's latest row, the second zeroes
        the byte counts of its earlier rows (so a sum over rows counts each byte once).
        """
        mark = "?" if self.store.engine.dialect.paramstyle == "qmark" else "%s"
        sets = ", ".join(f"{c} = {mark}" for c in CLOSE_COLUMNS)
        return (
            f"UPDATE flows SET {sets} WHERE decision_id = {mark}",
            f"UPDATE flows SET bytes_out = 0, bytes_in = 0 WHERE decision_id = {mark}",
        )

    def _insert_many(
        self, conn: Connection, table: str, cols: tuple[str, ...], key: str, flat: list[Any]
    ) -> None:
        """Insert rows given end to end in ``flat`` (``len(cols)`` values per row).

        Many-row INSERTs on SQLite, ``COPY`` + ``INSERT ... SELECT`` on PostgreSQL:
        psycopg's executemany sends a statement per row and a many-row VALUES
        spends its time parsing placeholders; COPY into a temporary table and
        one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` was about ten times
        faster in bench/store.py. An ordinal column keeps the rows' order, so
        ids follow the order decisions were recorded in.
        """
        if self.store.dialect != "postgresql":
            self._sqlite_many(conn)[table].run_flat(conn, flat)
            return
        import psycopg  # only with PostgreSQL; the driver egresswatch ships with

        names = ", ".join(f'"{c}"' for c in cols)  # our own column names, quoted for "where"
        tmp = f"_egw_in_{table}"
        width = len(cols)
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as cur:
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {tmp} ON COMMIT DELETE ROWS AS "
                    f"SELECT {names}, 0::bigint AS _ord FROM {table} WITH NO DATA"
                )
                with cur.copy(f"COPY {tmp} ({names}, _ord) FROM STDIN") as copy:
                    for i in range(len(flat) // width):
                        copy.write_row((*flat[i * width : (i + 1) * width], i))
                cur.execute(
                    f"INSERT INTO {table} ({names}) SELECT {names} FROM {tmp} ORDER BY _ord "
                    f"ON CONFLICT ({key}) DO NOTHING"
                )
                cur.execute(f"DELETE FROM {tmp}")  # a later batch in the same transaction
        except psycopg.Error as e:
            # the same exception types as everywhere else (OperationalError = unreachable)
            raise DBAPIError.instance(f"COPY {table}", None, e, psycopg.Error) from e

    def _write(self, records: list[Any]) -> None:
        """Commit records in one transaction: inserts first, then closes, in order.

        A close whose flow has rows in this same batch (most proxied requests end
        well within one flush interval) is folded into those rows before they are
        inserted: the row goes in once with its final counts, instead of an insert
        and then an UPDATE that rewrites the row and its report-index entry.

        The rows are collected end to end in one list (``flows``, ``_WIDTH`` values
        per row), which is what the many-row statements bind (store/sqlmany.py).
        """
        flows: list[Any] = []
        findings: list[Any] = []
        closes: list[dict[str, Any]] = []
        dns: list[dict[str, Any]] = []
        excerpts: list[tuple[Any, ...]] = []
        used: list[tuple[str, str]] = []
        #: (flow_id, sensor) -> row numbers of that flow's rows in this batch
        #: (flow_id, sensor) -> the row number of that flow's first row in this batch;
        #: ``again``: the numbers of its later rows (rare: a flow decided twice)
        here: dict[tuple[str, str], int] = {}
        again: dict[tuple[str, str], list[int]] = {}
        seen: set[tuple[str, str]] = set()
        pending = self._pending
        tracked = self._flows
        n = 0
        for rec in records:
            if type(rec) is tuple:
                values, fs, x = rec
            else:
                kind = rec["k"]
                if kind == "c":
                    closes.append(rec["c"])
                    continue
                if kind == "n":
                    dns.append(rec["n"])
                    continue
                # a decision read back from the journal
                flow = rec["flow"]
                values = tuple([flow.get(c) for c in FLOW_COLUMNS])
                fs = [tuple([f.get(c) for c in FINDING_COLUMNS]) for f in rec.get("f", ())]
                x = rec.get("x")
            key = (values[1], values[3])  # flow_id, sensor
            # self._track(key, values[0]), inlined for the common case: a new flow
            if key in tracked or len(tracked) >= MAX_TRACKED_FLOWS:
                if not self._track(key, values[0]):
                    seen.add(key)  # written before (a replay): its close needs the UPDATE
            else:
                tracked[key] = (values[0],)
            if pending:
                waiting = pending.get(key)
                if waiting is not None:
                    values = list(values)
                    for pos, col in zip(CLOSE_POSITIONS, CLOSE_COLUMNS, strict=True):
                        values[pos] = waiting[1][col]
                    used.append(key)
            if key in here:
                again.setdefault(key, []).append(n)
            else:
                here[key] = n
            flows += values
            n += 1
            if fs:
                for f in fs:
                    findings += f
            if x is not None:
                x = {**x, "body": base64.b64decode(x["body"])}
                excerpts.append(tuple(x.get(c) for c in EXCERPT_COLUMNS))
        folded: list[tuple[str, str]] = []
        if closes and here:
            closes, folded = self._fold_closes(closes, flows, here, again, seen)
        with self.store.engine.begin() as conn:
            if flows:
                self._insert_many(conn, "flows", FLOW_COLUMNS, "decision_id", flows)
            if findings:
                self._insert_many(conn, "findings", FINDING_COLUMNS, "decision_id, seq", findings)
            if excerpts:
                conn.exec_driver_sql(self._insert_excerpts, excerpts)
            if dns:
                conn.execute(insert(DNS_ANSWERS), dns)
            closed = self._apply_closes(conn, closes) if closes else []
        for key in used:  # only now: a failed transaction must not lose a waiting close
            pending.pop(key, None)
        for key in folded:
            self._flows.pop(key, None)
        for key in closed:
            self._flows.pop(key, None)
        self._written += n

    def _fold_closes(
        self,
        closes: list[dict[str, Any]],
        flows: list[Any],
        here: dict[tuple[str, str], int],
        again: dict[tuple[str, str], list[int]],
        seen: set[tuple[str, str]],
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Apply closes to rows of this batch before they are inserted.

        The same outcome as inserting and then running :meth:`_apply_closes`:
        the flow's latest row gets the final counts, its earlier rows zero bytes.
        ``flows`` holds the batch's rows end to end; ``here`` and ``again`` say which
        rows are whose.
        Returns the closes left for UPDATEs (flows with no row in this batch, or
        with earlier rows already in the database) and the flows folded.
        """
        left: list[dict[str, Any]] = []
        folded: list[tuple[str, str]] = []
        tracked = self._flows
        for c in closes:
            key = (c["flow_id"], c["sensor"])
            first = here.get(key)
            ids = tracked.get(key)
            rows = (first, *again.get(key, ())) if first is not None else None
            if rows is None or ids is None or len(ids) != len(rows) or key in seen:
                # rows of this flow from earlier batches: the UPDATE path
                left.append(c)
                continue
            last = rows[-1] * _WIDTH
            for pos, col in zip(CLOSE_POSITIONS, CLOSE_COLUMNS, strict=True):
                flows[last + pos] = c[col]
            for i in rows[:-1]:
                flows[i * _WIDTH + _BYTES_OUT] = 0
                flows[i * _WIDTH + _BYTES_IN] = 0
            folded.append(key)
        return left, folded

    def _track(self, key: tuple[str, str], decision_id: str) -> bool:
        """Remember which decisions a flow has, so its close needs no index on flow_id.

        False if the decision was already known (recorded twice, or replayed).
        """
        flows = self._flows
        ids = flows.get(key)
        if ids is None:
            flows[key] = (decision_id,)
            if len(flows) > MAX_TRACKED_FLOWS:
                flows.popitem(last=False)  # the oldest flow: its close becomes pending
        elif decision_id not in ids:
            flows[key] = (*ids, decision_id)
        else:
            return False
        return True

    def _apply_closes(
        self, conn: Connection, closes: list[dict[str, Any]]
    ) -> list[tuple[str, str]]:
        """Set final counts on each flow's latest row, zero its earlier rows.

        Rows are found by ``decision_id`` (unique index) through the decisions
        this writer saw for the flow. Returns the flows to forget once committed.
        """
        updates: list[tuple[Any, ...]] = []
        zero: list[tuple[str]] = []
        done: list[tuple[str, str]] = []
        flows = self._flows
        for c in closes:
            key = (c["flow_id"], c["sensor"])
            ids = flows.get(key)
            if not ids:
                self._remember_close(key, c)
                continue
            # plain tuples through the DBAPI: a Core update() executemany built and
            # processed a parameter dict per row, 40% of the writer's CPU per decision
            # with closes (bench/store_cpu.py)
            updates.append(
                (c["bytes_out"], c["bytes_in"], c["duration"], c["status"], c["closed_ts"], ids[-1])
            )
            if len(ids) > 1:
                zero.extend((did,) for did in ids[:-1])
            done.append(key)
        if self.store.dialect == "sqlite" and _SQLITE_UPDATE_FROM:
            many = self._sqlite_many(conn)
            if updates:
                # one row per decision id, the last close winning as it did row by row
                many["close"].run(conn, list({u[-1]: u for u in updates}.values()))
            if zero:
                many["zero"].run(conn, zero)
            return done
        if updates:
            conn.exec_driver_sql(self._update_close, updates)
        if zero:
            conn.exec_driver_sql(self._zero_close, zero)
        return done

    def _sqlite_many(self, conn: Connection) -> dict[str, ManyRows]:
        """The many-row INSERTs and UPDATEs of this writer on SQLite (see store/sqlmany.py)."""
        if self._many is None:
            limit = max_variables(conn)
            cols = ", ".join(CLOSE_COLUMNS)
            sets = ", ".join(f"{c} = c.{c}" for c in CLOSE_COLUMNS)
            self._many = {
                "flows": ManyRows(
                    lambda k: self._insert_sql("flows", FLOW_COLUMNS, "decision_id", k),
                    len(FLOW_COLUMNS),
                    limit,
                ),
                "findings": ManyRows(
                    lambda k: self._insert_sql("findings", FINDING_COLUMNS, "decision_id, seq", k),
                    len(FINDING_COLUMNS),
                    limit,
                ),
                # UPDATE ... FROM (SQLite >= 3.33) finds each row by the unique decision_id
                # index, one search per VALUES row
                "close": ManyRows(
                    lambda k: (
                        f"WITH c({cols}, decision_id) AS "
                        f"(VALUES {values_sql(len(CLOSE_COLUMNS) + 1, k)}) "
                        f"UPDATE flows SET {sets} FROM c WHERE flows.decision_id = c.decision_id"
                    ),
                    len(CLOSE_COLUMNS) + 1,
                    limit,
                ),
                "zero": ManyRows(
                    lambda k: (
                        "UPDATE flows SET bytes_out = 0, bytes_in = 0 "
                        f"WHERE decision_id IN ({', '.join('?' * k)})"
                    ),
                    1,
                    limit,
                ),
            }
        return self._many

    def _remember_close(self, key: tuple[str, str], close: dict[str, Any]) -> None:
        now = time.monotonic()
        self._pending[key] = (now, close)
        self._pending.move_to_end(key)
        while self._pending:
            oldest_key, (t, _) = next(iter(self._pending.items()))
            if len(self._pending) > MAX_PENDING_CLOSES or now - t > PENDING_CLOSE_TTL:
                del self._pending[oldest_key]
            else:
                break

    def _maybe_prune(self) -> None:
        if self.retention is None or self._spilling or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.retention.interval
        try:
            result = retention_mod.apply(self.store, self.retention)
        except Exception as e:
            self._last_error = str(e)
            log.warning("retention prune failed: %s", e)
            return
        if result.flows or result.findings or result.excerpts:
            log.info(
                "retention pruned %d flows, %d findings, %d raw body excerpts",
                result.flows,
                result.findings,
                result.excerpts,
            )


def check_sizes(batch_size: int, queue_size: int, flush_interval: float, raw_bodies: int) -> None:
    """A writer's settings, checked (both writers take the same ones)."""
    if batch_size < 1 or queue_size < 1 or flush_interval <= 0:
        raise ValueError("batch_size and queue_size must be >= 1, flush_interval > 0")
    if raw_bodies < 0:
        raise ValueError("raw_bodies must be >= 0 (0: never store raw bodies)")


def decision_record(
    decision: Decision, node: str | None, absent: Any, raw_bodies: int
) -> _DecisionRecord:
    """A decision as it travels through a writer's queue (see ``_DecisionRecord``).

    A plain tuple, not a dict: built once per decision on the sensor's thread, and
    waiting in the queue as values the garbage collector stops scanning. The
    journal keeps decisions as dicts keyed by column (see ``_journal_form``).
    """
    return (
        flow_values(decision, node, absent),
        finding_values(decision) if decision.assessment.findings else None,
        _excerpt(decision, raw_bodies) if raw_bodies else None,
    )


def close_record(event: FlowClosed) -> dict[str, Any]:
    return {"k": "c", "c": closed_row(event)}


def dns_record(answer: DnsAnswer, node: str | None) -> dict[str, Any]:
    row = {
        "ts": answer.time,
        "sensor": answer.sensor,
        "node": node,
        "client_addr": answer.client_addr,
        "qname": answer.qname[:255],
        "rtype": answer.rtype[:16],
        "answer": answer.answer[:255],
        "ttl": answer.ttl,
    }
    return {"k": "n", "n": row}


def _excerpt(decision: Decision, raw_bodies: int) -> dict[str, Any] | None:
    """The opted-in raw excerpt of a decision's request body, or None without a body.

    The body is base64 text here so that a spilled record stays JSON; it is
    decoded when written.
    """
    obs = decision.observation
    if not obs.body:
        return None
    keep = obs.body[:raw_bodies]
    return {
        "decision_id": decision.id,
        "ts": obs.time,
        "sensor": str(obs.sensor),
        "body": base64.b64encode(keep).decode("ascii"),
        "truncated": obs.body_truncated or len(obs.body) > len(keep),
        "content_type": (obs.header("content-type") or "")[:128] or None,
        "content_encoding": (obs.header("content-encoding") or "")[:64] or None,
    }


def _journal_form(rec: Any) -> dict[str, Any]:
    """A queued record as the journal keeps it: a decision keyed by column name, so a
    journal written by one version replays into a newer schema."""
    if type(rec) is not tuple:
        return rec
    values, findings, excerpt = rec
    out: dict[str, Any] = {
        "k": "d",
        # SQLite's stand-in for a missing value is None again here: a journal is JSON,
        # and may be replayed into PostgreSQL
        "flow": {
            c: None if v is SQLITE_NULL else v for c, v in zip(FLOW_COLUMNS, values, strict=True)
        },
        "f": [dict(zip(FINDING_COLUMNS, f, strict=True)) for f in findings or ()],
    }
    if excerpt is not None:
        out["x"] = excerpt
    return out


def _claim_journal(base: Path) -> tuple[int, Path]:
    """Take the first free journal slot: ``base``, then ``base.1``, ``base.2`` ...

    Two processes writing to one database (the proxy and the sniffer units)
    would otherwise share the default journal and replay each other's records.
    A slot is owned through an exclusive ``flock`` on ``<slot>.lock``, held
    until ``close()`` (the kernel drops it if the process dies), so a journal
    left by a dead writer is replayed by the next writer that claims its slot.
    """
    base.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for n in range(MAX_JOURNAL_SLOTS):
        path = base if n == 0 else base.with_name(f"{base.name}.{n}")
        fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return fd, path
    raise StoreError(
        f"{MAX_JOURNAL_SLOTS} store writers already hold spill journals at {base}; "
        "give this one its own spill path"
    )

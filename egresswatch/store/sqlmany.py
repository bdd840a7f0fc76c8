"""Many rows per SQLite statement: the writer's inserts and close updates.

``executemany`` runs one statement per row, and Python's sqlite3 module lets go
of the GIL around every ``sqlite3_step``. In a proxy whose event loop holds the
GIL, taking it back cost the writer thread a wake-up per row: 6.5 thread
wake-ups per proxied request and ~220 us of CPU instead of ~45 us
(docs/performance.md). One statement with up to :data:`MOST_ROWS` rows in its
``VALUES`` takes the GIL back once per chunk, and SQLite parses and binds less.

Chunks are full-size, then powers of two for the rest (37 rows: 32 + 4 + 1), so
a writer uses a handful of statement texts, all kept in sqlite3's statement
cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

#: rows per statement at most; more saved nothing measurable in bench/store.py
MOST_ROWS = 256
#: SQLite's host-parameter limit before 3.32 (later builds allow 32766 or more)
SAFE_VARIABLES = 999


def chunk_sizes(n: int, most: int) -> list[int]:
    """How to cut ``n`` rows: full chunks of ``most``, then descending powers of two."""
    sizes = [most] * (n // most)
    rest = n % most
    bit = 1 << max(0, rest.bit_length() - 1)
    while rest:
        if rest & bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


class ManyRows:
    """Run ``make_sql(k)`` (a statement for k rows of ``width`` values) over any rows."""

    def __init__(self, make_sql: Callable[[int], str], width: int, max_variables: int) -> None:
        self.width = width
        self.most = max(1, min(MOST_ROWS, max_variables // width))
        self._make_sql = make_sql
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = self._make_sql(rows)
        return text

    def run(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (sequences of ``width`` values each)."""
        flat: list[Any] = []
        for row in rows:
            flat += row
        self.run_flat(conn, flat)

    def run_flat(self, conn: Connection, flat: list[Any]) -> None:
        """Insert rows given end to end in one list (``width`` values per row).

        The writer builds its rows this way: list slices are cheap, where
        flattening row by row (``tuple(chain(...))`` of ~11,000 values per
        statement) was ~6% of its time. Statements go straight to the sqlite3
        connection, inside the caller's transaction: SQLAlchemy's statement
        set-up was another ~3%. Errors come back as SQLAlchemy's exceptions,
        as they did through it, so callers tell "unreachable" from "bad row".
        """
        if len(flat) % self.width:
            raise ValueError(f"{len(flat)} values do not make rows of {self.width}")
        raw = conn.connection.driver_connection
        assert raw is not None
        width = self.width
        start = 0
        for size in chunk_sizes(len(flat) // width, self.most):
            end = start + size * width
            sql = self.sql(size)
            try:
                raw.execute(sql, flat[start:end])
            except sqlite3.Error as e:
                raise DBAPIError.instance(sql, None, e, sqlite3.Error) from e
            start = end


def max_variables(conn: Connection) -> int:
    """The host-parameter limit of this SQLite connection (999 if it cannot be read)."""
    raw = conn.connection.driver_connection
    try:
        return int(raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))  # type: ignore[union-attr]
    except (AttributeError, sqlite3.Error):
        return SAFE_VARIABLES


def values_sql(width: int, rows: int) -> str:
    """``(?, ?, ...), (?, ?, ...)``: ``rows`` groups of ``width`` qmark parameters."""
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)

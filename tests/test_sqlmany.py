"""Cutting rows into many-row SQLite statements (egresswatch/store/sqlmany.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError, OperationalError

from egresswatch.store.rows import SQLITE_NULL
from egresswatch.store.sqlmany import MOST_ROWS, ManyRows, chunk_sizes, values_sql


@pytest.mark.parametrize("n", [0, 1, 2, 37, 127, 128, 129, 300, 1000, 4097])
def test_chunk_sizes_cover_every_row_with_few_statement_shapes(n: int) -> None:
    sizes = chunk_sizes(n, 128)
    assert sum(sizes) == n
    assert all(0 < s <= 128 for s in sizes)
    # full chunks, then distinct powers of two: at most 8 shapes of statement
    rest = [s for s in sizes if s != 128]
    assert len(rest) == len(set(rest)) and all(s & (s - 1) == 0 for s in rest)


def test_many_rows_inserts_every_row_in_order(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
        many = ManyRows(lambda k: f"INSERT INTO t (a, b) VALUES {values_sql(2, k)}", 2, 999)
        assert many.most == min(MOST_ROWS, 999 // 2)
        rows = [(f"r{i}", i) for i in range(300)]
        many.run(conn, rows)
        got = conn.exec_driver_sql("SELECT a, b FROM t ORDER BY id").fetchall()
    assert [tuple(r) for r in got] == rows
    assert len(many._sql) == len(set(chunk_sizes(300, many.most)))  # one text per shape


def test_many_rows_respects_the_parameter_limit() -> None:
    # 45 columns under the old 999-parameter limit: 22 rows per statement
    assert ManyRows(lambda k: "", 45, 999).most == 22
    con = sqlite3.connect(":memory:")
    assert con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) >= 999


def test_run_flat_inserts_rows_given_end_to_end(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
        many = ManyRows(lambda k: f"INSERT INTO t (a, b) VALUES {values_sql(2, k)}", 2, 999)
        rows = [(f"r{i}", i) for i in range(300)]
        many.run_flat(conn, [v for r in rows for v in r])
        with pytest.raises(ValueError, match="rows of 2"):
            many.run_flat(conn, ["odd", 1, "out"])
    with engine.connect() as conn:
        got = conn.exec_driver_sql("SELECT a, b FROM t ORDER BY id").fetchall()
    assert [tuple(r) for r in got] == rows


def test_run_flat_raises_sqlalchemy_errors_the_writer_can_tell_apart(tmp_path: Path) -> None:
    # the writer spills on OperationalError (unreachable) and retries row by row on
    # IntegrityError (a bad row): the driver's errors must arrive as SQLAlchemy's
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (a TEXT NOT NULL)")
    many = ManyRows(lambda k: f"INSERT INTO t (a) VALUES {values_sql(1, k)}", 1, 999)
    missing = ManyRows(lambda k: f"INSERT INTO nowhere (a) VALUES {values_sql(1, k)}", 1, 999)
    with engine.begin() as conn, pytest.raises(IntegrityError):
        many.run_flat(conn, ["ok", None])
    with engine.begin() as conn, pytest.raises(OperationalError):
        missing.run_flat(conn, ["x"])


def test_sqlite_stores_a_bound_nan_as_null() -> None:
    # what the writer's SQLITE_NULL relies on: SQLite has no NaN and binds one as NULL
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (a TEXT, b REAL)")
    con.execute("INSERT INTO t VALUES (?, ?)", (SQLITE_NULL, SQLITE_NULL))
    assert con.execute("SELECT typeof(a), typeof(b), a IS NULL FROM t").fetchall() == [
        ("null", "null", 1)
    ]

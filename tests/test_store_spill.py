"""The spill journal and the privacy rules of the row mapping, without a database."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from helpers.storedata import make_decision
from hypothesis import given
from hypothesis import strategies as st

from egresswatch.store.rows import (
    FINDING_COLUMNS,
    FLOW_COLUMNS,
    REDACTED,
    SQLITE_NULL,
    finding_rows,
    finding_values,
    flow_row,
    flow_values,
    redact_path,
)
from egresswatch.store.schema import FINDINGS, FLOWS
from egresswatch.store.spill import SpillJournal


def recs(start: int, n: int) -> list[dict[str, object]]:
    return [{"k": "d", "n": i} for i in range(start, start + n)]


def test_append_read_commit_in_order(tmp_path: Path) -> None:
    j = SpillJournal(tmp_path / "j.jsonl")
    assert j.pending == 0 and j.size_bytes == 0
    j.append(recs(0, 5))
    j.append(recs(5, 5))
    assert stat.S_IMODE((tmp_path / "j.jsonl").stat().st_mode) == 0o600
    assert j.pending == 10 and j.size_bytes > 0
    got, offset, lines = j.read(4)
    assert [r["n"] for r in got] == [0, 1, 2, 3] and lines == 4
    j.commit(offset, lines)
    assert j.pending == 6
    # a new process (crash and restart) resumes after the committed offset
    again = SpillJournal(tmp_path / "j.jsonl")
    assert again.pending == 6
    got, offset, lines = again.read(100)
    assert [r["n"] for r in got] == [4, 5, 6, 7, 8, 9]
    again.commit(offset, lines)
    assert again.pending == 0
    assert not (tmp_path / "j.jsonl").exists() and not (tmp_path / "j.jsonl.pos").exists()


def test_torn_tail_is_cut_and_appends_stay_on_their_own_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    j = SpillJournal(path)
    j.append(recs(0, 2))
    with open(path, "ab") as f:
        f.write(b'{"k": "d", "n": 99')  # the process died in the middle of an append
    j2 = SpillJournal(path)
    assert j2.pending == 2
    j2.append(recs(2, 1))
    got, _, lines = j2.read(10)
    assert [r["n"] for r in got] == [0, 1, 2] and lines == 3


def test_corrupted_line_is_skipped_not_wedged(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"n": 0}\nnot json\n{"n": 2}\n')
    j = SpillJournal(path)
    got, offset, lines = j.read(10)
    assert [r["n"] for r in got] == [0, 2] and lines == 3
    j.commit(offset, lines)
    assert j.pending == 0


def test_stale_offset_without_journal_is_removed(tmp_path: Path) -> None:
    (tmp_path / "j.jsonl.pos").write_text("1234")
    j = SpillJournal(tmp_path / "j.jsonl")
    assert j.pending == 0 and j.offset == 0
    assert not (tmp_path / "j.jsonl.pos").exists()


def test_journal_holds_no_secret_values(tmp_path: Path) -> None:
    d = make_decision(1, findings=1, path="/v1/x?token=sk-live-SECRET123&user=alice@example.com")
    j = SpillJournal(tmp_path / "j.jsonl")
    j.append([{"k": "d", "flow": flow_row(d), "f": []}])
    text = (tmp_path / "j.jsonl").read_text()
    assert "SECRET123" not in text and "alice@example.com" not in text
    assert json.loads(text)["flow"]["path"] == f"/v1/x?token={REDACTED}&user={REDACTED}"


def test_flow_columns_follow_the_table() -> None:
    assert tuple(c.name for c in FLOWS.columns if c.name != "id") == FLOW_COLUMNS


def test_finding_columns_follow_the_table_and_the_rows() -> None:
    assert tuple(c.name for c in FINDINGS.columns if c.name != "id") == FINDING_COLUMNS
    d = make_decision(1, findings=2)
    rows = finding_rows(d)
    assert len(rows) == 2 and all(tuple(r) == FINDING_COLUMNS for r in rows)
    assert finding_values(d) == tuple(tuple(r.values()) for r in rows)


def test_long_network_strings_are_clipped_to_column_size() -> None:
    d = make_decision(1, path="/" + "a" * 5000)
    values = dict(zip(FLOW_COLUMNS, flow_values(d), strict=True))
    assert len(values["path"]) == 2048 and values["path"].endswith("…")


def test_absent_stands_for_every_missing_value_and_only_for_those() -> None:
    # the SQLite writer's rows: NaN where None would be, everything else the same
    d = make_decision(1, path="/" + "a" * 5000)
    plain = flow_values(d)
    sqlite = flow_values(d, absent=SQLITE_NULL)
    assert len(plain) == len(sqlite) == len(FLOW_COLUMNS)
    missing = [c for c, v in zip(FLOW_COLUMNS, plain, strict=True) if v is None]
    assert {"node", "duration", "status", "closed_ts"} <= set(missing)
    for col, a, b in zip(FLOW_COLUMNS, plain, sqlite, strict=True):
        assert (b is SQLITE_NULL) if a is None else (a == b), col
    assert dict(zip(FLOW_COLUMNS, sqlite, strict=True))["path"].endswith("…")  # clipped too


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=8)
secret_values = st.text(alphabet="0123456789", min_size=1, max_size=12)


@given(
    base=st.text(alphabet="/abcdefghijklmnopqrstuvwxyz", max_size=20),
    pairs=st.lists(st.tuples(keys, secret_values), max_size=6),
)
def test_redact_path_keeps_keys_drops_every_value(base: str, pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={v}" for k, v in pairs)
    out = redact_path(f"{base}?{query}" if pairs else base)
    assert out is not None
    assert not any(ch.isdigit() for ch in out)  # no value survives
    for k, _ in pairs:
        assert f"{k}={REDACTED}" in out  # every key does


@given(st.text(max_size=200))
def test_redact_path_never_raises_and_leaves_only_keys(path: str) -> None:
    out = redact_path(path)
    assert out is not None and "#" not in out.split("?", 1)[-1]
    if "?" in out:
        for item in out.split("?", 1)[1].split("&"):
            # every item is a bare marker or key=marker; no value text survives
            assert item == REDACTED or item.endswith("=" + REDACTED)

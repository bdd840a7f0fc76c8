"""CPU cost per decision of the store writer, with the close every proxied flow gets.

``bench/store.py`` times inserts only; in the proxy each decision is followed by
a :class:`~egresswatch.model.FlowClosed`, so the writer also runs the close path.
This script measures process CPU time (``time.process_time``: all threads, not
wall clock, so a loaded machine disturbs it little) for N decisions + N closes
through ``StoreWriter`` into SQLite, next to raw ``sqlite3`` doing the same
inserts and updates by ``decision_id``, and prints both side by side.

    .venv/bin/python bench/store_cpu.py                 # 20k decisions, 3 rounds
    .venv/bin/python bench/store_cpu.py --decisions 50000 --rounds 5
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import random  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.storedata import make_decision  # noqa: E402

from egresswatch.model import Decision, FlowClosed  # noqa: E402
from egresswatch.store import count_flows, open_store  # noqa: E402
from egresswatch.store.rows import FLOW_COLUMNS, finding_rows, flow_values  # noqa: E402


def workload(n: int) -> tuple[list[Decision], list[FlowClosed]]:
    rng = random.Random(1)
    now = time.time()
    ds = [
        make_decision(i, now=now, rng=rng, decision_id=uuid.uuid4().hex, flow_id=uuid.uuid4().hex)
        for i in range(n)
    ]
    closes = [
        FlowClosed(
            flow_id=d.observation.flow_id or "",
            sensor=d.observation.sensor,
            time=d.observation.time + 0.2,
            bytes_out=1000 + i,
            bytes_in=5000 + i,
            duration=0.2,
            status="200",
        )
        for i, d in enumerate(ds)
    ]
    return ds, closes


def writer_cpu(work: Path, ds: list[Decision], closes: list[FlowClosed], batch: int) -> float:
    """CPU seconds for record + flow_closed of every decision, until close() committed."""
    db = work / f"w{uuid.uuid4().hex[:6]}.db"
    store = open_store(f"sqlite:///{db}")
    w = store.writer(
        batch_size=batch, flush_interval=0.5, queue_size=2 * len(ds) + 10, spill_path=work / "sp"
    )
    c0 = time.process_time()
    for d, c in zip(ds, closes, strict=True):
        w.record(d)
        w.flow_closed(c)
    w.close(timeout=600)
    cpu = time.process_time() - c0
    st = w.stats
    assert st.written == len(ds) and st.dropped == 0 and st.closes_pending == 0, st
    assert count_flows(store) == len(ds)
    store.close()
    db.unlink()
    return cpu


def raw_cpu(work: Path, ds: list[Decision], closes: list[FlowClosed], batch: int) -> float:
    """The same rows mapped beforehand, inserted and updated with bare sqlite3."""
    db = work / f"r{uuid.uuid4().hex[:6]}.db"
    open_store(str(db)).close()
    flows = [tuple(flow_values(d, "bench")) for d in ds]
    finds = [(d.id, [tuple(f.values()) for f in finding_rows(d)]) for d in ds]
    fcols = list(finding_rows(make_decision(0, findings=1))[0])
    ups = [
        (c.bytes_out, c.bytes_in, c.duration, c.status, c.time, d.id)
        for d, c in zip(ds, closes, strict=True)
    ]
    con = sqlite3.connect(db)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):
        con.execute(f"PRAGMA {pragma}")
    q_flows = (
        f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES "
        f"({', '.join('?' for _ in FLOW_COLUMNS)}) ON CONFLICT (decision_id) DO NOTHING"
    )
    q_finds = (
        f"INSERT INTO findings ({', '.join(repr(c) if c == 'where' else c for c in fcols)})"
        f" VALUES ({', '.join('?' for _ in fcols)}) ON CONFLICT DO NOTHING"
    )
    q_up = (
        "UPDATE flows SET bytes_out = ?, bytes_in = ?, duration = ?, status = ?, closed_ts = ?"
        " WHERE decision_id = ?"
    )
    c0 = time.process_time()
    for i in range(0, len(flows), batch):
        con.executemany(q_flows, flows[i : i + batch])
        fs = [f for _, rows in finds[i : i + batch] for f in rows]
        if fs:
            con.executemany(q_finds, fs)
        con.executemany(q_up, ups[i : i + batch])
        con.commit()
    cpu = time.process_time() - c0
    con.close()
    db.unlink()
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.decisions
    ds, closes = workload(n)
    with tempfile.TemporaryDirectory(prefix="egw-storecpu-") as tmp:
        work = Path(tmp)
        w_best = min(writer_cpu(work, ds, closes, args.batch) for _ in range(args.rounds))
        r_best = min(raw_cpu(work, ds, closes, args.batch) for _ in range(args.rounds))
    print(f"{n:,} decisions + {n:,} closes, batch {args.batch}, best of {args.rounds} (CPU time)")
    print(f"{'path':<48} {'CPU s':>7} {'us/decision':>12} {'decisions/CPU-s':>16}")
    for name, cpu in (
        ("StoreWriter -> SQLite (map, insert, close)", w_best),
        ("raw sqlite3, same rows (insert, update)", r_best),
    ):
        print(f"{name:<48} {cpu:7.2f} {cpu / n * 1e6:12.1f} {n / cpu:16,.0f}")
    print(f"writer / raw CPU: {w_best / r_best:.2f}x")


if __name__ == "__main__":
    main()

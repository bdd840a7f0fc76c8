"""Store benchmark: write rate through the writer vs raw executemany; query time vs size.

Part 1 writes the same decisions four ways in one run and prints the rates side
by side: through the writer as sensors run it (a child process, store/remote.py)
and through the in-process ``StoreWriter`` thread (``store.process = false``) to
SQLite, raw ``sqlite3.executemany`` of the same rows into the same schema (the
floor SQLite itself sets, in one thread), and through the writer to a PostgreSQL
server started from the Debian package (or ``--pg-url``). Goal: >= 50,000
decisions/s to SQLite. Decision ids and times
are the ones sensors produce (a per-process prefix and a counter, in time order);
``--ids random`` shows the worst case, uuid4 ids at random times. The SQLite write
rates are the median of ``--rounds`` (3) rounds, the three alternating; the
prebuilt decisions are frozen out of the garbage collector first (see part1).

Part 2 grows one SQLite database to each ``--sizes`` (flows spread over 30
days, so "the last 24 h" holds 1/30 of them) and times what ``egresswatch
report --since 24h`` asks of the store and a filtered ``egresswatch flows``,
in-process and through the real CLI. Goal: < 2 s at 10 million flows.

    .venv/bin/python bench/store.py                       # 50k decisions; 100k and 1M flows
    .venv/bin/python bench/store.py --sizes 100000,1000000,10000000
    .venv/bin/python bench/store.py --decisions 20000 --sizes 100000 --no-pg   # quick
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and bench/ holds other scripts
# whose names shadow the standard library (bench/inspect.py): drop it before importing more.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.pg import PgServer, why_no_postgres  # noqa: E402
from helpers.storedata import make_decision  # noqa: E402

from egresswatch.model import new_id  # noqa: E402
from egresswatch.report import build_report  # noqa: E402
from egresswatch.store import (  # noqa: E402
    FlowFilter,
    Store,
    count_flows,
    open_store,
    query_flows,
)
from egresswatch.store.rows import FLOW_COLUMNS, finding_rows, flow_values  # noqa: E402

DAY = 86_400.0


def decisions(n: int, now: float, ids: str = "sensor") -> list:  # type: ignore[type-arg]
    """n decisions over the last minute.

    ``ids="sensor"``: ids as sensors make them (``model.new_id``: a per-process
    prefix and a counter) and times in order, as decisions reach the writer.
    ``ids="random"``: uuid4 ids and times shuffled over the last hour, the worst
    case for the indexes (every insert lands on a random page).
    """
    rng = random.Random(1)
    if ids == "random":
        return [
            make_decision(
                i, now=now, rng=rng, decision_id=uuid.uuid4().hex, flow_id=uuid.uuid4().hex
            )
            for i in range(n)
        ]
    return [
        make_decision(
            i,
            now=now,
            rng=rng,
            decision_id=new_id(),
            flow_id=new_id(),
            ts=now - 60 + 60 * i / n,
        )
        for i in range(n)
    ]


def through_writer(url: str, ds: list, batch: int, spill: Path, process: bool = True) -> float:  # type: ignore[type-arg]
    """Seconds from the first record() to the end of close() (everything committed).

    The writer (and with ``process``, its child process) is started before the clock.
    """
    store = open_store(url)
    w = store.writer(
        batch_size=batch,
        flush_interval=0.5,
        queue_size=len(ds) + 10,
        spill_path=spill,
        process=process,
    )
    t0 = time.perf_counter()
    for d in ds:
        w.record(d)
    w.close(timeout=600)
    elapsed = time.perf_counter() - t0
    stats = w.stats
    assert stats.written == len(ds) and stats.dropped == 0, stats
    assert count_flows(store) == len(ds)
    store.close()
    return elapsed


def raw_executemany(path: Path, ds: list, batch: int) -> float:  # type: ignore[type-arg]
    """The same rows (mapped beforehand) into the same schema with sqlite3.executemany."""
    open_store(str(path)).close()  # schema by the migrations, like the writer's
    flows = [tuple(flow_values(d, "bench")) for d in ds]
    finds = [tuple(f.values()) for d in ds for f in finding_rows(d)]
    fcols = list(finding_rows(ds[0])[0]) if finds else []
    con = sqlite3.connect(path)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "cache_size=-65536",
        "wal_autocheckpoint=10000",
    ):
        con.execute(f"PRAGMA {pragma}")
    q_flows = (
        f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES "
        f"({', '.join('?' for _ in FLOW_COLUMNS)}) ON CONFLICT (decision_id) DO NOTHING"
    )
    q_finds = (
        f"INSERT INTO findings ({', '.join(repr(c) if c == 'where' else c for c in fcols)})"
        f" VALUES ({', '.join('?' for _ in fcols)}) ON CONFLICT DO NOTHING"
    )
    by_decision: dict[str, list[tuple]] = {}  # type: ignore[type-arg]
    for f in finds:
        by_decision.setdefault(f[0], []).append(f)
    t0 = time.perf_counter()
    for i in range(0, len(flows), batch):
        chunk = flows[i : i + batch]
        con.executemany(q_flows, chunk)
        fs = [f for row in chunk for f in by_decision.get(row[0], ())]
        if fs:
            con.executemany(q_finds, fs)
        con.commit()
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def part1(args: argparse.Namespace, work: Path) -> None:
    now = time.time()
    ds = decisions(args.decisions, now, args.ids)
    n = len(ds)
    # The 50,000 prebuilt decisions (about a million objects) are the benchmark's, not
    # the writer's: a sensor hands each decision over and lets it go. Left in the
    # collector's generations they made every full collection during the timed run
    # scan them, ~25% of the writer's rate. Frozen, the collector skips them; what the
    # writer itself allocates is still collected as usual.
    gc.collect()
    gc.freeze()
    print(
        f"\n== write rate: {n:,} decisions, batch {args.batch}, {args.ids} ids, "
        f"median of {args.rounds} rounds =="
    )
    writer_runs: list[float] = []
    thread_runs: list[float] = []
    raw_runs: list[float] = []
    for r in range(args.rounds):  # alternating, so all three see the same load
        writer_runs.append(
            through_writer(f"sqlite:///{work / f'w{r}.db'}", ds, args.batch, work / f"w{r}.spill")
        )
        thread_runs.append(
            through_writer(
                f"sqlite:///{work / f't{r}.db'}", ds, args.batch, work / f"t{r}.spill", False
            )
        )
        raw_runs.append(raw_executemany(work / f"raw{r}.db", ds, args.batch))
        for path in work.glob(f"*{r}.db*"):
            path.unlink()  # a round's databases: up to ~100 MB each
        print(
            f"  round {r + 1}: writer process {n / writer_runs[-1]:,.0f}/s, "
            f"thread {n / thread_runs[-1]:,.0f}/s, raw {n / raw_runs[-1]:,.0f}/s"
        )
    results: list[tuple[str, float]] = []
    t_writer = statistics.median(writer_runs)
    results.append(("writer process -> SQLite (the default)", t_writer))
    results.append(
        ("StoreWriter thread -> SQLite (store.process = false)", statistics.median(thread_runs))
    )
    t_raw = statistics.median(raw_runs)
    results.append(("raw sqlite3.executemany, same rows (insert + commit)", t_raw))
    pg: PgServer | None = None
    try:
        url = args.pg_url
        if url is None and not args.no_pg:
            reason = why_no_postgres()
            if reason:
                print(f"(PostgreSQL skipped: {reason})")
            else:
                pg = PgServer(prefix="egw-bench-")  # fsync on: a durable server
                pg.start()
                url = pg.createdb("bench")
        if url:
            t_pg = through_writer(url, ds, args.batch, work / "pg.spill")
            results.append(("writer process -> PostgreSQL 15 (loopback, fsync on)", t_pg))
    finally:
        if pg is not None:
            pg.cleanup()
    print(f"{'path':<55} {'seconds':>8} {'decisions/s':>12} {'vs raw':>7}")
    for name, secs in results:
        print(f"{name:<55} {secs:8.2f} {n / secs:12,.0f} {t_raw / secs:7.2f}")
    print(
        f"goal: >= 50,000 decisions/s to SQLite through the writer -> "
        f"{'met' if n / t_writer >= 50_000 else 'NOT met'} ({n / t_writer:,.0f}/s)"
    )


def build(path: Path, size: int, now: float) -> None:
    """A database of ``size`` flows over the last 30 days, inserted in time order.

    Time order is how a store fills in real life (ids grow with time, so a time
    range is a contiguous part of the table). Each row copies one of ~1000
    decisions whose country, service, verdict and client are drawn independently;
    1 flow in 7 has a finding.
    """
    open_store(str(path)).close()  # the schema by the migrations
    rng = random.Random(2)
    countries = ["US", "CN", "FR", "DE", "SG", None]
    templates = [
        flow_values(
            make_decision(
                t,
                now=now,
                country=rng.choice(countries),
                service=rng.randrange(4),
                verdict=rng.randrange(4),
                client=f"192.0.2.{rng.randrange(1, 61)}",
            ),
            "bench",
        )
        for t in range(997)
    ]
    con = sqlite3.connect(path)
    for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-262144"):
        con.execute(f"PRAGMA {pragma}")
    q = (
        f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES "
        f"({', '.join('?' for _ in FLOW_COLUMNS)})"
    )
    qf = (
        'INSERT INTO findings (decision_id, seq, ts, sensor, kind, redacted, "where", '
        "service_id, country) VALUES (?, 0, ?, 'proxy', ?, 'j***@example.com', 'body', ?, ?)"
    )
    kinds = ("email", "api-key", "phone", "payment-card")
    start = now - 30 * DAY
    step = 30 * DAY / size
    chunk = 100_000
    for i in range(0, size, chunk):
        rows = []
        finds = []
        for j in range(i, min(i + chunk, size)):
            t = templates[(j * 7919) % len(templates)]
            ts = start + j * step + rng.random() * step
            key = f"{j:032x}"
            rows.append((key, key, ts, *t[3:]))
            if j % 7 == 0:
                finds.append((key, ts, kinds[j % 4], t[26], t[21]))
        con.executemany(q, rows)
        con.executemany(qf, finds)
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """(first run, best of the rest) in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = first
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return first, best


def cli(*args: str) -> float:
    exe = Path(sys.executable).parent / "egresswatch"
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"   ({' '.join(args[:2])} failed: {proc.stderr.strip()[:200]})")
        return float("nan")
    return elapsed


def part2(args: argparse.Namespace, work: Path) -> None:
    sizes = sorted(int(x) for x in args.sizes.split(",") if x)
    if not sizes:
        return
    have_report_cmd = importlib.util.find_spec("egresswatch.commands.report") is not None
    print("\n== query time vs size (SQLite; flows over 30 days, inserted in time order) ==")
    print("report : report.build_report for the last 24 h (what `egresswatch report --since 24h`")
    print("         runs: its sections as queries side by side)")
    print("flows  : --since 24h --country CN --verdict block --limit 50")
    print("flows* : --country CN --type chat-prompt --limit 50 (no --since)")
    print("times in s: first run / best of 3 (page cache warm: the database was just built);")
    print("CLI columns are whole processes (python start-up + imports included)")
    print(
        f"{'flows':>11} {'build':>6} {'in 24h':>8} {'report':>13} {'flows':>13} "
        f"{'flows*':>7} {'CLI flows':>9} {'CLI report':>10} {'size MB':>8}"
    )
    for size in sizes:
        path = work / f"q-{size}.db"
        now = time.time()
        t0 = time.perf_counter()
        build(path, size, now)
        built = time.perf_counter() - t0
        store = open_store(str(path))
        since = FlowFilter(since=now - DAY)
        in_day = count_flows(store, since)

        def report(store: Store = store, now: float = now) -> None:
            build_report(store, now - DAY, now)  # what `egresswatch report --since 24h` runs

        flt = FlowFilter(since=now - DAY, countries=("CN",), verdicts=("block",))
        wide = FlowFilter(countries=("CN",), payload_types=("chat-prompt",))
        r1, rb = timed(report)
        f1, fb = timed(lambda store=store, flt=flt: query_flows(store, flt, 50))
        _, wb = timed(lambda store=store, wide=wide: query_flows(store, wide, 50))
        assert query_flows(store, flt, 50) and query_flows(store, wide, 50)
        store.close()
        c_flows = cli(
            "flows",
            "--db",
            str(path),
            "--since",
            "24h",
            "--country",
            "CN",
            "--verdict",
            "block",
            "--limit",
            "50",
            "--format",
            "json",
        )
        c_report = (
            cli("report", "--db", str(path), "--since", "24h", "--format", "json")
            if have_report_cmd
            else float("nan")
        )
        mb = sum(p.stat().st_size for p in work.glob(f"q-{size}.db*")) / 1e6
        print(
            f"{size:>11,} {built:6.0f} {in_day:>8,} {r1:6.3f}/{rb:6.3f} {f1:6.3f}/{fb:6.3f} "
            f"{wb:7.3f} {c_flows:9.2f} {c_report:10.2f} {mb:8,.0f}"
        )
        if not args.workdir:
            for p in work.glob(f"q-{size}.db*"):
                p.unlink()
    print("goal: < 2 s at 10 million flows on SQLite (report and filtered flows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=50_000, help="decisions for the write test")
    ap.add_argument("--batch", type=int, default=1000, help="writer batch size")
    ap.add_argument(
        "--rounds", type=int, default=3, help="write-rate rounds; the median is reported"
    )
    ap.add_argument(
        "--ids",
        choices=("sensor", "random"),
        default="sensor",
        help="decision ids as sensors make them, in time order (default), or random uuids "
        "at random times (the indexes' worst case)",
    )
    ap.add_argument(
        "--sizes",
        default="100000,1000000",
        help="comma-separated database sizes for the query test ('' to skip)",
    )
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    ap.add_argument("--pg-url", help="use this PostgreSQL instead of starting one")
    ap.add_argument("--workdir", help="where the databases go (default: a temp dir, removed)")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="egw-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, work dir {work}"
    )
    try:
        if args.decisions > 0:
            part1(args, work)
        part2(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

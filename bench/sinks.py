"""What the metrics and alert sinks cost a sensor per decision, side by side.

    .venv/bin/python bench/sinks.py [--decisions 100000]

A sensor hands every decision to its sinks on its own thread (the proxy's event
loop), so their ``record`` must be cheap. Prints decisions per second and
microseconds per decision for: a do-nothing sink (the loop and call), Metrics,
AlertSink with allow verdicts (its fast path) and with block verdicts
(deduplicated, one client and service: queue put only), and Metrics plus
AlertSink behind FanOut; each with its ratio to the baseline. Then how long
``build_report`` takes on a fresh SQLite store of the same decisions. Alerts go
to a log stream in memory; nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from egresswatch.alerts import AlertSink, LogChannel
from egresswatch.metrics import Metrics
from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    FlowClosed,
    GeoAnswer,
    GeoSource,
    MatchKind,
    Mode,
    Observation,
    PayloadType,
    Protocol,
    Sensor,
    Service,
    ServiceMatch,
    Transport,
    Verdict,
)
from egresswatch.ports import FanOut, Sink

SERVICES = [
    Service("openai", "OpenAI API", "OpenAI", "US", "chat-api", ("api.openai.com",)),
    Service("deepseek", "DeepSeek API", "DeepSeek", "CN", "chat-api", ("api.deepseek.com",)),
    Service("mistral", "Mistral AI", "Mistral AI SAS", "FR", "chat-api", ("api.mistral.ai",)),
]
COUNTRIES = ["US", "CN", "FR", "DE", None]


def make(n: int, action: Action, now: float) -> list[Decision]:
    out = []
    for i in range(n):
        svc = SERVICES[i % len(SERVICES)]
        obs = Observation(
            sensor=Sensor.PROXY,
            transport=Transport.TCP,
            protocol=Protocol.HTTPS,
            dst_addr=f"203.0.113.{i % 250 + 1}",
            dst_port=443,
            time=now - (i % 86_000),
            flow_id=uuid.uuid4().hex,
            client_addr="192.0.2.7",
            http_host=svc.domains[0],
            path="/v1/chat/completions",
        )
        a = Assessment(
            obs,
            svc.domains[0],
            GeoAnswer(COUNTRIES[i % len(COUNTRIES)], GeoSource.MAXMIND),
            ServiceMatch(svc, MatchKind.OFFICIAL, svc.domains[0], svc.domains[0]),
            (PayloadType.CHAT_PROMPT,),
            (),
        )
        out.append(Decision(a, Verdict(action, "r", "reason", Mode.ENFORCE), elapsed=0.0002))
    return out


class Nothing:
    def record(self, decision: Decision) -> None:
        pass

    def flow_closed(self, event: FlowClosed) -> None:
        pass

    def close(self) -> None:
        pass


def timed(sink: Sink, decisions: list[Decision]) -> tuple[float, float]:
    """(wall seconds of the record() loop, CPU seconds of the process incl. sink threads)."""
    record = sink.record
    cpu = time.process_time()
    start = time.perf_counter()
    for d in decisions:
        record(d)
    elapsed = time.perf_counter() - start
    sink.close()  # the dispatcher's work on these decisions counts as CPU too
    return elapsed, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    args = parser.parse_args()
    n = args.decisions
    now = time.time()
    allow = make(n, Action.ALLOW, now)
    block = make(n, Action.BLOCK, now)
    ids = [s.id for s in SERVICES]

    def metrics() -> Metrics:
        return Metrics(CollectorRegistry(), sensor_name="bench", known_services=ids)

    def alerts() -> AlertSink:
        # queue as large as the run: this measures record(), not drops
        return AlertSink([LogChannel(io.StringIO())], window=60, queue_size=n + 1)

    cases: list[tuple[str, Callable[[], Sink], list[Decision]]] = [
        ("baseline (no-op sink)", Nothing, allow),
        ("Metrics", metrics, allow),
        ("AlertSink, allow verdicts", alerts, allow),
        ("AlertSink, block verdicts", alerts, block),
        ("FanOut(Metrics, AlertSink), block", lambda: FanOut([metrics(), alerts()]), block),
    ]
    base = None
    print(f"{n:,} decisions per case, one thread")
    print("(CPU µs is process time: meaningful on a busy machine, where wall time is not)")
    head = f"{'case':38} {'decisions/s':>14} {'µs/decision':>12} {'CPU µs':>8} {'× baseline':>11}"
    print(head)
    for name, factory, ds in cases:
        elapsed, cpu = timed(factory(), ds)
        per = elapsed / n * 1e6
        if base is None:
            base = per
        cpu_per = cpu / n * 1e6
        print(f"{name:38} {n / elapsed:>14,.0f} {per:>12.2f} {cpu_per:>8.2f} {per / base:>11.1f}")

    from egresswatch.report import build_report, render_html
    from egresswatch.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "bench.db"))
        writer = store.writer(spill_path=Path(tmp) / "spill.jsonl")
        for d in allow:
            writer.record(d)
        writer.close()
        start = time.perf_counter()
        report = build_report(store, now - 86400, now)
        built = time.perf_counter() - start
        start = time.perf_counter()
        page = render_html(report)
        rendered = time.perf_counter() - start
        store.close()
    print(
        f"build_report over {report.totals.flows:,} flows (SQLite): {built:.3f} s;"
        f" render_html: {rendered * 1000:.1f} ms ({len(page) / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()

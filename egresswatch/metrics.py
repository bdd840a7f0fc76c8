"""Prometheus metrics: a sink that counts decisions with bounded labels.

Everything is registered on an injected :class:`~prometheus_client.CollectorRegistry`
(never the global one at import time), so tests and several sensors in one
process do not collide. Names follow the Prometheus conventions
(https://prometheus.io/docs/practices/naming/): the ``egresswatch_`` prefix,
base units (seconds, bytes) and ``_total`` on counters.

Labels come from bounded sets only (STYLE.md):

* ``sensor``   the configured sensor name (one per process)
* ``source``   which part saw the flow: proxy | sniffer | explain | verify
* ``service``  a catalogued service id, or ``other`` (also for lookalikes)
* ``country``  ISO 3166 alpha-2 of the destination address, or ``ZZ`` for unknown
* ``payload_type``, ``kind`` (finding), ``verdict`` (allow | alert | block | would-block)

Addresses, host names, paths and user agents never become labels: they belong
in the database, and as labels they would make the series count unbounded.

Store and GeoIP gauges are read at scrape time from callables handed to
:meth:`Metrics.watch_store` and :meth:`Metrics.watch_geoip`, so the metrics
never go stale and the store does not need to know about Prometheus.
"""

from __future__ import annotations

import bisect
import platform
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from egresswatch import __version__
from egresswatch.errors import EgressWatchError
from egresswatch.model import UNKNOWN_COUNTRY, Action, Decision, FlowClosed, MatchKind

#: Default /metrics listener. 9721 is not in the Prometheus default port
#: allocations list (github.com/prometheus/prometheus/wiki/Default-port-allocations).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9721

#: Label value for a service that is not (officially) in the catalog.
OTHER_SERVICE = "other"

#: Inspector latency is microseconds to a few milliseconds; the tail up to 1 s
#: shows a stuck classifier. Prometheus' default buckets start at 5 ms, too coarse.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

#: How many open flows we remember to attribute their final byte counts. A flow
#: whose decision was forgotten is counted as service=other, country=ZZ.
FLOW_TABLE_SIZE = 100_000

_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")

FLOW_LABELS = ("sensor", "source", "service", "country")


class MetricsError(EgressWatchError):
    """The metrics listener cannot start (port in use, address not local ...)."""

    exit_code = 4


def country_label(country: str | None) -> str:
    """An ISO 3166 alpha-2 code in upper case, or ``ZZ`` for anything else."""
    if country:
        code = country.strip().upper()
        if _COUNTRY_RE.match(code):
            return code
    return UNKNOWN_COUNTRY


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What the store reports about itself; any object with these attributes will do."""

    queue_length: int = 0
    queue_capacity: int = 0
    dropped: int = 0
    spill_bytes: int = 0
    spill_records: int = 0
    spilling: bool = False
    write_errors: int = 0
    lost: int = 0


@dataclass(frozen=True, slots=True)
class GeoDatabase:
    """One loaded GeoIP database: its type (e.g. ``GeoLite2-Country``) and build time."""

    name: str
    build_epoch: float


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


class _StoreCollector(Collector):
    """Reads the store's statistics at scrape time."""

    def __init__(self, sensor: str, stats: Callable[[], Any]) -> None:
        self._sensor = sensor
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        # Describing without calling the store keeps registration side-effect free.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self._stats()
        except Exception:  # a scrape must never fail because the store is busy or gone
            stats = None
        return list(self._families(stats))

    def _families(self, stats: Any = None) -> Iterator[Metric]:
        specs: list[tuple[str, str, str, bool]] = [
            (
                "queue_length",
                "egresswatch_store_queue_length",
                "Decisions waiting in the store's write queue.",
                False,
            ),
            (
                "queue_capacity",
                "egresswatch_store_queue_capacity",
                "Size of the store's write queue.",
                False,
            ),
            (
                "dropped",
                "egresswatch_store_dropped",
                "Decisions dropped because the store's queue was full.",
                True,
            ),
            (
                "spill_bytes",
                "egresswatch_store_spill_bytes",
                "Size of the local spill journal waiting to be replayed.",
                False,
            ),
            (
                "spill_records",
                "egresswatch_store_spill_records",
                "Decisions in the local spill journal waiting to be replayed.",
                False,
            ),
            (
                "spilling",
                "egresswatch_store_spilling",
                "1 while the database cannot be written and decisions go to the spill journal.",
                False,
            ),
            (
                "write_errors",
                "egresswatch_store_write_errors",
                "Failed database writes (unreachable server, full disk ...).",
                True,
            ),
            (
                "lost",
                "egresswatch_store_lost",
                "Decisions neither the database nor the spill journal could take (full disk).",
                True,
            ),
        ]
        for attr, name, doc, counter in specs:
            family: CounterMetricFamily | GaugeMetricFamily
            if counter:
                family = CounterMetricFamily(name, doc, labels=["sensor"])
            else:
                family = GaugeMetricFamily(name, doc, labels=["sensor"])
            value = _get(stats, attr) if stats is not None else None
            if value is not None:
                family.add_metric([self._sensor], float(value))
            yield family


class _CaptureCollector(Collector):
    """Reads the sniffer's own counters (``SnifferStats``) at scrape time."""

    #: (attribute, metric name, help)
    SPECS = (
        ("packets", "egresswatch_capture_packets", "Packets the sniffer read."),
        (
            "kernel_drops",
            "egresswatch_capture_dropped_packets",
            "Packets the kernel dropped before the sniffer read them (PACKET_STATISTICS).",
        ),
        ("evictions", "egresswatch_capture_flow_evictions", "Flows evicted from a full table."),
        ("inspector_errors", "egresswatch_capture_inspector_errors", "Flows not judged: errors."),
    )

    def __init__(self, sensor: str, stats: Callable[[], Any]) -> None:
        self._sensor = sensor
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self._stats()
        except Exception:  # a scrape must never fail because the sniffer restarts
            stats = None
        return list(self._families(stats))

    def _families(self, stats: Any = None) -> Iterator[Metric]:
        for attr, name, doc in self.SPECS:
            family = CounterMetricFamily(name, doc, labels=["sensor"])
            value = _get(stats, attr) if stats is not None else None
            if value is not None:
                family.add_metric([self._sensor], float(value))
            yield family
        malformed = CounterMetricFamily(
            "egresswatch_capture_malformed_packets",
            "Malformed or truncated packets, counted and skipped, by reason.",
            labels=["sensor", "reason"],
        )
        # reasons are the sniffer's own fixed strings: a bounded set
        for reason, count in sorted((_get(stats, "malformed") or {}).items()):
            malformed.add_metric([self._sensor, str(reason)], float(count))
        yield malformed


class _GeoCollector(Collector):
    """Reports the age of each loaded GeoIP database at scrape time."""

    def __init__(
        self, sensor: str, databases: Callable[[], Iterable[Any]], clock: Callable[[], float]
    ) -> None:
        self._sensor = sensor
        self._databases = databases
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "egresswatch_geoip_database_age_seconds",
            "Seconds since the GeoIP database was built (MaxMind metadata build_epoch).",
            labels=["sensor", "database"],
        )

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        try:
            databases = list(self._databases())
        except Exception:
            databases = []
        now = self._clock()
        seen: set[str] = set()
        for db in databases:
            if isinstance(db, tuple):
                name, epoch = db
            else:
                # GeoDatabase here, geo.mmdb.GeoDatabase (database_type, build_epoch)
                # or geo's DatabaseInfo (type, built) from GeoChain.databases()
                name = _get(db, "name") or _get(db, "database_type") or _get(db, "type")
                epoch = _get(db, "build_epoch")
                if epoch is None and isinstance(_get(db, "built"), datetime):
                    epoch = _get(db, "built").timestamp()
            if not name or epoch is None or str(name) in seen:
                continue
            seen.add(str(name))
            family.add_metric([self._sensor, str(name)], max(0.0, now - float(epoch)))
        return [family]


#: one counted series: the flow labels and the metric's own labels after them
_Key = tuple[tuple[str, str, str, str], tuple[str, ...]]
#: (metric name, help, extra label names) of the per-decision counters, in _DecisionCounts
_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "egresswatch_decisions",
        "Decisions taken (a flow can be judged at several stages).",
        ("verdict",),
    ),
    ("egresswatch_flows", "Flows seen (counted at their first decision).", ()),
    (
        "egresswatch_payloads",
        "Decisions by payload type carried (a decision can carry several).",
        ("payload_type", "verdict"),
    ),
    (
        "egresswatch_blocked",
        "Block verdicts: verdict=block was stopped, verdict=would-block went on (monitor).",
        ("verdict",),
    ),
    (
        "egresswatch_alerts",
        "Decisions that raise an alert (alert, block, would-block), before deduplication.",
        ("verdict",),
    ),
    ("egresswatch_findings", "Sensitive items found in payloads, by kind.", ("kind",)),
    ("egresswatch_sent_bytes", "Bytes sent by clients to destinations.", ()),
    ("egresswatch_received_bytes", "Bytes received by clients from destinations.", ()),
)
_LATENCY = "egresswatch_decision_duration_seconds"
_LATENCY_HELP = "Time the inspector took to judge one observation."
_LATENCY_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]


class _DecisionCounts(Collector):
    """The per-decision counters and the latency histogram, kept in plain dicts.

    prometheus_client's counter children cost a wrapper call, a check and a lock
    each: with seven of them per proxied request they were a third of what the
    sinks cost in a running mitmdump (docs/performance.md). Here one lock covers a
    whole decision's counts and the samples are built at scrape time, in the same
    names, labels and types (``_total`` and ``_created`` included).

    Each series is a one-item list (a "cell") that :class:`_Plan` objects hold on
    to, so counting a decision adds to its cells without hashing a label key.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: per metric in _COUNTERS order: series -> cell, and series -> creation time
        self.values: tuple[dict[_Key, list[float]], ...] = tuple({} for _ in _COUNTERS)
        self.created: tuple[dict[_Key, float], ...] = tuple({} for _ in _COUNTERS)
        #: (sensor, source) -> [count per bucket (not cumulative)..., +Inf, sum]
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.latency_created: dict[tuple[str, str], float] = {}

    def cell(self, metric: int, key: _Key) -> list[float]:
        """The cell of one series, made (and its creation time noted) on first use.

        The caller holds :attr:`lock` and counts on the cell right away: a series
        appears with its first count, as prometheus_client's do.
        """
        series = self.values[metric]
        cell = series.get(key)
        if cell is None:
            cell = series[key] = [0.0]
            self.created[metric][key] = time.time()
        return cell

    def add(self, metric: int, key: _Key, amount: float = 1.0) -> None:
        """Count ``amount`` on one series; the caller holds :attr:`lock`."""
        self.cell(metric, key)[0] += amount

    def latency_row(self, key: tuple[str, str]) -> list[float]:
        """The histogram row of one (sensor, source); the caller holds :attr:`lock`."""
        row = self.latency.get(key)
        if row is None:
            row = self.latency[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            self.latency_created[key] = time.time()
        return row

    def describe(self) -> Iterable[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterable[Metric]:
        return self._families(empty=False)

    def _families(self, empty: bool) -> list[Metric]:
        with self.lock:
            values = (
                [{k: c[0] for k, c in v.items()} for v in self.values]
                if not empty
                else [{} for _ in _COUNTERS]
            )
            created = [dict(c) for c in self.created] if not empty else [{} for _ in _COUNTERS]
            latency = {k: list(v) for k, v in self.latency.items()} if not empty else {}
            latency_created = dict(self.latency_created)
        out: list[Metric] = []
        for i, (name, doc, extra) in enumerate(_COUNTERS):
            family = CounterMetricFamily(name, doc, labels=[*FLOW_LABELS, *extra])
            for (labels, more), value in values[i].items():
                family.add_metric([*labels, *more], value, created=created[i].get((labels, more)))
            out.append(family)
        hist = HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=["sensor", "source"])
        for key, row in latency.items():
            cumulative = 0.0
            buckets = []
            for le, count in zip(_LATENCY_LE, row[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            hist.add_metric(list(key), buckets, row[-1])
            if key in latency_created:
                hist.add_sample(
                    _LATENCY + "_created",
                    dict(zip(("sensor", "source"), key, strict=True)),
                    latency_created[key],
                )
        out.append(hist)
        return out


_DECISIONS, _FLOWS, _PAYLOADS, _BLOCKED, _ALERTS, _FINDINGS, _SENT, _RECEIVED = range(8)

#: how many distinct decision shapes (:class:`_Plan`) are kept; cleared when full
_PLANS_MAX = 4096


class _Plan:
    """What one shape of decision counts: its flow labels, the cells of the series it
    adds one to, and its latency row. A shape is the sensor, the service, the raw
    country, the verdict, the payload types and the finding kinds; most decisions
    repeat one already seen. The flow, sent and received cells are made when first
    counted on (a series appears with its first count)."""

    __slots__ = ("cells", "flow", "labels", "latency", "received", "sent")

    def __init__(
        self,
        labels: tuple[str, str, str, str],
        cells: tuple[list[float], ...],
        latency: list[float],
    ) -> None:
        self.labels = labels
        self.cells = cells
        self.latency = latency
        self.flow: list[float] | None = None
        self.sent: list[float] | None = None
        self.received: list[float] | None = None


class Metrics:
    """A :class:`~egresswatch.ports.Sink` that counts decisions in Prometheus metrics.

    ``known_services`` are the catalog's service ids: any other service (and any
    lookalike) is labelled ``other``, so a hostile name cannot add series.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        sensor_name: str = "default",
        known_services: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.sensor = sensor_name
        self.known_services = frozenset(known_services)
        self._clock = clock
        # flow_id -> the plan of its first decision, for FlowClosed byte counts
        self._flows: OrderedDict[str, _Plan] = OrderedDict()
        #: decision shape -> its plan (see record)
        self._plans: dict[tuple[Any, ...], _Plan] = {}

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.bypasses = counter(
            "egresswatch_bypass_flows_total",
            "Flows the sniffer saw leave that the proxy never handled (QUIC, DoH, other ports).",
            FLOW_LABELS,
        )
        self.notifications = counter(
            "egresswatch_alert_notifications_total",
            "Alert delivery state changes per channel (delivered, retrying, failed, dropped).",
            ("sensor", "channel", "state"),
        )
        # decisions, flows, payloads, blocked, alerts, findings, bytes and latency:
        # counted per decision, in plain dicts (see _DecisionCounts)
        self._counts = _DecisionCounts()
        registry.register(self._counts)
        self.build_info = Gauge(
            "egresswatch_build_info",
            "Always 1; labels carry the egresswatch and Python versions.",
            ("sensor", "version", "python"),
            registry=registry,
        )
        self.build_info.labels(sensor_name, __version__, platform.python_version()).set(1)
        self._countries: dict[str | None, str] = {}
        self._store_collector: _StoreCollector | None = None
        self._capture_collector: _CaptureCollector | None = None
        self._geo_collector: _GeoCollector | None = None

    # -- labels ------------------------------------------------------------------

    def service_label(self, decision: Decision) -> str:
        """The catalog id for official matches of known services, else ``other``."""
        match = decision.assessment.service
        if match is not None and match.official and match.service.id in self.known_services:
            return match.service.id
        return OTHER_SERVICE

    def _labels(self, decision: Decision) -> tuple[str, str, str, str]:
        raw = decision.assessment.geo.country
        country = self._countries.get(raw)
        if country is None:
            country = country_label(raw)
            if len(self._countries) < 4096:  # GeoIP answers are ISO codes: a few hundred
                self._countries[raw] = country
        return (
            self.sensor,
            str(decision.observation.sensor),
            self.service_label(decision),
            country,
        )

    # -- Sink --------------------------------------------------------------------

    def record(self, decision: Decision) -> None:
        a = decision.assessment
        o = a.observation
        v = decision.verdict
        m = a.service
        findings = a.findings
        shape = (
            o.sensor,
            m.service.id if m is not None and m.kind is MatchKind.OFFICIAL else None,
            a.geo.country,
            v.action,
            v.mode,
            a.payload_types,
            tuple([f.kind for f in findings]) if findings else (),
        )
        plan = self._plans.get(shape)
        counts = self._counts
        with counts.lock:
            if plan is None:
                plan = self._plan(decision, shape)
            for cell in plan.cells:
                cell[0] += 1.0
            flows = self._flows
            flow_id = o.flow_id
            if flow_id not in flows:
                flows[flow_id] = plan
                if len(flows) > FLOW_TABLE_SIZE:
                    flows.popitem(last=False)
                if plan.flow is None:
                    plan.flow = counts.cell(_FLOWS, (plan.labels, ()))
                plan.flow[0] += 1.0
            seconds = decision.elapsed
            row = plan.latency
            if seconds > 0.0:
                row[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: bound >= value
                row[-1] += seconds
            else:
                row[0] += 1

    def _plan(self, decision: Decision, shape: tuple[Any, ...]) -> _Plan:
        """The cells a decision of this shape counts on; the caller holds the lock."""
        counts = self._counts
        labels = self._labels(decision)
        verdict = (decision.verdict.label,)
        action = decision.verdict.action
        keys: list[tuple[int, _Key]] = [(_DECISIONS, (labels, verdict))]
        for payload_type in decision.assessment.payload_types:
            keys.append((_PAYLOADS, (labels, (str(payload_type), *verdict))))
        for kind in shape[-1]:
            keys.append((_FINDINGS, (labels, (str(kind),))))
        if action is Action.BLOCK:
            keys.append((_BLOCKED, (labels, verdict)))
        if action is not Action.ALLOW:
            keys.append((_ALERTS, (labels, verdict)))
        plan = _Plan(
            labels,
            tuple(counts.cell(metric, key) for metric, key in keys),
            counts.latency_row((self.sensor, labels[1])),
        )
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()  # many shapes (a scan?): start over; the counts stay
        self._plans[shape] = plan
        return plan

    def flow_closed(self, event: FlowClosed) -> None:
        counts = self._counts
        with counts.lock:
            plan = self._flows.pop(event.flow_id, None)
            if plan is None:
                labels = (self.sensor, str(event.sensor), OTHER_SERVICE, UNKNOWN_COUNTRY)
                if event.bytes_out > 0:
                    counts.add(_SENT, (labels, ()), event.bytes_out)
                if event.bytes_in > 0:
                    counts.add(_RECEIVED, (labels, ()), event.bytes_in)
                return
            if event.bytes_out > 0:
                if plan.sent is None:
                    plan.sent = counts.cell(_SENT, (plan.labels, ()))
                plan.sent[0] += event.bytes_out
            if event.bytes_in > 0:
                if plan.received is None:
                    plan.received = counts.cell(_RECEIVED, (plan.labels, ()))
                plan.received[0] += event.bytes_in

    def close(self) -> None:
        with self._counts.lock:
            self._flows.clear()

    # -- other sources -----------------------------------------------------------

    def bypass(self, decision: Decision) -> None:
        """Count one bypass (see :mod:`egresswatch.bypass`); the flow itself was counted."""
        self.bypasses.labels(*self._labels(decision)).inc()

    def alert_state(self, alert: Any) -> None:
        """Count an alert delivery state change; pass to ``AlertSink.on_state``."""
        channel = str(_get(alert, "channel") or "none")
        state = str(_get(alert, "state") or "unknown")
        self.notifications.labels(self.sensor, channel, state).inc()

    def watch_store(self, stats: Callable[[], Any]) -> None:
        """Report the store's queue, drops and spill journal, read at scrape time.

        ``stats()`` returns an object or mapping with any of ``queue_length``,
        ``queue_capacity``, ``dropped``, ``spill_bytes``, ``spill_records``.
        """
        if self._store_collector is not None:
            self.registry.unregister(self._store_collector)
        self._store_collector = _StoreCollector(self.sensor, stats)
        self.registry.register(self._store_collector)

    def watch_sniffer(self, stats: Callable[[], Any]) -> None:
        """Report the sniffer's packets, kernel drops, malformed packets and evictions.

        ``stats()`` returns the sniffer's ``SnifferStats`` (read at scrape time).
        """
        if self._capture_collector is not None:
            self.registry.unregister(self._capture_collector)
        self._capture_collector = _CaptureCollector(self.sensor, stats)
        self.registry.register(self._capture_collector)

    def watch_geoip(self, databases: Callable[[], Iterable[Any]]) -> None:
        """Report the age of each GeoIP database, read at scrape time.

        ``databases()`` yields :class:`GeoDatabase`-like objects (``name`` or
        ``database_type``, and ``build_epoch``), ``geo`` ``DatabaseInfo`` rows
        (``type``, ``built``; so ``GeoChain.databases`` works as is) or
        ``(name, build_epoch)`` pairs.
        """
        if self._geo_collector is not None:
            self.registry.unregister(self._geo_collector)
        self._geo_collector = _GeoCollector(self.sensor, databases, self._clock)
        self.registry.register(self._geo_collector)


class MetricsServer:
    """A running /metrics listener; :meth:`close` stops it and frees the port."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    registry: CollectorRegistry, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` in a daemon thread.

    The default host is loopback: client_python's own default (0.0.0.0) would
    publish flow statistics to the whole network. ``port=0`` picks a free port.
    """
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise MetricsError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
    return MetricsServer(httpd, thread)

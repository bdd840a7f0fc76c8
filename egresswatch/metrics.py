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

import platform
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from egresswatch import __version__
from egresswatch.errors import EgressWatchError
from egresswatch.model import UNKNOWN_COUNTRY, Action, Decision, FlowClosed

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


@dataclass(slots=True)
class _Row:
    """The metric children of one (sensor, source, service, country, verdict) label set."""

    flows: Counter
    decisions: Counter
    blocked: Counter | None
    alerts: Counter | None
    latency: Histogram


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
        self._lock = threading.Lock()
        # flow_id -> label values of its first decision, for FlowClosed byte counts
        self._flows: OrderedDict[str, tuple[str, str, str, str]] = OrderedDict()

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.decisions = counter(
            "egresswatch_decisions_total",
            "Decisions taken (a flow can be judged at several stages).",
            (*FLOW_LABELS, "verdict"),
        )
        self.flows = counter(
            "egresswatch_flows_total", "Flows seen (counted at their first decision).", FLOW_LABELS
        )
        self.payloads = counter(
            "egresswatch_payloads_total",
            "Decisions by payload type carried (a decision can carry several).",
            (*FLOW_LABELS, "payload_type", "verdict"),
        )
        self.blocked = counter(
            "egresswatch_blocked_total",
            "Block verdicts: verdict=block was stopped, verdict=would-block went on (monitor).",
            (*FLOW_LABELS, "verdict"),
        )
        self.alerts = counter(
            "egresswatch_alerts_total",
            "Decisions that raise an alert (alert, block, would-block), before deduplication.",
            (*FLOW_LABELS, "verdict"),
        )
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
        self.findings = counter(
            "egresswatch_findings_total",
            "Sensitive items found in payloads, by kind.",
            (*FLOW_LABELS, "kind"),
        )
        self.sent = counter(
            "egresswatch_sent_bytes_total", "Bytes sent by clients to destinations.", FLOW_LABELS
        )
        self.received = counter(
            "egresswatch_received_bytes_total",
            "Bytes received by clients from destinations.",
            FLOW_LABELS,
        )
        self.latency = Histogram(
            "egresswatch_decision_duration_seconds",
            "Time the inspector took to judge one observation.",
            ("sensor", "source"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.build_info = Gauge(
            "egresswatch_build_info",
            "Always 1; labels carry the egresswatch and Python versions.",
            ("sensor", "version", "python"),
            registry=registry,
        )
        self.build_info.labels(sensor_name, __version__, platform.python_version()).set(1)
        self._rows: dict[tuple[tuple[str, str, str, str], str], _Row] = {}
        self._payload_rows: dict[tuple[Any, ...], Counter] = {}
        self._finding_rows: dict[tuple[Any, ...], Counter] = {}
        self._byte_rows: dict[tuple[str, str, str, str], tuple[Counter, Counter]] = {}
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

    def _children(self, labels: tuple[str, str, str, str], verdict: str, action: Action) -> _Row:
        # labels() hashes and validates on every call (several µs each): cache the
        # children per label set, which is bounded like the labels themselves
        key = (labels, verdict)
        row = self._rows.get(key)
        if row is None:
            row = _Row(
                flows=self.flows.labels(*labels),
                decisions=self.decisions.labels(*labels, verdict),
                blocked=self.blocked.labels(*labels, verdict) if action is Action.BLOCK else None,
                alerts=self.alerts.labels(*labels, verdict) if action is not Action.ALLOW else None,
                latency=self.latency.labels(self.sensor, labels[1]),
            )
            self._rows[key] = row
        return row

    def record(self, decision: Decision) -> None:
        labels = self._labels(decision)
        verdict = decision.verdict.label
        row = self._children(labels, verdict, decision.verdict.action)
        flow_id = decision.observation.flow_id
        with self._lock:
            new_flow = flow_id not in self._flows
            if new_flow:
                self._flows[flow_id] = labels
                if len(self._flows) > FLOW_TABLE_SIZE:
                    self._flows.popitem(last=False)
        if new_flow:
            row.flows.inc()
        row.decisions.inc()
        assessment = decision.assessment
        for payload_type in assessment.payload_types:
            pkey = (labels, payload_type, verdict)
            child = self._payload_rows.get(pkey)
            if child is None:
                child = self.payloads.labels(*labels, str(payload_type), verdict)
                self._payload_rows[pkey] = child
            child.inc()
        for finding in assessment.findings:
            fkey = (labels, finding.kind)
            child = self._finding_rows.get(fkey)
            if child is None:
                child = self.findings.labels(*labels, str(finding.kind))
                self._finding_rows[fkey] = child
            child.inc()
        if row.blocked is not None:
            row.blocked.inc()
        if row.alerts is not None:
            row.alerts.inc()
        row.latency.observe(max(0.0, decision.elapsed))

    def flow_closed(self, event: FlowClosed) -> None:
        with self._lock:
            labels = self._flows.pop(event.flow_id, None)
        if labels is None:
            labels = (self.sensor, str(event.sensor), OTHER_SERVICE, UNKNOWN_COUNTRY)
        pair = self._byte_rows.get(labels)
        if pair is None:
            # labels() validates and hashes on every call: one lookup per label set instead
            pair = (self.sent.labels(*labels), self.received.labels(*labels))
            self._byte_rows[labels] = pair
        if event.bytes_out > 0:
            pair[0].inc(event.bytes_out)
        if event.bytes_in > 0:
            pair[1].inc(event.bytes_in)

    def close(self) -> None:
        with self._lock:
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

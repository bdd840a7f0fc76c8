"""Wiring: build the inspector and the sinks from one :class:`Settings`.

This is the edge where files are opened and threads started; the CLI, the
mitmproxy addon and the sniffer all build their parts here, so a setting means
the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egresswatch.inspector import Inspector
from egresswatch.model import Mode
from egresswatch.ports import FanOut, Sink

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from egresswatch.alerts import AlertSink
    from egresswatch.metrics import Metrics, MetricsServer
    from egresswatch.policy import Policy
    from egresswatch.store import Store
    from egresswatch.store.remote import RemoteWriter
    from egresswatch.store.retention import Retention
    from egresswatch.store.writer import StoreWriter

#: How much of a request body the classifier sees (DESIGN.md: bounded).
DEFAULT_BODY_LIMIT = 256 * 1024
DEFAULT_METRICS_LISTEN = ("127.0.0.1", 9721)


def default_retention() -> Retention:
    """The store's default retention: flows 30 days (findings and alerts as long),
    DNS answers 7 days, raw body excerpts 1 day (see ``store.retention.Retention``)."""
    from egresswatch.store.retention import Retention

    return Retention()


def default_sensor_name() -> str:
    """The sensor's name in records and metrics: env ``EGRESSWATCH_SENSOR`` or the host name."""
    return os.environ.get("EGRESSWATCH_SENSOR") or socket.gethostname() or "egresswatch"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob that the proxy, the sniffer and ``run`` share. Paths are not opened here."""

    policy: Path | None = None
    #: overrides the policy file's mode when set
    mode: Mode | None = None
    catalogs: tuple[Path, ...] = ()
    geoip_dir: Path | None = None
    country_db: Path | None = None
    asn_db: Path | None = None
    geo_overrides: Path | None = None
    #: SQLAlchemy URL; None is the default SQLite file
    db_url: str | None = None
    #: record decisions in the database at all
    store: bool = True
    spill_path: Path | None = None
    #: write from a child process (store/remote.py) instead of a thread of this one;
    #: None (the default): a child only when this process may use more than one CPU
    #: (see :func:`store_in_child`)
    store_process: bool | None = None
    #: how long the writer keeps rows (it prunes hourly); None: keep everything forever.
    #: Default: flows 30 days, DNS answers 7 days, raw body excerpts 1 day.
    retention: Retention | None = field(default_factory=default_retention)
    #: bytes of each request body stored raw (``payload_excerpts``); 0, the default:
    #: no body byte is ever stored. Opt-in only (DESIGN.md, issue #8).
    raw_bodies: int = 0
    #: (host, port) of /metrics, or None for no listener
    metrics_listen: tuple[str, int] | None = DEFAULT_METRICS_LISTEN
    sensor_name: str = field(default_factory=default_sensor_name)
    body_limit: int = DEFAULT_BODY_LIMIT
    alert_log: Path | None = None
    alert_webhook: str | None = None
    alert_webhook_format: str = "json"
    alert_syslog: bool = False


def build_inspector(settings: Settings) -> Inspector:
    """Load GeoIP, catalog and policy once and return the inspector that uses them.

    Raises ConfigError / GeoIPError (with file, line and field, or how to get a
    database) for the CLI to print.
    """
    from egresswatch.catalog import Catalog
    from egresswatch.geo import GeoChain

    geo = GeoChain.from_paths(
        country_db=settings.country_db,
        asn_db=settings.asn_db,
        overrides=settings.geo_overrides,
        geoip_dir=settings.geoip_dir,
    )
    catalog = Catalog.load(settings.catalogs)
    return Inspector(geo, catalog, load_policy(settings))


def load_policy(settings: Settings) -> Policy:
    """The policy named by the settings (or the shipped default), with the mode override."""
    from egresswatch.policy import Policy

    policy = Policy.load(settings.policy) if settings.policy else Policy.default()
    if settings.mode is not None:
        policy = policy.with_mode(settings.mode)
    return policy


class Sinks(FanOut):
    """Store writer, metrics and alerts behind one ``ports.Sink``; ``close`` flushes in order.

    ``record`` and ``flow_closed`` only enqueue (store, alerts) or bump counters
    (metrics): a sensor's event loop never waits on a disk or a webhook.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        store: Store | None = None,
        writer: StoreWriter | RemoteWriter | None = None,
        alerts: AlertSink | None = None,
        server: MetricsServer | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.writer = writer
        self.alerts = alerts
        self.server = server
        parts: list[Sink] = [metrics]
        if writer is not None:
            parts.append(writer)
        if alerts is not None:
            parts.append(alerts)
        # record and flow_closed are FanOut's own: no extra call per request
        super().__init__(parts)

    def close(self) -> None:
        """Deliver pending alerts, flush the store, stop the metrics listener."""
        if self.alerts is not None:
            self.alerts.close()
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
        if self.store is not None:
            self.store.close()


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"), own_cgroup: Path = Path("/proc/self/cgroup")
) -> float:
    """How many CPUs this process may keep busy at once.

    Its CPU affinity (``taskset``, systemd's ``CPUAffinity=``), capped by a CPU quota
    on its cgroup or any parent (``docker --cpus``, systemd's ``CPUQuota=``): cgroup
    v2's ``cpu.max``, or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``. A file
    that cannot be read sets no cap.
    """
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        lines = own_cgroup.read_text().splitlines()
    except OSError:
        return cpus
    # /proc/self/cgroup: "0::/path" (v2) and "N:controller,...:/path" (v1), see cgroups(7)
    for line in lines:
        if line.count(":") < 2:
            continue  # not a cgroup line: nothing to read from it
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, read = cgroup_root, _v2_quota
        elif "cpu" in controllers.split(","):
            base, read = cgroup_root / controllers, _v1_quota
            if not base.is_dir():
                base = cgroup_root / "cpu"
        else:
            continue
        node = Path(path.strip() or "/")
        for folder in (node, *node.parents):
            with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
                quota = read(base / folder.relative_to("/"))
                if quota is not None:
                    cpus = min(cpus, quota)
    return cpus


def _v2_quota(folder: Path) -> float | None:
    quota, period = (folder / "cpu.max").read_text().split()
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    quota = int((folder / "cpu.cfs_quota_us").read_text())
    return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())


def store_in_child(settings: Settings) -> bool:
    """Whether the store writer runs as a child process (``store.process``).

    Unset ("auto"), a child only when this process may use more than one CPU. On one
    CPU the child can only take turns with the sensor, and the pickling and the pipe
    on both sides make that dearer than a thread writing the same rows: through a real
    mitmdump, ~108,000 more instructions a request (~1.1% of bare mitmproxy's;
    docs/performance.md, "Sixth pass").
    """
    if settings.store_process is not None:
        return settings.store_process
    return usable_cpus() > 1


def writer_description(writer: Any, settings: Settings) -> str:
    """Where the store's SQL runs, for a start-up banner."""
    pid = getattr(writer, "pid", None)  # a RemoteWriter's child
    if pid is not None:
        return f"written by a child process (egw-store, pid {pid})"
    if settings.store_process is None:
        return (
            f"written by a thread of this process (it may use {usable_cpus():g} CPU: "
            "a child process would only take turns with it)"
        )
    return "written by a thread of this process"


def build_sinks(
    settings: Settings, registry: CollectorRegistry, inspector: Inspector | None = None
) -> Sinks:
    """Open the store, start its writer, the alert channels and the /metrics listener.

    Raises StoreError (database), ConfigError (alert settings) or MetricsError
    (listener) with a clear message; anything already started is stopped again.
    """
    from egresswatch import alerts as alerting
    from egresswatch import metrics as prom

    services: list[str] = []
    catalog = getattr(inspector, "catalog", None)
    if catalog is not None:
        services = [s.id for s in catalog.services]
    metrics = prom.Metrics(registry, sensor_name=settings.sensor_name, known_services=services)
    if inspector is not None and hasattr(inspector.geo, "databases"):
        metrics.watch_geoip(inspector.geo.databases)
    started: list[Any] = []
    try:
        store = writer = None
        if settings.store:
            from egresswatch.store import open_store

            store = open_store(settings.db_url)
            started.append(store)
            writer = store.writer(
                spill_path=settings.spill_path,
                node=settings.sensor_name,
                retention=settings.retention,
                raw_bodies=settings.raw_bodies,
                process=store_in_child(settings),
            )
            started.append(writer)
            metrics.watch_store(lambda: writer.stats)
        channels = alerting.channels_from(
            log=settings.alert_log,
            webhook=settings.alert_webhook,
            webhook_format=settings.alert_webhook_format,
            syslog=settings.alert_syslog,
        )
        if not channels and store is not None:
            # Alerts are never silent: with no channel configured they go to a JSON-lines
            # log beside the database (or in the data folder for a server database).
            base = store.path or store.default_spill_path()
            base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            channels.append(alerting.LogChannel(base.with_name(base.name + ".alerts.jsonl")))
        alert_sink = alerting.AlertSink(channels) if channels else None
        if alert_sink is not None:
            started.append(alert_sink)
            alert_sink.on_state(metrics.alert_state)
        server = None
        if settings.metrics_listen is not None:
            server = prom.serve(registry, *settings.metrics_listen)
        sinks = Sinks(metrics, store=store, writer=writer, alerts=alert_sink, server=server)
        if alert_sink is not None and store is not None:
            alert_sink.on_state(alerting.StoreAlertRecorder(store))
        return sinks
    except BaseException:
        for part in reversed(started):
            part.close()
        raise

"""Wiring: build the inspector and the sinks from one :class:`Settings`.

This is the edge where files are opened and threads started; the CLI, the
mitmproxy addon and the sniffer all build their parts here, so a setting means
the same thing everywhere.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from egresswatch.inspector import Inspector
from egresswatch.model import Mode

#: How much of a request body the classifier sees (DESIGN.md: bounded).
DEFAULT_BODY_LIMIT = 256 * 1024
DEFAULT_METRICS_LISTEN = ("127.0.0.1", 9721)


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


def load_policy(settings: Settings):  # type: ignore[no-untyped-def]
    """The policy named by the settings (or the shipped default), with the mode override."""
    from egresswatch.policy import Policy

    policy = Policy.load(settings.policy) if settings.policy else Policy.default()
    if settings.mode is not None:
        policy = policy.with_mode(settings.mode)
    return policy

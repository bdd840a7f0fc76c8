"""The proxy addon's options: parsed and checked here, without importing mitmproxy.

``egresswatch_*`` option strings become an :class:`AddonConfig` (what the addon does
per flow) and a ``runtime.Settings`` (what it builds: inspector, store, metrics).
The CLI and the config file check pass-through patterns with the same functions.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from egresswatch.model import Mode

if TYPE_CHECKING:
    from egresswatch.ports import Sink
    from egresswatch.proxy import InspectorLike

#: default number of body bytes held for classification
DEFAULT_BODY_LIMIT = 256 * 1024
#: bodies above this are streamed, not buffered (mitmproxy holds buffered bodies in memory)
DEFAULT_STREAM_ABOVE = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class AddonConfig:
    """The addon's own options, parsed once (see :func:`parse_options`)."""

    body_limit: int = DEFAULT_BODY_LIMIT
    stream_above: int = DEFAULT_STREAM_ABOVE
    allow_quic: bool = False
    passthrough: tuple[str, ...] = ()
    process_lookup: bool = True


def parse_size(text: str) -> int:
    """``"64k"``, ``"1m"``, ``"4096"`` -> bytes. Raises ValueError."""
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = 1
    for suffix, mult in (("k", 1024), ("m", 1024**2), ("g", 1024**3)):
        if raw.endswith(suffix):
            raw, factor = raw[:-1], mult
            break
    try:
        value = int(raw) * factor
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 65536, 64k, 1m)") from None
    if value < 0:
        raise ValueError(f"size must not be negative: {text!r}")
    return value


def parse_passthrough(patterns: Iterable[str]) -> tuple[str, ...]:
    """Host patterns for TLS passthrough (``example.com``, ``*.example.com``). Raises ValueError."""
    out: list[str] = []
    for pattern in patterns:
        p = pattern.strip().lower().rstrip(".")
        if not p or any(c in p for c in " /:@"):
            raise ValueError(f"not a host pattern: {pattern!r} (examples: apple.com, *.apple.com)")
        out.append(p)
    return tuple(out)


def parse_options(
    body_limit: str,
    allow_quic: bool,
    passthrough: Sequence[str],
    process_lookup: bool,
    stream_above: str = "16m",
) -> AddonConfig:
    """Turn option strings into an :class:`AddonConfig`. Raises ValueError."""
    limit, above = parse_size(body_limit), parse_size(stream_above)
    if above < limit:
        raise ValueError(
            f"egresswatch_stream_above ({stream_above}) must not be below "
            f"egresswatch_body_limit ({body_limit})"
        )
    return AddonConfig(
        body_limit=limit,
        stream_above=above,
        allow_quic=allow_quic,
        passthrough=parse_passthrough(passthrough),
        process_lookup=process_lookup,
    )


def host_matches(host: str | None, patterns: Sequence[str]) -> bool:
    """True if ``host`` is one of ``patterns`` or below one (``a.com`` covers ``x.a.com``)."""
    if not host or not patterns:
        return False
    host = host.lower().rstrip(".")
    for p in patterns:
        if p.startswith("*."):
            if fnmatch.fnmatchcase(host, p):
                return True
        elif host == p or host.endswith("." + p):
            return True
    return False


def parse_listen(text: str) -> tuple[str, int]:
    """``"PORT"``, ``"HOST:PORT"`` or ``"[V6]:PORT"`` -> (host, port); no host means 127.0.0.1."""
    raw = text.strip()
    host = "127.0.0.1"
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise ValueError(f"not HOST:PORT: {text!r}")
        host, raw = raw[1:end], raw[end + 2 :]
    elif ":" in raw:
        host, raw = raw.rsplit(":", 1)
        host = host or "127.0.0.1"
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError(f"not a port: {text!r} (examples: 9721, 127.0.0.1:9721)")
    return host, int(raw)


#: ``egresswatch_store_process`` / ``proxy --store-process`` -> Settings.store_process
#: (None: chosen by the CPUs this process may use, runtime.store_in_child)
STORE_PROCESS: dict[str, bool | None] = {"auto": None, "true": True, "false": False}


def settings_from_options(opts: Any) -> Any:
    """``egresswatch_*`` mitmproxy options -> ``runtime.Settings``. Raises ValueError."""
    from pathlib import Path

    from egresswatch import runtime

    def path(value: str) -> Path | None:
        return Path(value).expanduser() if value else None

    db = opts.egresswatch_db.strip()
    fields: dict[str, Any] = {
        "policy": path(opts.egresswatch_policy),
        "mode": Mode(opts.egresswatch_mode) if opts.egresswatch_mode else None,
        "catalogs": tuple(Path(p) for p in opts.egresswatch_catalog.split(",") if p.strip()),
        "geoip_dir": path(opts.egresswatch_geoip_dir),
        "country_db": path(opts.egresswatch_country_db),
        "asn_db": path(opts.egresswatch_asn_db),
        "geo_overrides": path(opts.egresswatch_overrides),
        "db_url": None if db in ("", "none") else db,
        "store": db != "none",
        "store_process": STORE_PROCESS[opts.egresswatch_store_process],
        "metrics_listen": (
            parse_listen(opts.egresswatch_metrics_listen)
            if opts.egresswatch_metrics_listen
            else None
        ),
        "body_limit": parse_size(opts.egresswatch_body_limit),
    }
    if opts.egresswatch_sensor_name:
        fields["sensor_name"] = opts.egresswatch_sensor_name
    return runtime.Settings(**fields)


def build_from_options(opts: Any) -> tuple[InspectorLike, Sink]:
    """Build the inspector and sinks from ``egresswatch_*`` options via ``egresswatch.runtime``."""
    from prometheus_client import CollectorRegistry

    from egresswatch import runtime

    settings = settings_from_options(opts)
    inspector = runtime.build_inspector(settings)
    return inspector, runtime.build_sinks(settings, CollectorRegistry(), inspector)

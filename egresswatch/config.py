"""``egresswatch.toml``: the one configuration file of ``egresswatch run``.

Every setting has three spellings, applied in this order (later wins):

1. the embedded default (the table :data:`FIELDS`; no file is needed at all),
2. the file (``--config``, else ``$EGRESSWATCH_CONFIG``, else none),
3. an environment variable ``EGRESSWATCH_<SECTION>_<KEY>`` (a few keep the short
   names other commands already use: ``EGRESSWATCH_POLICY``, ``EGRESSWATCH_DB``,
   ``EGRESSWATCH_GEOIP_DIR``, ``EGRESSWATCH_SENSOR``),
4. a command-line flag.

Each value is parsed once, here, by one plain function that raises ``ValueError``;
a bad value becomes a :class:`~egresswatch.errors.ConfigError` naming the file,
line and field (or the environment variable), so ``run`` never starts half
configured. :class:`RunConfig` then hands out the ``runtime.Settings`` and the
proxy's and sniffer's parts.
"""

from __future__ import annotations

import contextvars
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egresswatch.errors import ConfigError
from egresswatch.model import Mode

#: environment variable naming the config file
CONFIG_ENV = "EGRESSWATCH_CONFIG"

Parser = Callable[[Any], Any]
#: folder relative paths are resolved against while a config file is read (its own folder)
_BASE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_base", default=None)


# -- value parsers (raise ValueError with a message a person can act on) ---------------------


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_tomltype(value)}")
    return value.strip()


def parse_optional_str(value: Any) -> str | None:
    text = parse_str(value)
    return text or None


def parse_path(value: Any) -> Path | None:
    """A path (``~`` expanded; relative to the config file's folder in a file); empty: unset."""
    text = parse_str(value)
    if not text:
        return None
    path = Path(text).expanduser()
    base = _BASE.get()
    return base / path if base is not None and not path.is_absolute() else path


def parse_existing_file(value: Any) -> Path | None:
    path = parse_path(value)
    if path is not None and not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


#: the value of a true/false setting that egresswatch chooses itself
AUTO = "auto"


def parse_bool_or_auto(value: Any) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f'expected true, false or "auto", got {value!r}') from None


def parse_positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def parse_count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number, got a boolean")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"expected a whole number, got {value!r}")
    if number < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return number


def parse_host_port(value: Any) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (a bare port means 127.0.0.1); port 1-65535."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = parse_str(value)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{text!r} is not HOST:PORT (IPv6 goes in brackets: [::1]:8080)")
    host = host.strip("[]")
    if ":" in host and not text.startswith("["):
        raise ValueError(f"{text!r} is not HOST:PORT (IPv6 goes in brackets: [::1]:8080)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT with a port 1-65535 (example 127.0.0.1:8080)")
    return host or "127.0.0.1", int(port)


def parse_optional_host_port(value: Any) -> tuple[str, int] | None:
    """Like :func:`parse_host_port`; empty or ``off`` means None (not listening)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    return parse_host_port(value)


def parse_size(value: Any) -> int:
    """``65536``, ``"64k"``, ``"1m"`` -> bytes (the proxy's own parser)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return value
    from egresswatch.proxy_options import parse_size as proxy_size

    return proxy_size(parse_str(value))


def parse_duration(value: Any) -> float:
    """``"30d"``, ``"12h"``, ``"1h30m"`` (or a number of seconds) -> seconds, above zero."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30d or 12h, got a boolean")
    if isinstance(value, int | float):
        if not value > 0:
            raise ValueError(f"a duration must be longer than zero, got {value!r}")
        return float(value)
    from egresswatch.commands._storeopts import parse_duration as store_duration

    return store_duration(parse_str(value))


def parse_retention(value: Any) -> float | None:
    """A duration (``30d``); ``off`` or ``forever`` (or empty) keeps rows forever (None)."""
    if isinstance(value, str) and value.strip().lower() in ("", "off", "forever", "never"):
        return None
    return parse_duration(value)


def parse_optional_duration(value: Any) -> float | None:
    """A duration, or empty for "as long as the flows"."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_duration(value)


def parse_mode(value: Any) -> Mode | None:
    """``monitor`` or ``enforce``; empty means "as the policy file says"."""
    text = parse_str(value).lower()
    if not text:
        return None
    try:
        return Mode(text)
    except ValueError:
        raise ValueError(f"expected 'monitor' or 'enforce', got {value!r}") from None


def parse_proxy_mode(value: Any) -> str:
    """A mitmproxy mode spec: regular, transparent, wireguard[:CONF], upstream:URL, socks5."""
    text = parse_str(value) or "regular"
    from mitmproxy.proxy.mode_specs import ProxyMode

    try:
        mode = ProxyMode.parse(text)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a proxy mode: {e}") from None
    allowed = ("regular", "transparent", "wireguard", "upstream", "socks5", "reverse")
    if mode.type_name not in allowed:
        raise ValueError(
            f"mode {mode.type_name!r} is not supported; use one of {', '.join(allowed)}"
        )
    if "@" in text:
        raise ValueError("give the listen address in proxy.listen, not in the mode")
    return text


def parse_webhook_format(value: Any) -> str:
    text = parse_str(value).lower()
    if text not in ("json", "slack"):
        raise ValueError(f"expected 'json' or 'slack', got {value!r}")
    return text


def parse_url_or_empty(value: Any) -> str | None:
    text = parse_str(value)
    if text and not re.match(r"^https?://", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text or None


def list_of(item: Parser) -> Parser:
    """A TOML array (or a comma-separated string from the environment) of ``item`` values."""

    def parse(value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected an array, got {_tomltype(value)}")
        out = []
        for i, v in enumerate(value):
            try:
                parsed = item(v)
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
            if parsed is not None:
                out.append(parsed)
        return tuple(out)

    return parse


def parse_host_pattern(value: Any) -> str:
    from egresswatch.proxy_options import parse_passthrough

    return parse_passthrough([parse_str(value)])[0]


def parse_interface(value: Any) -> str:
    # IFNAMSIZ is 16 bytes with the terminating NUL (linux/if.h).
    text = parse_str(value)
    if not text or len(text) > 15 or "/" in text or any(c.isspace() for c in text):
        raise ValueError(f"{value!r} is not a network interface name")
    return text


def parse_bpf(value: Any) -> str | None:
    text = parse_str(value)
    if not text:
        return None
    from egresswatch.sniffer.capture import check_bpf

    check_bpf(text)  # raises ValueError: libpcap's own message
    return text


def _tomltype(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# -- the settings table --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its TOML key (``section.key``), parser, default, flag and env name."""

    key: str
    parse: Parser
    default: Any
    help: str
    #: command-line flag without dashes; booleans get ``--flag/--no-flag``
    flag: str
    env_name: str = ""
    is_bool: bool = False
    multiple: bool = False
    #: a one-letter flag as well (``-i``)
    short: str = ""

    @property
    def env(self) -> str:
        return self.env_name or "EGRESSWATCH_" + self.key.replace(".", "_").upper()


def _f(key: str, parse: Parser, default: Any, help: str, flag: str, **kw: Any) -> Field:
    return Field(key, parse, default, help, flag, **kw)


FIELDS: tuple[Field, ...] = (
    _f(
        "sensor.name",
        parse_optional_str,
        None,
        "This sensor's name in records and metrics (default: the host name).",
        "sensor-name",
        env_name="EGRESSWATCH_SENSOR",
    ),
    # proxy
    _f("proxy.enabled", parse_bool, True, "Run the inline proxy sensor.", "proxy", is_bool=True),
    _f(
        "proxy.mode",
        parse_proxy_mode,
        "regular",
        "mitmproxy mode: regular (clients set HTTPS_PROXY), transparent (gateway, "
        "nftables redirect; see 'egresswatch gateway'), wireguard, upstream:URL, socks5.",
        "proxy-mode",
    ),
    _f(
        "proxy.listen",
        parse_host_port,
        ("127.0.0.1", 8080),
        "Proxy listen address. Loopback by default: elsewhere, other machines can use it.",
        "listen",
    ),
    _f(
        "proxy.dns_listen",
        parse_optional_host_port,
        None,
        "Serve DNS here, UDP and TCP ('gateway setup --dns --dns-port PORT' sends the LAN's "
        "DNS to PORT): NXDOMAIN for Firefox's DoH canary, names learned for addresses. Off.",
        "dns-listen",
    ),
    _f(
        "proxy.confdir",
        parse_path,
        Path("~/.mitmproxy"),
        "mitmproxy's directory: the CA certificate and key live here.",
        "confdir",
    ),
    _f(
        "proxy.passthrough",
        list_of(parse_host_pattern),
        (),
        "Hosts relayed without TLS interception (pinning); still judged by SNI.",
        "passthrough",
        multiple=True,
    ),
    _f(
        "proxy.allow_quic",
        parse_bool,
        False,
        "Let QUIC (UDP/443) through uninspected (default: refused, clients fall back to TCP).",
        "allow-quic",
        is_bool=True,
    ),
    _f(
        "proxy.process_lookup",
        parse_bool,
        True,
        "Attribute local clients to a process (reads /proc).",
        "process-lookup",
        is_bool=True,
    ),
    _f(
        "proxy.upstream_ca",
        parse_existing_file,
        None,
        "Trust this CA (PEM) for upstream servers, verification stays on (labs).",
        "upstream-ca",
    ),
    _f(
        "proxy.body_limit",
        parse_size,
        256 * 1024,
        "Request body bytes held for classification (65536, 256k, 1m).",
        "body-limit",
    ),
    # sniffer
    _f(
        "sniffer.interfaces",
        list_of(parse_interface),
        (),
        "Capture passively on these interfaces (needs root or CAP_NET_RAW). Repeatable.",
        "interface",
        multiple=True,
        short="-i",
    ),
    _f(
        "sniffer.bpf",
        parse_bpf,
        None,
        "BPF filter for the sniffer (default: every TCP segment and UDP datagram but QUIC "
        "short headers).",
        "bpf",
    ),
    _f(
        "sniffer.idle_timeout",
        parse_positive_float,
        120.0,
        "Finish a sniffed TCP flow after this many idle seconds.",
        "idle-timeout",
    ),
    _f(
        "sniffer.max_flows",
        parse_count,
        100_000,
        "Sniffed flows tracked at once; the oldest is evicted beyond this.",
        "max-flows",
    ),
    # policy and catalog
    _f(
        "policy.file",
        parse_existing_file,
        None,
        "Policy TOML (default: the shipped policy, monitor mode).",
        "policy",
        env_name="EGRESSWATCH_POLICY",
    ),
    _f("policy.mode", parse_mode, None, "Override the policy's mode: monitor or enforce.", "mode"),
    _f(
        "policy.catalogs",
        list_of(parse_existing_file),
        (),
        "Extra service catalog TOML files. Repeatable.",
        "catalog",
        multiple=True,
    ),
    # GeoIP
    _f(
        "geoip.dir",
        parse_path,
        None,
        "Folder searched for *.mmdb GeoIP databases.",
        "geoip-dir",
        env_name="EGRESSWATCH_GEOIP_DIR",
    ),
    _f(
        "geoip.country_db",
        parse_existing_file,
        None,
        "MaxMind-format country database.",
        "country-db",
    ),
    _f("geoip.asn_db", parse_existing_file, None, "MaxMind-format ASN database.", "asn-db"),
    _f(
        "geoip.overrides",
        parse_existing_file,
        None,
        "Lab overrides CSV (CIDR,country-or-label), consulted first.",
        "geo-overrides",
    ),
    # store
    _f(
        "store.enabled",
        parse_bool,
        True,
        "Record decisions in the database.",
        "store",
        is_bool=True,
    ),
    _f(
        "store.url",
        parse_optional_str,
        None,
        "Database URL (sqlite:///FILE or postgresql+psycopg://...). Default: the SQLite "
        "file in $XDG_DATA_HOME/egresswatch.",
        "db",
        env_name="EGRESSWATCH_DB",
    ),
    _f(
        "store.spill",
        parse_path,
        None,
        "Spill journal used while the database is unreachable.",
        "spill",
    ),
    _f(
        "store.process",
        parse_bool_or_auto,
        AUTO,
        "Write the database from a child process, so SQL never holds the sensor's "
        'interpreter lock (false: from a thread of the sensor; "auto", the default: '
        "a child only when the sensor may use more than one CPU).",
        "store-process",
        is_bool=True,
    ),
    _f(
        "store.retention",
        parse_retention,
        30 * 86400.0,
        "Keep flows (and their findings and alerts) this long: 30d, 12h; 'off' keeps them "
        "forever. The running monitor prunes hourly.",
        "retention",
    ),
    _f(
        "store.findings_retention",
        parse_optional_duration,
        None,
        "Keep findings (redacted) this long, at most as long as flows (default: as flows).",
        "findings-retention",
    ),
    _f(
        "store.raw_bodies",
        parse_size,
        0,
        "Opt-in: keep the first SIZE bytes of each request body raw (4k, 64k); these are "
        "real prompts and secrets. 0, the default, never stores a body byte.",
        "raw-bodies",
    ),
    _f(
        "store.raw_body_retention",
        parse_duration,
        86400.0,
        "Keep raw body excerpts this long (default 1d; never longer than flows).",
        "raw-body-retention",
    ),
    # metrics
    _f("metrics.enabled", parse_bool, True, "Serve Prometheus /metrics.", "metrics", is_bool=True),
    _f(
        "metrics.listen",
        parse_host_port,
        ("127.0.0.1", 9721),
        "Where /metrics listens (loopback by default).",
        "metrics-listen",
    ),
    # alerts
    _f(
        "alerts.log",
        parse_path,
        None,
        "Alert log (JSON lines). Default with no channel: beside the database.",
        "alert-log",
    ),
    _f("alerts.webhook", parse_url_or_empty, None, "POST alerts to this URL.", "alert-webhook"),
    _f(
        "alerts.webhook_format",
        parse_webhook_format,
        "json",
        "Webhook body: json or slack.",
        "alert-webhook-format",
    ),
    _f("alerts.syslog", parse_bool, False, "Send alerts to syslog.", "alert-syslog", is_bool=True),
    # the run itself
    _f(
        "run.pid_file",
        parse_path,
        None,
        "PID file (default: egresswatch.pid in $XDG_DATA_HOME/egresswatch).",
        "pid-file",
    ),
    _f(
        "run.shutdown_grace",
        parse_positive_float,
        10.0,
        "Seconds SIGTERM waits for in-flight requests before closing.",
        "shutdown-grace",
    ),
    _f(
        "run.restarts",
        parse_count,
        5,
        "Times a failed sniffer is restarted (per 5 minutes) before the monitor exits.",
        "restarts",
    ),
)

BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}
SECTIONS = sorted({f.key.split(".")[0] for f in FIELDS})


# -- locating keys in a TOML file (tomllib gives values, not lines) -------------------------

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


def locate(text: str, section: str | None, key: str | None = None) -> int | None:
    """The 1-based line of ``[section]`` (or of ``key`` in it; section None: top level)."""
    current: str | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line)
        if m:
            current = m.group(1).replace('"', "").replace("'", "").strip()
            if key is None and current == section:
                return n
            continue
        if key is not None and current == section:
            k = _KEY.match(line)
            if k and k.group(1).strip("\"'") == key:
                return n
    return None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- the loaded configuration --------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Every setting of ``egresswatch run``, with where each value came from."""

    values: Mapping[str, Any]
    #: key -> "default", "PATH:LINE", "env NAME" or "flag --NAME"
    origins: Mapping[str, str]
    path: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def settings(self) -> Any:
        """The ``runtime.Settings`` every sensor shares."""
        from egresswatch.runtime import Settings

        v = self.values
        extra: dict[str, Any] = {}
        if v["sensor.name"]:
            extra["sensor_name"] = v["sensor.name"]
        return Settings(
            policy=v["policy.file"],
            mode=v["policy.mode"],
            catalogs=tuple(v["policy.catalogs"]),
            geoip_dir=v["geoip.dir"],
            country_db=v["geoip.country_db"],
            asn_db=v["geoip.asn_db"],
            geo_overrides=v["geoip.overrides"],
            db_url=v["store.url"],
            store=v["store.enabled"],
            spill_path=v["store.spill"],
            store_process=None if v["store.process"] == AUTO else v["store.process"],
            retention=self.retention(),
            raw_bodies=v["store.raw_bodies"],
            metrics_listen=v["metrics.listen"] if v["metrics.enabled"] else None,
            body_limit=v["proxy.body_limit"],
            alert_log=v["alerts.log"],
            alert_webhook=v["alerts.webhook"],
            alert_webhook_format=v["alerts.webhook_format"],
            alert_syslog=v["alerts.syslog"],
            **extra,
        )

    def retention(self) -> Any:
        """The store's ``Retention`` from ``store.retention``, ``store.findings_retention``
        and ``store.raw_body_retention`` (DNS answers: the default 7 days)."""
        from egresswatch.store.retention import Retention

        v = self.values
        return Retention(
            flows=v["store.retention"],
            findings=v["store.findings_retention"],
            excerpts=v["store.raw_body_retention"],
        )

    def pid_file(self) -> Path:
        """Where the running monitor writes its pid (``status`` reads it)."""
        return self.values["run.pid_file"] or default_pid_file()

    def as_toml(self) -> str:
        """The effective configuration as a TOML file, each value with its origin."""
        lines: list[str] = []
        for section in SECTIONS:
            lines.append(f"[{section}]")
            for f in FIELDS:
                sec, key = f.key.split(".")
                if sec != section:
                    continue
                lines.append(f"{key} = {_toml_value(self.values[f.key])}  # {self.origins[f.key]}")
            lines.append("")
        return "\n".join(lines)


def default_pid_file() -> Path:
    """``$XDG_DATA_HOME/egresswatch/egresswatch.pid`` (next to the default database)."""
    from egresswatch.store.engine import data_dir

    return data_dir() / "egresswatch.pid"


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mode):
        return f'"{value.value}"'
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], int)
        and isinstance(value[0], str)
        and not isinstance(value[0], Path)
    ):
        host = f"[{value[0]}]" if ":" in value[0] else value[0]
        return f'"{host}:{value[1]}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    import json

    return json.dumps(str(value))


def find_config(flag: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file: ``--config``, else ``$EGRESSWATCH_CONFIG``, else none (defaults)."""
    env = os.environ if env is None else env
    if flag is not None:
        return flag
    raw = env.get(CONFIG_ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def load(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Defaults, then ``path``, then ``env`` (default ``os.environ``), then ``flags``.

    ``flags`` maps field keys to already-parsed values (the click types parse them).
    Raises ConfigError naming the file and line, or the environment variable.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {f.key: f.default for f in FIELDS}
    origins: dict[str, str] = {f.key: "default" for f in FIELDS}
    if path is not None:
        _apply_file(path, values, origins)
    for f in FIELDS:
        raw = env.get(f.env)
        if raw is None or (raw.strip() == "" and f.key != "sensor.name"):
            continue
        try:
            values[f.key] = f.parse(raw)
        except ValueError as e:
            raise ConfigError(f"environment variable {f.env}: {e}", field=f.key) from None
        origins[f.key] = f"env {f.env}"
    for key, value in (flags or {}).items():
        f = BY_KEY[key]
        values[key] = value
        origins[key] = f"flag --{f.flag}"
    return RunConfig(values, origins, path)


def _apply_file(path: Path, values: dict[str, Any], origins: dict[str, str]) -> None:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such config file", path=name) from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError("the config file is not UTF-8 text", path=name, line=line) from None
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e}", path=name) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(
            f"not valid TOML: {str(e).split(' (at line')[0]}",
            path=name,
            # no "line N": tomllib says "(at end of document)": name the last line with text
            line=int(m.group(1)) if m else len(text.rstrip().splitlines()) or 1,
        ) from None
    token = _BASE.set(path.parent)
    try:
        _apply_doc(doc, text, name, values, origins)
    finally:
        _BASE.reset(token)


def _apply_doc(
    doc: dict[str, Any], text: str, name: str, values: dict[str, Any], origins: dict[str, str]
) -> None:
    for section, table in doc.items():
        if section not in SECTIONS:
            line = locate(text, section) or locate(text, None, section)
            raise ConfigError(
                "unknown section"
                + _did_you_mean(section, SECTIONS)
                + f"; sections: {', '.join(SECTIONS)}",
                path=name,
                line=line,
                field=section,
            )
        if not isinstance(table, dict):
            raise ConfigError(
                f"expected a table [{section}], got {_tomltype(table)}",
                path=name,
                line=locate(text, None, section),
                field=section,
            )
        keys = [f.key.split(".")[1] for f in FIELDS if f.key.startswith(section + ".")]
        for key, raw in table.items():
            dotted = f"{section}.{key}"
            line = locate(text, section, key)
            f = BY_KEY.get(dotted)
            if f is None:
                raise ConfigError(
                    "unknown setting"
                    + _did_you_mean(key, keys)
                    + f"; [{section}] has "
                    + ", ".join(keys),
                    path=name,
                    line=line,
                    field=dotted,
                )
            try:
                values[dotted] = f.parse(raw)
            except ValueError as e:
                raise ConfigError(str(e), path=name, line=line, field=dotted) from None
            origins[dotted] = f"{name}:{line}" if line else name

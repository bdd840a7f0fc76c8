"""``egresswatch proxy``: run mitmproxy with the egresswatch addon (the inline sensor).

mitmproxy runs embedded in this process rather than as a ``mitmdump`` child, with
only the mitmproxy addons a sensor needs (:mod:`egresswatch.mitmmaster`): the
inspector and sinks are built, and configuration errors reported, before any port
is opened; one process owns the metrics registry and the store writer; and
``egresswatch run`` can call :func:`run_proxy` with parts it built itself.
``mitmdump -s addons/egresswatch.py`` remains the way to add the addon to an existing
mitmproxy setup, with all of mitmproxy's addons.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from egresswatch.commands._storeopts import Duration
from egresswatch.commands.common import HostPortType
from egresswatch.errors import EgressWatchError
from egresswatch.model import Mode
from egresswatch.proxy_options import STORE_PROCESS
from egresswatch.runtime import Settings, writer_description

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
#: where mitmproxy keeps its CA unless told otherwise (mitmproxy docs, "Certificates")
DEFAULT_CONFDIR = Path("~/.mitmproxy")
CA_FILE = "mitmproxy-ca-cert.pem"


class ProxyError(EgressWatchError):
    """mitmproxy could not start or stopped with an error."""

    exit_code = 4


class ProxyModeType(click.ParamType):
    """A mitmproxy mode: regular, transparent, wireguard[:CONF], upstream:URL, socks5 ..."""

    name = "mode"
    ALLOWED = ("regular", "transparent", "wireguard", "upstream", "socks5", "reverse")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from mitmproxy.proxy.mode_specs import ProxyMode

        text = str(value)
        try:
            mode = ProxyMode.parse(text)
        except ValueError as e:
            self.fail(f"{text!r} is not a proxy mode: {e}", param, ctx)
        if mode.type_name not in self.ALLOWED:
            self.fail(
                f"mode {mode.type_name!r} is not supported here; use one of "
                f"{', '.join(self.ALLOWED)}",
                param,
                ctx,
            )
        if "@" in text:
            self.fail("give the listen address with --listen, not in the mode", param, ctx)
        return text


class ListenType(HostPortType):
    """HOST:PORT, or ``*:PORT`` for every address of both families (mitmproxy's empty host)."""

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        text = str(value) if not isinstance(value, tuple) else ""
        if text.startswith("*:"):
            _, port = super().convert("0.0.0.0:" + text[2:], param, ctx)
            return "", port
        return super().convert(value, param, ctx)


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from egresswatch.proxy_options import parse_size

        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class HostPatternType(click.ParamType):
    name = "host"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from egresswatch.proxy_options import parse_passthrough

        try:
            return parse_passthrough([str(value)])[0]
        except ValueError as e:
            self.fail(str(e), param, ctx)


class MitmOptionType(click.ParamType):
    """NAME=VALUE for a mitmproxy option, as ``mitmdump --set``."""

    name = "name=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, val = str(value).partition("=")
        if not sep or not name.strip():
            self.fail(f"{value!r} is not NAME=VALUE (example: ssl_insecure=false)", param, ctx)
        return name.strip(), val


@dataclass(frozen=True)
class ProxyConfig:
    """Everything :func:`run_proxy` needs; built by the command, or by ``egresswatch run``."""

    settings: Settings
    mode: str = "regular"
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    #: also serve DNS here (mitmproxy's dns mode; None: no DNS listener)
    dns_listen: tuple[str, int] | None = None
    confdir: Path = DEFAULT_CONFDIR
    passthrough: tuple[str, ...] = ()
    allow_quic: bool = False
    process_lookup: bool = True
    #: bodies above this many bytes are streamed (their head judged) instead of buffered
    stream_above: int = 16 * 1024 * 1024
    #: trust this CA (PEM) for upstream servers, keeping verification on (test labs)
    upstream_ca: Path | None = None
    #: raw mitmproxy options (``--set NAME=VALUE``), applied last
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: print mitmproxy's own log lines (connection errors ...) on stderr
    verbose: bool = False


def ensure_ca(confdir: Path) -> Path:
    """Create mitmproxy's CA in ``confdir`` if missing; return the certificate clients trust."""
    from mitmproxy import certs

    confdir = confdir.expanduser()
    try:
        certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    except (OSError, ValueError) as e:
        raise ProxyError(f"cannot create or read the CA in {confdir}: {e}") from e
    return confdir / CA_FILE


def trust_hints(ca: Path, listen: tuple[str, int], mode: str) -> list[str]:
    """How clients trust the CA and reach the proxy, for people reading the console."""
    host, port = listen
    host = host or "127.0.0.1"
    proxy_url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    lines = [
        f"CA certificate: {ca}",
        "Python clients (openai, httpx, requests, huggingface_hub):",
        f"  export SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca}",
        f"curl: --cacert {ca}    Node: NODE_EXTRA_CA_CERTS={ca}",
        f"System-wide (Debian): cp {ca} /usr/local/share/ca-certificates/egresswatch.crt"
        " && update-ca-certificates",
    ]
    if mode == "regular":
        lines.insert(1, f"Proxy: export HTTPS_PROXY={proxy_url} HTTP_PROXY={proxy_url}")
    elif mode == "transparent":
        lines.insert(
            1, "Transparent: redirect client traffic to this port (docs/proxy.md, nftables)."
        )
    return lines


def build_master(config: ProxyConfig, inspector: Any = None, sinks: Any = None) -> Any:
    """A mitmproxy master with the egresswatch addon, options set, not yet running.

    The master has mitmproxy's addons that a sensor needs (:mod:`egresswatch.mitmmaster`),
    not mitmdump's full set.

    ``inspector`` and ``sinks`` are built from ``config.settings`` when not given.
    Must be called with an event loop running (mitmproxy binds its master to it).
    """
    from mitmproxy import exceptions, options

    from egresswatch.mitmmaster import sensor_master
    from egresswatch.proxy import EgressWatch, install_doh_canary

    if inspector is None or sinks is None:
        inspector, sinks = build_parts(config.settings)
    opts = options.Options()
    master = sensor_master(opts, verbose=config.verbose)
    addon = EgressWatch(inspector, sinks)
    master.addons.add(addon)
    if config.dns_listen is not None:
        install_doh_canary(master)
    values: dict[str, Any] = {
        "mode": [config.mode] + ([dns_mode(config.dns_listen)] if config.dns_listen else []),
        "listen_host": config.listen[0],
        "listen_port": config.listen[1],
        "confdir": str(config.confdir.expanduser()),
        "egresswatch_body_limit": str(config.settings.body_limit),
        "egresswatch_allow_quic": config.allow_quic,
        "egresswatch_passthrough": list(config.passthrough),
        "egresswatch_process_lookup": config.process_lookup,
        "egresswatch_stream_above": str(config.stream_above),
    }
    if config.settings.mode is Mode.ENFORCE or _policy_mode(inspector) is Mode.ENFORCE:
        values["connection_strategy"] = "lazy"
    if config.upstream_ca is not None:
        values["ssl_verify_upstream_trusted_ca"] = str(config.upstream_ca)
    try:
        # Options defined by addons exist only once the master has its addons (lab-notes.md).
        opts.update(**values)
        for name, value in config.extra:
            _set_extra(opts, name, value)
    except (exceptions.OptionsError, KeyError) as e:
        sinks.close()
        raise ProxyError(f"bad mitmproxy option: {e}") from e
    return master


def _set_extra(opts: Any, name: str, value: str) -> None:
    """``--set NAME=VALUE``; an option of an addon the sensor leaves out says so."""
    from mitmproxy import exceptions

    from egresswatch.mitmmaster import left_out_option

    if name not in opts and left_out_option(name):
        raise exceptions.OptionsError(
            f"{name} belongs to a mitmproxy addon that egresswatch proxy does not load: "
            "it leaves out the ones that rewrite, replay or save traffic, or serve "
            "mitmproxy's console (docs/proxy.md). To use it, run mitmdump -s "
            "addons/egresswatch.py with the same option"
        )
    opts.set(f"{name}={value}")


def dns_mode(listen: tuple[str, int]) -> str:
    """mitmproxy's mode spec for a DNS listener on ``listen`` (``dns@HOST:PORT``)."""
    host, port = listen
    return f"dns@{host}:{port}" if ":" not in host else f"dns@[{host}]:{port}"


def build_parts(settings: Settings) -> tuple[Any, Any]:
    """The inspector and sinks for ``settings`` (raises EgressWatchError subclasses)."""
    from prometheus_client import CollectorRegistry

    from egresswatch import runtime

    inspector = runtime.build_inspector(settings)
    return inspector, runtime.build_sinks(settings, CollectorRegistry(), inspector)


def _policy_mode(inspector: Any) -> Mode | None:
    mode = getattr(getattr(inspector, "policy", None), "mode", None)
    return mode if isinstance(mode, Mode) else None


def run_proxy(config: ProxyConfig, inspector: Any = None, sinks: Any = None) -> None:
    """Run mitmproxy with the addon until interrupted. Raises ProxyError if it cannot run."""

    async def main() -> None:
        master = build_master(config, inspector, sinks)
        loop = asyncio.get_running_loop()
        # SIGTERM (systemd, docker stop) and SIGINT stop mitmproxy the orderly way: its
        # "done" hooks run, so the store writer flushes what it still holds.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        await master.run()

    try:
        asyncio.run(main())
    except SystemExit as e:  # mitmproxy's errorcheck exits on start-up errors (port in use ...)
        if e.code not in (0, None):
            raise ProxyError(
                f"mitmproxy could not start in mode {config.mode} on "
                f"{config.listen[0]}:{config.listen[1]} (see the messages above)"
            ) from e
    except KeyboardInterrupt:
        pass


def _policy_mode_flag(enforce: bool | None) -> Mode | None:
    if enforce is None:
        return None
    return Mode.ENFORCE if enforce else Mode.MONITOR


def _retention(flows: float) -> Any:
    """The store's default retention with the flows age of ``--retention``."""
    import dataclasses

    from egresswatch.store.retention import Retention

    return dataclasses.replace(Retention(), flows=flows)


@click.command("proxy")
@click.option(
    "--mode",
    "proxy_mode",
    type=ProxyModeType(),
    default="regular",
    show_default=True,
    help="mitmproxy mode: regular (clients set HTTPS_PROXY), transparent (traffic "
    "redirected by nftables on a gateway), wireguard, upstream:URL, socks5.",
)
@click.option(
    "--listen",
    type=ListenType(),
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to listen on; *:PORT for every IPv4 and IPv6 address (transparent "
    "gateways). Loopback by default: binding elsewhere makes the proxy usable by other machines.",
)
@click.option(
    "--policy",
    type=_existing_file,
    envvar="EGRESSWATCH_POLICY",
    help="Policy TOML file (default: the shipped policy). Env: EGRESSWATCH_POLICY.",
)
@click.option(
    "--enforce/--monitor",
    "enforce",
    default=None,
    help="Override the policy's mode: --enforce blocks (and makes mitmproxy connect "
    "upstream only after a verdict), --monitor records would-blocks.",
)
@click.option(
    "--catalog",
    "catalogs",
    type=_existing_file,
    multiple=True,
    help="Extra service catalog TOML. Repeatable.",
)
@click.option(
    "--geoip-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EGRESSWATCH_GEOIP_DIR",
    help="Folder with *.mmdb GeoIP databases.",
)
@click.option("--country-db", type=_existing_file, help="MaxMind-format country database.")
@click.option("--asn-db", type=_existing_file, help="MaxMind-format ASN database.")
@click.option(
    "--geo-overrides",
    type=_existing_file,
    help="Lab overrides CSV (CIDR,country-or-label), consulted first.",
)
@click.option(
    "--db",
    "db_url",
    envvar="EGRESSWATCH_DB",
    help="Database URL (sqlite:///FILE or postgresql+psycopg://...). Default: the "
    "SQLite file in the data directory. Env: EGRESSWATCH_DB.",
)
@click.option("--no-store", is_flag=True, help="Record nothing in the database.")
@click.option(
    "--store-process",
    type=click.Choice(list(STORE_PROCESS)),
    default="auto",
    show_default=True,
    help="Write the database from a child process (true) or a thread of the proxy "
    "(false). auto: a child only when the proxy may use more than one CPU (its affinity "
    "and cgroup CPU quota); on one CPU a thread costs less.",
)
@click.option(
    "--metrics-listen",
    type=HostPortType(),
    default="127.0.0.1:9721",
    show_default=True,
    help="Serve Prometheus /metrics here (loopback by default).",
)
@click.option("--no-metrics", is_flag=True, help="Do not serve /metrics.")
@click.option(
    "--dns-listen",
    type=HostPortType(),
    default=None,
    help="Also serve DNS (UDP and TCP) here, e.g. 127.0.0.1:5353: the Firefox DoH canary "
    "gets NXDOMAIN, and names learned from answers label later connections by address "
    "(see 'egresswatch gateway setup --dns'). Off by default.",
)
@click.option(
    "--sensor-name", help="This sensor's name in records and metrics (default: host name)."
)
@click.option(
    "--body-limit",
    type=SizeType(),
    default="256k",
    show_default=True,
    help="Request body bytes held for classification; larger uploads are streamed "
    "after their first BODY-LIMIT bytes are judged.",
)
@click.option(
    "--stream-above",
    type=SizeType(),
    default="16m",
    show_default=True,
    help="Bodies larger than this are streamed instead of held in memory; only their "
    "first BODY-LIMIT bytes are held back until judged (the request line has left by then).",
)
@click.option(
    "--raw-bodies",
    type=SizeType(),
    default="0",
    metavar="SIZE",
    help="OPT-IN: store the first SIZE bytes of each request body raw (4k, 64k; at most "
    "BODY-LIMIT), kept 1 day; see 'egresswatch db excerpt'. These are real prompts and "
    "secrets. Default 0: no body byte is stored.",
)
@click.option(
    "--retention",
    type=Duration(),
    default="30d",
    show_default=True,
    metavar="DURATION",
    help="Keep recorded flows this long; the proxy prunes older rows hourly.",
)
@click.option(
    "--passthrough",
    multiple=True,
    type=HostPatternType(),
    help="Host relayed without TLS interception (certificate pinning); still judged "
    "and recorded by SNI and address. Repeatable.",
)
@click.option(
    "--allow-quic",
    is_flag=True,
    help="Let QUIC (UDP/443) through uninspected (default: refused, so clients fall back to TCP).",
)
@click.option(
    "--no-process-lookup",
    is_flag=True,
    help="Do not attribute local clients to a process (skips reading /proc).",
)
@click.option(
    "--confdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_CONFDIR),
    show_default=True,
    help="mitmproxy's directory: its CA certificate and key live here.",
)
@click.option(
    "--upstream-ca",
    type=_existing_file,
    help="Trust this CA for upstream servers (keeps verification on; for labs).",
)
@click.option(
    "--set",
    "extra",
    type=MitmOptionType(),
    multiple=True,
    help="Any mitmproxy option, as with mitmdump --set NAME=VALUE. Repeatable.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show mitmproxy's own log.")
def proxy(**params: Any) -> None:
    """Run the inline sensor: mitmproxy with egresswatch judging every flow.

    Each flow is judged at the earliest point with enough information (TLS
    ClientHello, request headers, request body, WebSocket message). In enforce
    mode a blocked request gets HTTP 451 with a JSON reason and the server never
    sees it. Decisions go to the database and /metrics.

    \b
    Examples:
      egresswatch proxy
      egresswatch proxy --policy lab.toml --enforce --db sqlite:///flows.db
      egresswatch proxy --mode transparent --listen '*:8080'
    """
    if params["stream_above"] < params["body_limit"]:
        raise click.BadParameter("must not be below --body-limit", param_hint="'--stream-above'")
    settings = Settings(
        policy=params["policy"],
        mode=_policy_mode_flag(params["enforce"]),
        catalogs=tuple(params["catalogs"]),
        geoip_dir=params["geoip_dir"],
        country_db=params["country_db"],
        asn_db=params["asn_db"],
        geo_overrides=params["geo_overrides"],
        db_url=params["db_url"],
        store=not params["no_store"],
        store_process=STORE_PROCESS[params["store_process"]],
        metrics_listen=None if params["no_metrics"] else params["metrics_listen"],
        body_limit=params["body_limit"],
        retention=_retention(params["retention"]),
        raw_bodies=params["raw_bodies"],
        **({"sensor_name": params["sensor_name"]} if params["sensor_name"] else {}),
    )
    config = ProxyConfig(
        settings=settings,
        mode=params["proxy_mode"],
        listen=params["listen"],
        dns_listen=params["dns_listen"],
        confdir=params["confdir"],
        passthrough=tuple(params["passthrough"]),
        allow_quic=params["allow_quic"],
        process_lookup=not params["no_process_lookup"],
        stream_above=params["stream_above"],
        upstream_ca=params["upstream_ca"],
        extra=tuple(params["extra"]),
        verbose=params["verbose"],
    )
    inspector, sinks = build_parts(settings)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    ca = ensure_ca(config.confdir)
    mode = _policy_mode(inspector)
    console.print(
        f"egresswatch proxy: {config.mode} on {config.listen[0]}:{config.listen[1]}, "
        f"policy mode {mode or 'unknown'}"
        + (
            " (connection_strategy=lazy: no upstream contact before a verdict)"
            if mode is Mode.ENFORCE
            else ""
        )
    )
    for line in trust_hints(ca, config.listen, config.mode.split(":")[0]):
        console.print(line)
    writer = getattr(sinks, "writer", None)
    if writer is not None:
        console.print(f"Store: {writer_description(writer, settings)}")
    if settings.store and settings.raw_bodies:
        console.print(
            f"Raw bodies: the first {settings.raw_bodies} bytes of each request body are "
            "stored (opt-in, --raw-bodies); they hold real prompts and secrets"
        )
    if settings.metrics_listen:
        console.print(
            f"Metrics: http://{settings.metrics_listen[0]}:{settings.metrics_listen[1]}/metrics"
        )
    if config.dns_listen is not None:
        console.print(
            f"DNS: serving on {config.dns_listen[0]}:{config.dns_listen[1]} (UDP and TCP; "
            "DoH canary answered NXDOMAIN)"
        )
    with contextlib.suppress(KeyboardInterrupt):
        run_proxy(config, inspector, sinks)

"""``egresswatch sniff``: passive capture, live on interfaces or offline from a pcap/pcapng file.

The command parses flags, builds the inspector and a :class:`Sniffer`, and hands
it to a packet source; it prints one line (or one JSON object) per finished flow
and the sniffer's own counters at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from egresswatch.commands.common import HostPortType, inspector_options, settings_from
from egresswatch.errors import EgressWatchError
from egresswatch.ports import Sink
from egresswatch.runtime import Settings
from egresswatch.sniffer import Sniffer, SnifferConfig
from egresswatch.sniffer.capture import DEFAULT_BPF, LiveCapture, check_bpf, run_file
from egresswatch.sniffer.engine import InspectFn
from egresswatch.sniffer.flows import FlowSummary


class BpfType(click.ParamType):
    """A BPF filter expression, compiled by libpcap so a typo is a usage error."""

    name = "bpf"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text:
            self.fail("the BPF expression is empty", param, ctx)
        try:
            check_bpf(text)
        except ValueError as e:
            self.fail(f"{text!r} is not a valid BPF filter: {e}", param, ctx)
        return text


class PositiveFloat(click.ParamType):
    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if v <= 0:
            self.fail("must be greater than 0", param, ctx)
        return v


@click.command()
@click.option(
    "-r",
    "--read",
    "read_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read packets from a pcap or pcapng file instead of capturing live.",
)
@click.option(
    "-i",
    "--interface",
    "interfaces",
    multiple=True,
    metavar="IFACE",
    help="Capture live on this interface (repeatable). Needs root or CAP_NET_RAW only; "
    "nothing is ever sent. On a gateway, use the client-facing side(s): capturing both "
    "sides of a NAT sees every flow twice.",
)
@click.option(
    "--bpf",
    type=BpfType(),
    help="BPF filter for live capture. Default: every TCP segment (multi-segment "
    "ClientHellos need them all) and every UDP datagram except QUIC short-header "
    "packets on port 443, which carry no names. Use 'tcp or udp' for exact QUIC byte counts.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finished flow.")
@click.option(
    "--no-judge",
    is_flag=True,
    help="Only extract flows and names; do not load GeoIP/catalog/policy or judge flows.",
)
@click.option("--duration", type=PositiveFloat(), help="Live: stop after this many seconds.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many packets.")
@click.option(
    "--idle-timeout",
    type=PositiveFloat(),
    default=120.0,
    show_default=True,
    help="Finish a TCP flow after this many seconds without packets.",
)
@click.option(
    "--max-flows",
    type=click.IntRange(min=16),
    default=100_000,
    show_default=True,
    help="Flows tracked at once; the oldest is evicted (and counted) beyond this.",
)
@click.option(
    "--record/--no-record",
    default=None,
    help="Hand decisions to the store, alerts and metrics (the sinks of 'egresswatch run'). "
    "Default: on for live capture, off for -r.",
)
@click.option(
    "--db",
    "db_url",
    envvar="EGRESSWATCH_DB",
    metavar="URL",
    help="SQLAlchemy URL of the store with --record (default: the local SQLite file). "
    "Env: EGRESSWATCH_DB.",
)
@click.option(
    "--metrics-listen",
    type=HostPortType(),
    help="With --record, serve /metrics on HOST:PORT (off unless given).",
)
@inspector_options
def sniff(**params: Any) -> None:
    """Watch flows passively and judge each one by its names.

    Names come from DNS answers seen earlier (address -> name, with TTLs), TLS and
    QUIC ClientHellos (SNI, ALPN, Encrypted Client Hello) and plain HTTP requests
    (Host, method, path, body start). DNS over TLS (port 853) and DNS over HTTPS
    to known resolvers are marked. The sniffer cannot block: it is the witness
    for traffic that goes around the proxy.

    \b
    Examples:
      egresswatch sniff -r capture.pcapng --json
      egresswatch sniff -i veth-gw -i veth-gw6 --duration 60
    """
    read_path: Path | None = params["read_path"]
    interfaces: tuple[str, ...] = params["interfaces"]
    if bool(read_path) == bool(interfaces):
        raise click.UsageError("give either -r FILE or at least one -i IFACE")
    if read_path and params["bpf"]:
        raise click.UsageError("--bpf applies to live capture; filter a file with tshark first")
    if read_path and params["duration"]:
        raise click.UsageError("--duration applies to live capture")
    record = params["record"] if params["record"] is not None else not read_path
    if record and params["no_judge"]:
        if params["record"]:
            raise click.UsageError("--record needs judging: drop --no-judge")
        record = False
    settings = settings_from(
        params, db_url=params["db_url"], metrics_listen=params["metrics_listen"]
    )
    inspect = None if params["no_judge"] else _inspector(settings)
    sinks = _sinks(settings, inspect) if record else None
    out = _Printer(params["as_json"])
    config = SnifferConfig(idle_timeout=params["idle_timeout"], max_flows=params["max_flows"])
    sniffer = Sniffer(inspect, sinks, config=config, on_flow_end=out.flow)
    try:
        if read_path:
            run_file(sniffer, read_path, limit=params["count"])
        else:
            _live(sniffer, list(interfaces), params["bpf"] or DEFAULT_BPF, params)
    finally:
        if sinks is not None:
            sinks.close()
    out.finish(sniffer)


def _inspector(settings: Settings) -> InspectFn:
    from egresswatch.runtime import build_inspector

    try:
        return build_inspector(settings).inspect
    except EgressWatchError:
        raise
    except (OSError, ValueError) as e:  # a data file the loaders did not wrap
        raise EgressWatchError(f"cannot load the inspector's data: {e}") from e


def _sinks(settings: Settings, inspect: InspectFn | None) -> Sink:
    from prometheus_client import CollectorRegistry

    from egresswatch.runtime import build_sinks

    inspector = getattr(inspect, "__self__", None)
    return build_sinks(settings, CollectorRegistry(), inspector)


def _live(sniffer: Sniffer, interfaces: list[str], bpf: str, params: dict[str, Any]) -> None:
    cap = LiveCapture(sniffer, interfaces, bpf)
    cap.open()
    click.echo(
        f"egresswatch: capturing on {', '.join(interfaces)}"
        + (" (default filter)" if bpf == DEFAULT_BPF else f" (filter: {bpf})"),
        err=True,
    )
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: cap.stop())
    try:
        cap.run(duration=params["duration"], count=params["count"])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        cap.close()
        sniffer.close()


class _Printer:
    """Prints finished flows: JSON lines, or a table at the end for humans."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rows: list[FlowSummary] = []
        self.broken = False
        # piped output is not cut at rich's 80-column default
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

    def flow(self, summary: FlowSummary) -> None:
        if self.as_json:
            if self.broken:
                return
            try:
                sys.stdout.write(json.dumps(summary.to_dict()) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # the reader went away (| head): stop printing, keep counting quietly
                self.broken = True
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
        else:
            self.rows.append(summary)

    def finish(self, sniffer: Sniffer) -> None:
        st = sniffer.stats
        if not self.as_json:
            self._table()
        bad = sum(st.malformed.values())
        line = (
            f"{st.packets} packets, {st.flows_created} flows, {bad} malformed"
            + (f" ({', '.join(f'{k}: {v}' for k, v in st.malformed.most_common())})" if bad else "")
            + f", {st.evictions} evicted"
        )
        if st.kernel_packets or st.kernel_drops:
            line += f", kernel: {st.kernel_packets} received, {st.kernel_drops} dropped"
        if st.inspector_errors:
            line += f", {st.inspector_errors} inspector errors"
        click.echo(line, err=True)

    def _table(self) -> None:
        table = Table(box=None, pad_edge=False)
        for col in ("client", "server", "proto", "names", "out/in bytes", "verdict"):
            table.add_column(col, overflow="fold")
        for s in self.rows:
            names = "\n".join(f"{n} ({src})" for n, src in s.names) or "-"
            extra = []
            if s.ech:
                extra.append("ECH")
            if s.encrypted_dns:
                extra.append(s.encrypted_dns.upper())
            if extra:
                names += " [" + ",".join(extra) + "]"
            verdict = s.decision.verdict.label if s.decision else "-"
            table.add_row(
                escape(f"{s.client_addr}:{s.client_port}"),
                escape(f"{s.server_addr}:{s.server_port}"),
                f"{s.transport}/{s.protocol}",
                escape(names),
                f"{s.bytes_out}/{s.bytes_in}",
                verdict,
            )
        self.console.print(table)

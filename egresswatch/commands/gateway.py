"""``egresswatch gateway setup|teardown|show``: turn this machine into a lab gateway.

Parses flags into a :class:`~egresswatch.gateway.GatewayPlan` and calls one
function of :mod:`egresswatch.gateway`; ``--dry-run`` prints the commands and
the nftables ruleset instead of running them (no root needed).
"""

from __future__ import annotations

import os
from typing import Any

import click
from rich.console import Console

from egresswatch import gateway as gw
from egresswatch.config import parse_interface


class InterfaceType(click.ParamType):
    """A network interface name (at most 15 characters, no spaces or slashes)."""

    name = "iface"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_interface(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class TableType(click.ParamType):
    """An nftables table name: letters, digits and underscores (nft(8) identifiers)."""

    name = "table"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text or not text[0].isalpha() or not all(c.isalnum() or c == "_" for c in text):
            self.fail(f"{text!r} is not a table name (letters, digits, _)", param, ctx)
        return text


_port = click.IntRange(1, 65535)
_table_option = click.option(
    "--table",
    type=TableType(),
    default=gw.TABLE,
    show_default=True,
    help="Our nftables table (inet family). One per gateway instance.",
)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise gw.GatewayError(
            "changing forwarding and nftables needs root (CAP_NET_ADMIN); "
            "use --dry-run to see what would be done"
        )


@click.group("gateway")
def gateway() -> None:
    """Send a LAN's web traffic through the transparent proxy (nftables).

    egresswatch keeps its rules in one table of its own (inet egresswatch):
    setup replaces it atomically and can be run again; teardown is one
    'nft delete table'. Run the proxy in transparent mode listening on the
    LAN side, e.g. 'egresswatch run --proxy-mode transparent --listen 0.0.0.0:8080'.
    """


@gateway.command("setup")
@click.option("--lan", required=True, type=InterfaceType(), help="Interface facing the clients.")
@click.option(
    "--proxy-port",
    type=_port,
    default=8080,
    show_default=True,
    help="Port of the transparent proxy on this gateway.",
)
@click.option(
    "--block-quic",
    is_flag=True,
    help="Drop UDP/443 from the LAN: QUIC cannot be inspected, clients fall back to TCP.",
)
@click.option(
    "--dns",
    is_flag=True,
    help="Redirect the LAN's DNS (UDP/TCP 53, any resolver) to this gateway.",
)
@click.option(
    "--dns-port",
    type=_port,
    default=gw.DNS_PORT,
    show_default=True,
    help="Port of the resolver on this gateway that --dns sends queries to.",
)
@click.option("--no-ipv6", is_flag=True, help="Do not turn on IPv6 forwarding.")
@_table_option
@click.option("--dry-run", is_flag=True, help="Print the commands and ruleset; change nothing.")
def setup(**p: Any) -> None:
    """Turn on IP forwarding and load the redirect rules.

    \b
    Examples:
      egresswatch gateway setup --lan eth1 --block-quic --dry-run
      egresswatch gateway setup --lan eth1 --proxy-port 8080 --block-quic --dns
    """
    plan = gw.GatewayPlan(
        lan=p["lan"],
        proxy_port=p["proxy_port"],
        block_quic=p["block_quic"],
        dns=p["dns"],
        dns_port=p["dns_port"],
        ipv6=not p["no_ipv6"] and gw.ipv6_available(),
        table=p["table"],
    )
    if p["dry_run"]:
        for cmd in gw.setup_commands(plan):
            click.echo(str(cmd))
        return
    _require_root()
    gw.setup(plan)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"egresswatch gateway: table {gw.FAMILY} {plan.table} loaded")
    for line in gw.describe(plan):
        console.print(f"  {line}")
    console.print(
        f"  proxy: egresswatch run --proxy-mode transparent --listen 0.0.0.0:{plan.proxy_port}"
    )


@gateway.command("teardown")
@_table_option
@click.option("--dry-run", is_flag=True, help="Print the command; change nothing.")
def teardown(table: str, dry_run: bool) -> None:
    """Remove the rules: one 'nft delete table'. IP forwarding is left as it is."""
    if dry_run:
        click.echo(str(gw.teardown_command(table)))
        return
    _require_root()
    removed = gw.teardown(table)
    click.echo(
        f"egresswatch gateway: table {gw.FAMILY} {table} "
        + ("deleted" if removed else "was not loaded; nothing to do"),
        err=True,
    )


@gateway.command("show")
@_table_option
def show(table: str) -> None:
    """Print the loaded table (exit 1 if it is not loaded)."""
    text = gw.current(table)
    if text is None:
        click.echo(f"egresswatch gateway: table {gw.FAMILY} {table} is not loaded", err=True)
        raise SystemExit(1)
    click.echo(text, nl=False)

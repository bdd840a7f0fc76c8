"""``egresswatch flows``: list recorded decisions with filters, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from collections.abc import Iterable
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egresswatch.commands._storeopts import db_option, with_filter
from egresswatch.store import FlowFilter, FlowRow, open_store, query_flows

#: verdict -> rich style, the same colours in flows and tail
VERDICT_STYLE = {"allow": "green", "alert": "yellow", "block": "bold red", "would-block": "red"}


def iso(ts: float | None) -> str | None:
    """UNIX seconds -> ISO 8601 UTC with milliseconds (for JSON and CSV)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def local_time(ts: float) -> str:
    """UNIX seconds -> local ``YYYY-MM-DD HH:MM:SS`` (for people)."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def destination(row: FlowRow) -> str:
    """``host:port`` (or ``address:port`` when no name is known)."""
    name = row.host or row.sni or row.http_host or row.dns_name or row.dst_addr or "?"
    if ":" in name and not name.startswith("["):  # an IPv6 literal
        name = f"[{name}]"
    return f"{name}:{row.dst_port}" if row.dst_port is not None else name


def human_bytes(n: int) -> str:
    """1536 -> ``1.5 KiB`` (IEC binary prefixes)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def row_json(row: FlowRow) -> dict[str, Any]:
    """A flow row for JSON output: every column, plus ``time`` in ISO 8601 UTC."""
    d = row.as_dict()
    d["time"] = iso(row.ts)
    d["closed_time"] = iso(row.closed_ts)
    return d


def flows_table(rows: Iterable[FlowRow], title: str | None = None) -> Table:
    """The rich table ``egresswatch flows`` prints: one line per flow."""
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("time", no_wrap=True)
    table.add_column("client", no_wrap=True)
    table.add_column("destination", overflow="fold", min_width=16)
    table.add_column("ctry", no_wrap=True)
    table.add_column("service (operator)", overflow="fold")
    table.add_column("payload", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    table.add_column("rule", overflow="fold")
    table.add_column("out", justify="right", no_wrap=True)
    for r in rows:
        service = r.service_name or r.service_id or "-"
        if r.operator_country:
            service += f" ({r.operator_country})"
        if r.service_match == "lookalike":
            service += " lookalike"
        table.add_row(
            local_time(r.ts)[5:],  # MM-DD HH:MM:SS
            r.client_addr or "?",
            destination(r),
            r.country,
            service,
            ",".join(r.payload_types) or "-",
            Text(r.verdict, style=VERDICT_STYLE.get(r.verdict, "")),
            r.rule or "-",
            human_bytes(r.bytes_out),
        )
    return table


def console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when piped."""
    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=160)
    return c


CSV_COLUMNS = ["time", *FlowRow.__dataclass_fields__]


def write_csv(rows: Iterable[FlowRow], out: Any) -> None:
    """CSV with a header; multi-valued columns joined with ``;``."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        d = row_json(r)
        d["payload_types"] = ";".join(r.payload_types)
        d["flags"] = ";".join(r.flags)
        writer.writerow(["" if d.get(c) is None else d[c] for c in CSV_COLUMNS])


def show_flows(db: str | None, flt: FlowFilter, limit: int | None, fmt: str) -> int:
    """Query and print; returns the number of rows shown."""
    store = open_store(db, must_exist=True)
    try:
        rows = query_flows(store, flt, limit)
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps([row_json(r) for r in rows], indent=2, ensure_ascii=False))
    elif fmt == "csv":
        write_csv(rows, sys.stdout)
    else:
        out = console()
        if not rows:
            out.print("no flows match", style="dim")
        else:
            out.print(flows_table(rows))
            if limit is not None and len(rows) == limit:
                out.print(f"(newest {limit} shown; --limit N or --all for more)", style="dim")
    return len(rows)


@click.command("flows")
@db_option
@with_filter
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many flows, newest first.",
)
@click.option("--all", "all_rows", is_flag=True, help="Show every matching flow (no limit).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table for people; json or csv for programs.",
)
def flows(db: str | None, flt: FlowFilter, limit: int, all_rows: bool, fmt: str) -> None:
    """List recorded flows, newest first.

    Filters combine with AND; a repeated flag means any of its values
    (--country CN --country HK). Times: a duration ago (24h, 30d, 90m) or an
    ISO 8601 time. Paths are shown as stored: query-string values redacted.

    \b
    Examples:
      egresswatch flows --since 24h --country CN
      egresswatch flows --verdict block --verdict would-block --format json
      egresswatch flows --service deepseek --type chat-prompt --format csv > out.csv
    """
    show_flows(db, flt, None if all_rows else limit, fmt)

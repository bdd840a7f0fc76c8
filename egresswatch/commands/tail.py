"""``egresswatch tail``: follow new decisions as the sensors record them."""

from __future__ import annotations

import dataclasses
import json
import time

import click
from rich.console import Console
from rich.text import Text

from egresswatch.commands._storeopts import Duration, db_option, with_filter
from egresswatch.commands.flows import VERDICT_STYLE, destination, human_bytes, local_time, row_json
from egresswatch.errors import StoreError
from egresswatch.store import FlowFilter, FlowRow, Store, latest_flow_id, open_store, query_flows

#: rows read per poll at most; more simply wait for the next poll
PAGE = 1000


def line(row: FlowRow) -> Text:
    """One decision as one line: time, verdict, client, destination, where, what, rule."""
    t = Text()
    t.append(local_time(row.ts)[11:] + " ", style="dim")
    t.append(f"{row.verdict:<11}", style=VERDICT_STYLE.get(row.verdict, ""))
    t.append(f" {row.client_addr or '?'}")
    if row.client_app:
        t.append(f" ({row.client_app[:24]})", style="dim")
    t.append(f" -> {destination(row)} {row.country}")
    if row.service_id:
        svc = row.service_name or row.service_id
        t.append(f" {svc}" + (f"/{row.operator_country}" if row.operator_country else ""))
    if row.payload_types:
        t.append(" [" + ",".join(row.payload_types) + "]")
    t.append(f" {human_bytes(row.bytes_out)} out", style="dim")
    if row.rule:
        t.append(f" rule={row.rule}", style="dim")
    return t


def follow(
    store: Store,
    flt: FlowFilter,
    backlog: int,
    interval: float,
    fmt: str,
    max_rows: int | None = None,
) -> int:
    """Print the last ``backlog`` matching rows, then new ones every ``interval`` seconds.

    Rows are followed by their id (insertion order). Returns after ``max_rows``
    rows, or never (Ctrl-C).
    """
    console = Console(highlight=False)
    shown = 0

    def emit(rows: list[FlowRow]) -> bool:
        nonlocal shown
        for r in rows:
            if fmt == "json":
                click.echo(json.dumps(row_json(r), ensure_ascii=False), nl=True)
            else:
                console.print(line(r), soft_wrap=True)
            shown += 1
            if max_rows is not None and shown >= max_rows:
                return True
        return False

    last = latest_flow_id(store)
    if backlog:
        recent = query_flows(store, dataclasses.replace(flt, after_id=None), backlog)
        if emit(list(reversed(recent))):
            return shown
    while True:
        time.sleep(interval)
        try:
            # read the top id first: every matching row up to it is in this page unless
            # the page is full, so "last" can jump past rows the filter skips
            top = latest_flow_id(store)
            rows = query_flows(
                store, dataclasses.replace(flt, after_id=last), PAGE, newest_first=False
            )
        except StoreError as e:  # the database restarting: say so, keep following
            console.print(f"(waiting for the database: {e})", style="dim")
            continue
        last = rows[-1].id if len(rows) == PAGE else max(top, rows[-1].id if rows else last)
        if emit(rows):
            return shown


@click.command("tail")
@db_option
@with_filter
@click.option(
    "-n",
    "--lines",
    "backlog",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="First show this many recent matching decisions.",
)
@click.option(
    "--interval",
    type=Duration(),
    default="1s",
    show_default=True,
    help="How often to look for new decisions (0.5s, 2s ...).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["line", "json"]),
    default="line",
    show_default=True,
    help="line for people; json: one JSON object per line.",
)
@click.option(
    "--max",
    "max_rows",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many decisions (for scripts).",
)
def tail(
    db: str | None, flt: FlowFilter, backlog: int, interval: float, fmt: str, max_rows: int | None
) -> None:
    """Follow new decisions live, like tail -f. Ctrl-C stops.

    Takes the same filters as `egresswatch flows`.

    \b
    Examples:
      egresswatch tail --verdict block --verdict would-block
      egresswatch tail --country CN --format json | jq .host
    """
    store = open_store(db, must_exist=True)
    try:
        follow(store, flt, backlog, interval, fmt, max_rows)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()

"""``egresswatch db``: upgrade the schema, show what is stored, prune old rows, show an
opted-in raw body excerpt."""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from egresswatch.commands._storeopts import Duration, db_option
from egresswatch.commands.flows import human_bytes, iso
from egresswatch.errors import EgressWatchError
from egresswatch.store import open_store
from egresswatch.store.engine import default_url, display_url, normalise_url
from egresswatch.store.retention import prune as prune_rows


@click.group("db")
def db() -> None:
    """Database upkeep: migrate, inspect, prune.

    The database is a SQLite file by default, or PostgreSQL for a central
    store of several sensors (--db postgresql+psycopg://USER@HOST:PORT/DB).
    """


@db.command("upgrade")
@db_option
def upgrade(db: str | None) -> None:
    """Create the database or migrate it to this version's schema.

    Migrations only add or alter; they never drop recorded data. Every
    command that opens the database does this too; run it explicitly to
    migrate a central PostgreSQL store before upgrading the sensors.
    """
    store = open_store(db, migrate=False)
    try:
        before, after = store.upgrade()
    finally:
        store.close()
    shown = display_url(normalise_url(db) if db else default_url())
    if before == after:
        click.echo(f"{shown}: already at revision {after}")
    else:
        click.echo(f"{shown}: revision {before or '(empty)'} -> {after}")


@db.command("info")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(db: str | None, as_json: bool) -> None:
    """Show where the database is, its schema revision and what it holds."""
    store = open_store(db, must_exist=True)
    try:
        facts = store.info()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(asdict(facts), indent=2))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("database", facts.url),
        ("engine", facts.dialect),
        ("revision", f"{facts.revision} (head {facts.head})"),
        ("flows", f"{facts.flows:,}"),
        ("findings", f"{facts.findings:,}"),
        ("alerts", f"{facts.alerts:,}"),
        ("dns answers", f"{facts.dns_answers:,}"),
        ("oldest flow", iso(facts.oldest) or "-"),
        ("newest flow", iso(facts.newest) or "-"),
    ]
    if facts.size_bytes is not None:
        rows.append(("size on disk", human_bytes(facts.size_bytes)))
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


@db.command("prune")
@db_option
@click.option(
    "--older-than",
    "older_than",
    type=Duration(),
    required=True,
    metavar="DURATION",
    help="Delete flows (and their findings and alerts) older than this: 30d, 12w, 90m.",
)
@click.option(
    "--findings-older-than",
    type=Duration(),
    metavar="DURATION",
    help="Delete findings sooner than flows (they are the more sensitive part).",
)
@click.option(
    "--dns-older-than",
    type=Duration(),
    metavar="DURATION",
    help="Delete DNS answers older than this (default: keep them as long as flows).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def prune(
    db: str | None,
    older_than: float,
    findings_older_than: float | None,
    dns_older_than: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete recorded rows older than a given age.

    \b
    Examples:
      egresswatch db prune --older-than 30d
      egresswatch db prune --older-than 90d --findings-older-than 7d --dry-run
    """
    store = open_store(db, must_exist=True)
    try:
        result = prune_rows(
            store,
            older_than,
            findings_older_than,
            None,
            dns_older_than if dns_older_than is not None else older_than,
            dry_run=dry_run,
        )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb}: {result.flows} flows, {result.findings} findings, "
        f"{result.alerts} alerts, {result.dns_answers} DNS answers, "
        f"{result.excerpts} raw body excerpts"
    )


class NoExcerptError(EgressWatchError):
    """No raw body excerpt is stored for that decision."""

    exit_code = 3


RAW_WARNING = (
    "warning: this is RAW request data (prompts, credentials, personal data may be in it); "
    "it is stored only because store.raw_bodies is on"
)


@db.command("excerpt")
@db_option
@click.argument("decision_id")
@click.option("--raw", is_flag=True, help="Write the stored bytes to stdout exactly as kept.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (body in base64).")
def excerpt(db: str | None, decision_id: str, raw: bool, as_json: bool) -> None:
    """Print the raw body excerpt kept for DECISION_ID (see 'egresswatch flows').

    Excerpts exist only when the sensor ran with store.raw_bodies above zero (an
    explicit opt-in) and only for their retention (store.raw_body_retention, 1
    day by default). The bytes are as the client sent them, before any content
    decoding (a gzip body stays gzip). A warning goes to stderr, since this is
    the one place egresswatch shows raw data.

    \b
    Examples:
      egresswatch db excerpt 0f3c9a...
      egresswatch db excerpt 0f3c9a... --raw > body.bin
    """
    from sqlalchemy import select

    from egresswatch.store.schema import PAYLOAD_EXCERPTS, PayloadExcerptRow

    store = open_store(db, must_exist=True)
    try:
        with store.connect() as conn:
            row = conn.execute(
                select(PAYLOAD_EXCERPTS).where(PayloadExcerptRow.decision_id == decision_id)
            ).first()
            if row is None:
                raise NoExcerptError(
                    f"no raw body excerpt for decision {decision_id!r} (raw bodies are kept only "
                    "with store.raw_bodies on, and only for store.raw_body_retention)"
                )
            body, truncated = bytes(row.body), row.truncated
            meta = {
                "decision_id": row.decision_id,
                "time": iso(row.ts),
                "sensor": row.sensor,
                "content_type": row.content_type,
                "content_encoding": row.content_encoding,
                "bytes": len(body),
                "truncated": truncated,
            }
    finally:
        store.close()
    click.echo(RAW_WARNING, err=True)
    if raw:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return
    if as_json:
        click.echo(json.dumps({**meta, "body_base64": base64.b64encode(body).decode("ascii")}))
        return
    for key, value in meta.items():
        if value is not None:
            click.echo(f"{key}: {value}")
    click.echo("")
    # undecodable bytes shown as \xNN escapes, so a binary body cannot drive the terminal
    text = body.decode("utf-8", errors="backslashreplace")
    click.echo("".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text))
    if truncated:
        click.echo("... (truncated)")

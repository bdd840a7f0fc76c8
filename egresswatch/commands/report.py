"""``egresswatch report``: egress by service, country, payload type and verdict for a period."""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from egresswatch.errors import EgressWatchError, StoreError

#: unit suffix -> seconds, for --since/--until durations ("90m", "24h", "7d", "2w")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
FORMATS = ("text", "markdown", "json", "html")


class TimeType(click.ParamType):
    """A point in time: a duration ago (``24h``, ``7d``), an ISO date/time (UTC unless
    it carries an offset), a UNIX timestamp, or ``all`` (no bound)."""

    name = "time"

    def __init__(self, now: float | None = None) -> None:
        self._now = now

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float | None:
        if value is None or isinstance(value, float):
            return value
        text = str(value).strip()
        if text.lower() in ("all", "ever"):
            return None
        now = time.time() if self._now is None else self._now
        m = _DURATION.match(text.lower())
        if m:
            return now - float(m.group(1)) * UNITS[m.group(2)]
        if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
            return float(text)
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is not a time: use a duration ago (30m, 24h, 7d, 2w), "
                "an ISO date or time (2026-11-28, 2026-11-28T09:00), a UNIX time, or 'all'",
                param,
                ctx,
            )
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()


def _check_sqlite_exists(db: str | None) -> None:
    """A report on a database that does not exist yet is a mistake, not an empty report."""
    from sqlalchemy.engine import make_url

    from egresswatch.store.engine import default_url, normalise_url

    url = normalise_url(db) if db else default_url()
    try:
        parsed = make_url(url)
    except Exception:
        return  # open_store gives the clear message
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if not path.exists():
            raise StoreError(
                f"no database at {path}: run the proxy or sniffer first, "
                "or point --db / $EGRESSWATCH_DB at one"
            )


@click.command("report")
@click.option(
    "--since",
    type=TimeType(),
    default="24h",
    show_default=True,
    help="Start of the period: a duration ago (30m, 24h, 7d, 2w), an ISO date/time "
    "(UTC unless it has an offset), a UNIX time, or 'all'.",
)
@click.option(
    "--until",
    type=TimeType(),
    default=None,
    help="End of the period (same forms as --since; default: now).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: tables for the terminal; markdown: for tickets and wikis; json: for "
    "machines; html: one self-contained file with charts (no network needed to view it).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file (created 0600: a report names clients) instead of stdout.",
)
@click.option(
    "--db",
    envvar="EGRESSWATCH_DB",
    metavar="URL",
    help="Database: a SQLite file or a postgresql+psycopg:// URL. "
    "Default: $EGRESSWATCH_DB or ~/.local/share/egresswatch/egresswatch.db.",
)
def report(
    since: float | None, until: float | None, fmt: str, output: Path | None, db: str | None
) -> None:
    """Summarise egress for a period: by service × country × payload type × verdict,
    top clients, findings by kind and alerts.

    \b
    Examples:
      egresswatch report                          # the last 24 hours, as tables
      egresswatch report --since 7d --format markdown
      egresswatch report --since 2026-11-01 --until 2026-12-01 --format html -o nov.html
    """
    from egresswatch.report import (
        build_report,
        render_html,
        render_json,
        render_markdown,
        render_text,
        renderables,
    )
    from egresswatch.store import open_store

    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be before --until")
    _check_sqlite_exists(db)
    store = open_store(db)
    try:
        rep = build_report(store, since, until)
    finally:
        store.close()

    if fmt == "text" and output is None and sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        for part in renderables(rep):
            console.print(part)
        return
    renderer = {
        "text": render_text,
        "markdown": render_markdown,
        "json": render_json,
        "html": render_html,
    }[fmt]
    text = renderer(rep)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise EgressWatchError(f"cannot write {output}: {e.strerror}") from e
    click.echo(f"wrote {output} ({fmt}, {rep.totals.flows} flows)", err=True)

"""Click parameter types and options shared by the commands that read the store.

``flows``, ``tail``, ``db`` and ``report`` use them, so ``--since 24h`` or
``--country cn`` mean the same everywhere and a bad value is an ordinary usage
error (exit 2) raised from ``ParamType.convert``, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Callable
from typing import Any

import click

from egresswatch.model import PayloadType
from egresswatch.store.queries import FlowFilter

#: seconds per unit; "w" because retention is often said in weeks
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_ONLY = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")

VERDICTS = ("allow", "alert", "block", "would-block")


def parse_duration(value: str) -> float:
    """``"90m"`` -> 5400.0; ``"1h30m"`` works too. Raises ValueError."""
    text = value.strip().lower()
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(
            f"{value!r} is not a duration: a number and a unit s, m, h, d or w (24h, 30d, 1h30m)"
        )
    if total <= 0:
        raise ValueError(f"{value!r}: a duration must be longer than zero")
    return total


def parse_time(value: str, now: float | None = None) -> float:
    """A duration ago (``24h``) or an ISO 8601 date/time -> UNIX seconds. Raises ValueError.

    A date or time without an offset is local time, like ``date`` shows it.
    """
    text = value.strip()
    if _DURATION_ONLY.fullmatch(text.lower()):  # a duration: its own error if any
        return (time.time() if now is None else now) - parse_duration(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (24h, 30d, 90m) nor an ISO 8601 time "
            "(2026-11-28, 2026-11-28T14:00, 2026-11-28T14:00Z)"
        ) from None
    return when.timestamp()  # naive -> local time (datetime.timestamp semantics)


class Duration(click.ParamType):
    """A length of time: ``24h``, ``30d``, ``90m``, ``45s``, ``2w``, ``1h30m`` -> seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class TimeSpec(click.ParamType):
    """A point in time: a duration ago (``24h``) or an ISO 8601 date/time -> UNIX seconds."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_time(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class CountryCode(click.ParamType):
    """An ISO 3166-1 alpha-2 code (``ZZ`` = unknown), case-insensitive."""

    name = "country"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().upper()
        if not re.fullmatch(r"[A-Z]{2}", text):
            self.fail(
                f"{value!r} is not a two-letter country code (CN, US, DE; ZZ = unknown)", param, ctx
            )
        return text


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--db URL``: a SQLAlchemy URL or a SQLite file path; env ``EGRESSWATCH_DB``."""
    return click.option(
        "--db",
        "db",
        envvar="EGRESSWATCH_DB",
        metavar="URL",
        help=(
            "Database: a SQLite file path or URL, or postgresql+psycopg://USER@HOST:PORT/DB. "
            "Default: $EGRESSWATCH_DB, else $XDG_DATA_HOME/egresswatch/egresswatch.db."
        ),
    )(f)


_FILTER_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option(
        "--since",
        type=TimeSpec(),
        metavar="WHEN",
        help="Only flows at or after WHEN: a duration ago (24h, 30d, 90m) or ISO time.",
    ),
    click.option(
        "--until",
        type=TimeSpec(),
        metavar="WHEN",
        help="Only flows before WHEN (same forms as --since).",
    ),
    click.option(
        "--country",
        "countries",
        type=CountryCode(),
        multiple=True,
        help="Destination address country (repeatable; ZZ = unknown).",
    ),
    click.option(
        "--operator-country",
        "operator_countries",
        type=CountryCode(),
        multiple=True,
        help="Legal home of the service's operator (repeatable).",
    ),
    click.option(
        "--service",
        "services",
        multiple=True,
        metavar="ID|NAME",
        help="Catalog service id or name (repeatable; 'none' = no catalogued service).",
    ),
    click.option(
        "--type",
        "payload_types",
        type=click.Choice([p.value for p in PayloadType]),
        multiple=True,
        metavar="TYPE",
        help="Payload type (repeatable): " + ", ".join(p.value for p in PayloadType) + ".",
    ),
    click.option(
        "--verdict",
        "verdicts",
        type=click.Choice(VERDICTS),
        multiple=True,
        help="Verdict (repeatable).",
    ),
    click.option(
        "--client", "clients", multiple=True, metavar="ADDR", help="Client address (repeatable)."
    ),
    click.option(
        "--sensor",
        "sensors",
        multiple=True,
        metavar="NAME",
        help="Sensor kind (proxy, sniffer) or sensor node name (repeatable).",
    ),
]


def flow_filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The filter flags of ``egresswatch flows``; pair with :func:`build_filter`."""
    for option in reversed(_FILTER_OPTIONS):
        f = option(f)
    return f


def build_filter(**kw: Any) -> FlowFilter:
    """A :class:`FlowFilter` from the values of :func:`flow_filter_options`."""
    since, until = kw.get("since"), kw.get("until")
    if since is not None and until is not None and until <= since:
        raise click.UsageError("--until must be later than --since")
    return FlowFilter(
        since=since,
        until=until,
        countries=tuple(kw.get("countries") or ()),
        operator_countries=tuple(kw.get("operator_countries") or ()),
        services=tuple(kw.get("services") or ()),
        payload_types=tuple(kw.get("payload_types") or ()),
        verdicts=tuple(kw.get("verdicts") or ()),
        clients=tuple(kw.get("clients") or ()),
        sensors=tuple(kw.get("sensors") or ()),
    )


FILTER_KEYS = (
    "since",
    "until",
    "countries",
    "operator_countries",
    "services",
    "payload_types",
    "verdicts",
    "clients",
    "sensors",
)


def pop_filter(kwargs: dict[str, Any]) -> FlowFilter:
    """Remove the filter values from a command's kwargs and build the filter."""
    return build_filter(**{k: kwargs.pop(k, None) for k in FILTER_KEYS})


def with_filter(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: add the filter options and pass ``flt=FlowFilter(...)`` to the command."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, flt=pop_filter(kwargs), **kwargs)

    return flow_filter_options(wrapper)

"""``egresswatch policy``: check a policy file and show the effective policy.

``policy check FILE`` exits 0 when the file is valid and 3 (configuration error)
with one line naming the file, line and field when it is not; ``--json`` gives
machines the same answer on standard output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egresswatch.errors import ConfigError
from egresswatch.model import Mode
from egresswatch.policy import Policy

_policy_file = click.Path(exists=True, dir_okay=False, path_type=Path)

_ACTION_STYLE = {"allow": "green", "alert": "yellow", "block": "bold red"}


class ModeType(click.ParamType):
    """monitor | enforce."""

    name = "mode"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Mode:
        try:
            return Mode(str(value).lower())
        except ValueError:
            choices = ", ".join(m.value for m in Mode)
            self.fail(f"{value!r} is not a mode; choose from {choices}", param, ctx)


@click.group()
def policy() -> None:
    """Check a policy file and show the effective policy.

    A policy says which jurisdictions data may go to (address country and the
    operator's legal home), what unknown gets, and an ordered list of rules.
    See docs/policy.md, or start from the shipped example:
    egresswatch/data/policy-example.toml.
    """


@policy.command()
@click.argument("file", type=_policy_file)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option(
    "--catalog",
    "catalogs",
    type=_policy_file,
    multiple=True,
    metavar="FILE",
    help="A user catalog the policy is written for (repeatable), added to the shipped one "
    "when checking the rules' service ids and categories.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Treat service ids and categories the catalog does not know as errors (exit 3).",
)
def check(file: Path, as_json: bool, catalogs: tuple[Path, ...], strict: bool) -> None:
    """Validate FILE and summarise it.

    Rules that name a service id or category the catalog does not know are
    reported as warnings (they would never match); --strict makes them errors.

    Exit status: 0 when FILE is a valid policy; 3 when it is not, with a message
    naming the file, the line and the field to fix.
    """
    from egresswatch.catalog import CATEGORIES, Catalog

    try:
        loaded = Policy.load(file)
        catalog = Catalog.load(catalogs)
    except ConfigError as e:  # the policy or a --catalog file
        if not as_json:
            raise
        click.echo(json.dumps({"valid": False, "error": _error(e), "text": str(e)}, indent=2))
        raise SystemExit(e.exit_code) from None
    warnings = loaded.unknown_references(
        (s.id for s in catalog.services), [*CATEGORIES, *(s.category for s in catalog.services)]
    )
    failed = strict and bool(warnings)
    if as_json:
        out = {"valid": not failed, **loaded.summary(), "warnings": [_error(w) for w in warnings]}
        click.echo(json.dumps(out, indent=2))
        if failed:
            raise SystemExit(ConfigError.exit_code)
        return
    for warning in warnings:
        click.echo(f"egresswatch: {'error' if strict else 'warning'}: {warning}", err=True)
    if failed:
        raise ConfigError(
            f"{len(warnings)} rule reference(s) the catalog does not know (--strict)",
            path=str(file),
        )
    console = Console()
    summary = loaded.summary()
    console.print(
        Text.assemble(
            ("valid", "bold green"),
            f": {file} ({summary['mode']} mode, {_n(len(summary['rules']), 'rule')}, "
            f"{_n(len(summary['approved_countries']), 'approved country', 'approved countries')}"
            + (f", {_n(len(warnings), 'warning')}" if warnings else "")
            + ")",
        )
    )
    _render(console, summary)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def _error(e: ConfigError) -> dict[str, Any]:
    return {"path": e.path, "line": e.line, "field": e.field, "message": e.detail}


@policy.command()
@click.argument("file", type=_policy_file, required=False)
@click.option(
    "--mode",
    type=ModeType(),
    default=None,
    help="Show the policy as it would run with this mode (monitor or enforce).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def show(file: Path | None, mode: Mode | None, as_json: bool) -> None:
    """Show the effective policy: FILE, or the shipped default without FILE."""
    loaded = Policy.load(file) if file is not None else Policy.default()
    if mode is not None:
        loaded = loaded.with_mode(mode)
    summary = loaded.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _render(Console(), summary)


def _render(console: Console, summary: dict[str, Any]) -> None:
    """The summary as a settings table and a rules table."""
    head = Table(show_header=False, box=None, padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    mode = summary["mode"]
    head.add_row("source", str(summary["source"]))
    head.add_row(
        "mode",
        Text(mode, style="bold red" if mode == "enforce" else "cyan")
        + Text(
            "  (blocks stop flows)" if mode == "enforce" else "  (blocks recorded as would-block)",
            style="dim",
        ),
    )
    approved = ", ".join(summary["approved"]) or "none"
    head.add_row("approved", f"{approved}  ({len(summary['approved_countries'])} countries)")
    head.add_row("must be approved", " and ".join(summary["require"]) or "nothing")
    head.add_row("outside approved", _action(summary["outside"]))
    head.add_row("unknown address", _action(summary["unknown"]["address"]))
    head.add_row("unknown operator", _action(summary["unknown"]["operator"]))
    head.add_row("no rule, approved", _action(summary["default"]))
    for name, codes in summary["groups"].items():
        head.add_row(f"group {name}", ", ".join(codes))
    head.add_row("TLS pass-through", ", ".join(summary["passthrough_hosts"]) or "none")
    console.print(head)

    rules = Table(title="rules (first match wins)", title_justify="left")
    rules.add_column("#", justify="right")
    rules.add_column("name")
    rules.add_column("action")
    rules.add_column("matches", overflow="fold")
    rules.add_column("line", justify="right", style="dim")
    for number, rule in enumerate(summary["rules"], 1):
        match = "; ".join(f"{k}={_fmt(v)}" for k, v in rule["match"].items()) or "everything"
        rules.add_row(
            str(number),
            rule["name"],
            _action(rule["action"]),
            match,
            str(rule["line"] or ""),
        )
    if summary["rules"]:
        console.print(rules)
    else:
        console.print("[dim]no rules: the jurisdiction checks decide every flow[/dim]")


def _action(value: str) -> Text:
    return Text(value, style=_ACTION_STYLE.get(value, ""))


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

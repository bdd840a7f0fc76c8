"""``egresswatch catalog``: list the service catalog, match host names, check a user catalog.

``catalog list`` filters by category and operator country; ``catalog match``
says which service a host (or URL) belongs to, officially or as a lookalike;
``catalog check FILE`` validates a user catalog and says what it adds to and
overrides in the shipped one. Errors in catalog files exit 3 with one line
naming the file, line and field.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egresswatch.catalog import (
    CATEGORIES,
    ISO_COUNTRIES,
    Catalog,
    api_path_match,
    normalize_host,
    parse_catalog,
)
from egresswatch.errors import ConfigError
from egresswatch.model import Service, ServiceMatch

_catalog_file = click.Path(exists=True, dir_okay=False, path_type=Path)


class CategoryType(click.ParamType):
    """One of the catalog's fixed categories (docs/catalog.md)."""

    name = "category"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if text not in CATEGORIES:
            self.fail(
                f"{value!r} is not a category; choose from {', '.join(CATEGORIES)}", param, ctx
            )
        return text


class CountryType(click.ParamType):
    """An ISO 3166-1 alpha-2 country code, any case (``cn`` -> ``CN``)."""

    name = "CC"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().upper()
        if text not in ISO_COUNTRIES:
            self.fail(
                f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. CN, US)", param, ctx
            )
        return text


class HostType(click.ParamType):
    """A host name, address, HOST:PORT or URL; converted to (input, canonical host, URL path)."""

    name = "host"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str, str | None]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        candidate, path = text, None
        if "://" in text:
            try:
                url = urlsplit(text)
                candidate, path = url.netloc.rpartition("@")[2], url.path or "/"
            except ValueError:
                candidate = ""
        host = normalize_host(candidate)
        if host is None:
            self.fail(f"{text!r} is not a host name, address or URL", param, ctx)
        return text, host, path


@click.group()
@click.option(
    "--catalog",
    "catalogs",
    type=_catalog_file,
    multiple=True,
    help="Extra catalog TOML file: its entries add to the shipped ones, "
    "or replace those with the same id. Repeatable; later files win.",
)
@click.pass_context
def catalog(ctx: click.Context, catalogs: tuple[Path, ...]) -> None:
    """Show and check the service catalog.

    The catalog maps host names to AI services and telemetry endpoints and
    to the legal home of the company running each one (operator country),
    with the contracting entity and declared data residency where known.
    Fields marked with * are not verified against a primary source.
    See docs/catalog.md for the file format.
    """
    ctx.obj = catalogs


def _load(ctx: click.Context) -> Catalog:
    return Catalog.load(ctx.obj or ())


def _service_json(cat: Catalog, service: Service) -> dict[str, Any]:
    data = asdict(service)
    data["brand_labels"] = [b for b in service.brands if cat.is_label_brand(b)]
    data["brands"] = [b for b in service.brands if not cat.is_label_brand(b)]
    data["sources"] = list(cat.references(service.id))
    return data


def _mark(service: Service, field: str, value: str | None) -> str:
    if not value:
        return "-"
    return f"{value}*" if field in service.unverified else value


@catalog.command("list")
@click.option("--category", type=CategoryType(), help="Only this category (e.g. chat-api).")
@click.option(
    "--country", type=CountryType(), help="Only services whose operator is based in this country."
)
@click.option("--json", "as_json", is_flag=True, help="Print the services as JSON on stdout.")
@click.pass_context
def list_(ctx: click.Context, category: str | None, country: str | None, as_json: bool) -> None:
    """List catalogued services, optionally filtered.

    Columns: operator country (legal home of the operator), contracting entity's
    country, declared data residency, category and domains. A * marks a value
    not verified against a primary source.
    """
    cat = _load(ctx)
    services = [
        s
        for s in cat.services
        if (category is None or s.category == category)
        and (country is None or s.operator_country == country)
    ]
    if as_json:
        click.echo(json.dumps([_service_json(cat, s) for s in services], indent=2))
        return
    table = Table(title=f"{len(services)} of {len(cat.services)} services", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("category", overflow="fold")
    table.add_column("jurisdiction", overflow="fold")
    table.add_column("domains", overflow="fold")
    for s in services:
        where = _mark(s, "operator_country", s.operator_country)
        if s.contracting_country:
            where += " / entity " + _mark(s, "contracting_country", s.contracting_country)
        if s.residency:
            where += " / data " + _mark(s, "residency", s.residency)
        more = f" +{len(s.domains) - 3}" if len(s.domains) > 3 else ""
        table.add_row(s.id, s.category, where, _mark(s, "domains", ", ".join(s.domains[:3]) + more))
    Console().print(table)


def _match_json(
    text: str, host: str, path: str | None, found: ServiceMatch | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"input": text, "host": host, "kind": None, "matched": None}
    if found is None:
        return out
    s = found.service
    out.update(kind=str(found.kind), matched=found.matched, service=s.id, name=s.name)
    if found.official:
        out.update(
            api_path=api_path_match(s, path) if path else None,
            category=s.category,
            operator=s.operator,
            operator_country=s.operator_country,
            contracting_entity=s.contracting_entity,
            contracting_country=s.contracting_country,
            residency=s.residency,
            unverified=list(s.unverified),
        )
    else:
        # A lookalike is run by somebody else: the imitated service's operator
        # and country say nothing about it.
        out.update(category=None, operator=None, operator_country=None)
    return out


@catalog.command()
@click.argument("hosts", nargs=-1, required=True, type=HostType(), metavar="HOST...")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.pass_context
def match(
    ctx: click.Context, hosts: tuple[tuple[str, str, str | None], ...], as_json: bool
) -> None:
    """Say which service each HOST belongs to.

    HOST may be a name, a name with a port, or a URL (with --json, the
    catalogued API path a URL uses is shown too). 'official' means the
    host is one of the service's domains; 'lookalike' means it carries the
    service's brand or imitates its domain without being official (a
    different operator, whatever the page says). Exit status 0 either way.
    """
    cat = _load(ctx)
    results = [(text, host, path, cat.match(host)) for text, host, path in hosts]
    if as_json:
        click.echo(json.dumps([_match_json(*r) for r in results], indent=2))
        return
    table = Table()
    table.add_column("host", overflow="fold")
    for column in ("match", "service", "operator", "category"):
        table.add_column(column, no_wrap=True)
    table.add_column("matched", overflow="fold")
    for _, host, _, found in results:
        if found is None:
            table.add_row(host, Text("unknown", "dim"), "-", "-", "-", "-")
            continue
        s = found.service
        if found.official:
            kind = Text("official", "green")
            operator = _mark(s, "operator_country", s.operator_country)
            category = s.category
        else:
            kind = Text("lookalike", "bold red")
            operator, category = "not " + s.operator_country, "-"
        table.add_row(host, kind, s.id, operator, category, found.matched)
    Console().print(table)


@catalog.command()
@click.argument("service_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the service as JSON on stdout.")
@click.pass_context
def show(ctx: click.Context, service_id: str, as_json: bool) -> None:
    """Show everything the catalog says about one service, with its sources."""
    cat = _load(ctx)
    service = cat.get(service_id)
    if service is None:
        known = sorted(s.id for s in cat.services if service_id.lower() in s.id)
        hint = f"; did you mean {', '.join(known[:5])}?" if known else "; see 'catalog list'"
        raise click.BadParameter(f"no service {service_id!r}{hint}", param_hint="ID")
    data = _service_json(cat, service)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, title=f"{service.id}: {service.name}", title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if key in ("id", "name") or value in (None, [], ()):
            continue
        text = ", ".join(value) if isinstance(value, list | tuple) else str(value)
        table.add_row(key + ("*" if key in service.unverified else ""), text)
    Console().print(table)


@catalog.command()
@click.argument("file", type=_catalog_file)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def check(file: Path, as_json: bool) -> None:
    """Validate a user catalog FILE and summarise what it changes.

    Exit status: 0 when FILE is valid; 3 when it is not, with a message naming
    the file, the line and the field to fix.
    """
    try:
        text = file.read_text(encoding="utf-8")
        parsed = parse_catalog(text, str(file))
        merged = Catalog.load([file])
    except UnicodeDecodeError as e:
        error = ConfigError(f"not UTF-8 text: {e}", path=str(file))
        return _fail(error, as_json)
    except ConfigError as e:
        return _fail(e, as_json)
    shipped = Catalog.load()
    added = [s.id for s in parsed.services if shipped.get(s.id) is None]
    replaced = [s.id for s in parsed.services if shipped.get(s.id) is not None]
    taken: list[dict[str, str]] = []
    for service in parsed.services:
        for domain in service.domains:
            owner = next((s for s in shipped.services if domain in s.domains), None)
            if owner is not None and owner.id != service.id:
                taken.append({"domain": domain, "from": owner.id, "to": service.id})
    by_category: dict[str, int] = {}
    for service in parsed.services:
        by_category[service.category] = by_category.get(service.category, 0) + 1
    summary = {
        "valid": True,
        "path": str(file),
        "services": len(parsed.services),
        "added": added,
        "replaced": replaced,
        "domains_taken": taken,
        "categories": by_category,
        "lookalike_ignore": list(parsed.ignore),
        "total_after_merge": len(merged.services),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    console.print(
        Text.assemble(
            ("valid", "bold green"),
            f": {file} ({len(parsed.services)} services; {len(added)} new, "
            f"{len(replaced)} replacing shipped entries; {len(merged.services)} after merge)",
        )
    )
    if added:
        console.print("new: " + ", ".join(added))
    if replaced:
        console.print("replaces: " + ", ".join(replaced))
    for item in taken:
        console.print(f"domain {item['domain']} moves from {item['from']} to {item['to']}")
    return None


def _fail(error: ConfigError, as_json: bool) -> None:
    if not as_json:
        raise error
    detail = {"path": error.path, "line": error.line, "field": error.field, "message": error.detail}
    click.echo(json.dumps({"valid": False, "error": detail, "text": str(error)}, indent=2))
    raise SystemExit(error.exit_code)

"""``egresswatch geoip``: look up addresses, show the databases in use, build a database.

``lookup`` answers as the inspector would (same chain, same sources); ``info``
lists the files found and warns when one is older than 60 days; ``build``
turns a CSV of ranges into a MaxMind DB that every MaxMind reader accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egresswatch import geo
from egresswatch.errors import GeoIPError
from egresswatch.model import GeoAnswer, GeoSource

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)

_SOURCE_STYLE = {
    GeoSource.LOCAL: "dim",
    GeoSource.OVERRIDE: "magenta",
    GeoSource.MAXMIND: "green",
    GeoSource.REGISTRY: "cyan",
    GeoSource.NONE: "yellow",
}


class AddressType(click.ParamType):
    """An IPv4 or IPv6 address as sensors see it ([v6], zone ids and ::ffff:v4 accepted)."""

    name = "address"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if geo.parse_address(text) is None:
            self.fail(f"{value!r} is not an IPv4 or IPv6 address", param, ctx)
        return text


def _db_options[F: Callable[..., Any]](func: F) -> F:
    """Where the chain's parts come from (same flags and defaults as the sensors)."""
    options = [
        click.option(
            "--geoip-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar=geo.GEOIP_DIR_ENV,
            help="Folder searched for *.mmdb files (and overrides.csv). Default: the "
            "checkout's geoip/, else /var/lib/egresswatch/geoip. Env: EGRESSWATCH_GEOIP_DIR.",
        ),
        click.option(
            "--country-db",
            type=_existing_file,
            help="Country database (GeoLite2-Country, DB-IP Country Lite, IPinfo Lite ...); "
            "replaces the folder's country databases.",
        ),
        click.option(
            "--asn-db",
            type=_existing_file,
            help="ASN database (GeoLite2-ASN, DB-IP ASN Lite, IPinfo Lite ...); "
            "replaces the folder's ASN databases.",
        ),
        click.option(
            "--overrides",
            "--geo-overrides",
            "overrides",
            type=_existing_file,
            help="Lab overrides CSV (network,country,label[,asn,org]); asked before any "
            "database. Default: overrides.csv in the GeoIP folder when present.",
        ),
        click.option(
            "--no-registry",
            is_flag=True,
            help="Do not fall back to the registry country (iptocc) when no database knows.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _chain(params: dict[str, Any], cache_size: int = geo.DEFAULT_CACHE_SIZE) -> geo.GeoChain:
    return geo.GeoChain.from_paths(
        country_db=params.get("country_db"),
        asn_db=params.get("asn_db"),
        overrides=params.get("overrides"),
        geoip_dir=params.get("geoip_dir"),
        registry=not params.get("no_registry"),
        cache_size=cache_size,
    )


@click.group()
def geoip() -> None:
    """Look up addresses, show the GeoIP databases in use, build a database.

    egresswatch places an address with, in order: lab overrides (a CSV),
    MaxMind-format databases (GeoLite2, DB-IP Lite, IPinfo Lite, or one built
    with 'geoip build'), then the registry country shipped with iptocc. Private,
    loopback and link-local addresses are 'local'. See geoip/README.md for where
    to get databases.
    """


@geoip.command()
@click.argument("addresses", metavar="ADDR...", nargs=-1, required=True, type=AddressType())
@_db_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list on stdout.")
def lookup(addresses: tuple[str, ...], as_json: bool, **params: Any) -> None:
    """Country, ASN, organisation and source of each ADDR."""
    with _chain(params) as chain:
        answers = [(addr, chain.lookup(addr)) for addr in addresses]
    if as_json:
        click.echo(json.dumps([_answer_json(a, g) for a, g in answers], indent=2))
        return
    table = Table()
    for col in ("address", "country", "ASN", "organisation", "label", "source"):
        table.add_column(col, overflow="fold")
    for addr, answer in answers:
        table.add_row(
            addr,
            answer.country or ("-" if answer.is_local else "unknown"),
            f"AS{answer.asn}" if answer.asn is not None else "",
            answer.org or "",
            answer.label or "",
            Text(str(answer.source), style=_SOURCE_STYLE[answer.source]),
        )
    Console().print(table)


def _answer_json(addr: str, answer: GeoAnswer) -> dict[str, Any]:
    return {
        "address": addr,
        "country": answer.country,
        "asn": answer.asn,
        "org": answer.org,
        "label": answer.label,
        "source": str(answer.source),
        "local": answer.is_local,
    }


@geoip.command()
@_db_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def info(as_json: bool, **params: Any) -> None:
    """Which databases are used, in which order, and how old they are.

    A database older than 60 days is flagged stale: GeoLite2 is rebuilt twice a
    week, DB-IP Lite monthly, so an old file means updates have stopped.
    """
    with _chain(params, cache_size=0) as chain:
        dbs = chain.databases()
        overrides = chain.overrides
        folder = chain.geoip_dir
    result = {
        "geoip_dir": str(folder) if folder else None,
        "geoip_dir_exists": bool(folder and folder.is_dir()),
        "databases": [
            {
                "path": str(d.path),
                "type": d.type,
                "roles": list(d.roles),
                "built": d.built.isoformat(),
                "age_days": round(d.age_days, 1),
                "stale": d.stale,
                "ip_version": d.ip_version,
                "description": d.description,
            }
            for d in dbs
        ],
        "overrides": (
            {"path": overrides.path, "networks": len(overrides)} if overrides is not None else None
        ),
        "registry": (
            None
            if params.get("no_registry")
            else {"source": "iptocc", "version": geo.registry_version()}
        ),
        "stale_days": geo.STALE_DAYS,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    # soft_wrap: long paths stay on one line, so they can be copied and grepped
    console = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    where = f"{folder}" + ("" if result["geoip_dir_exists"] else " (does not exist)")
    console.print(Text.assemble(("GeoIP folder: ", "bold"), where))
    if overrides is not None:
        console.print(
            Text.assemble(("overrides: ", "bold"), f"{overrides.path} ({len(overrides)} networks)")
        )
    if dbs:
        console.print(Text("databases (asked in this order):", style="bold"))
    else:
        console.print(
            Text(
                f"no MaxMind-format database found; addresses get the registry country only. "
                f"To add one: {geo.HOWTO}",
                style="yellow",
            )
        )
    for number, d in enumerate(dbs, 1):
        age = Text(f"{d.age_days:.0f} days old", style="bold yellow" if d.stale else "green")
        if d.stale:
            age.append(f" STALE (more than {geo.STALE_DAYS})")
        console.print(Text.assemble(f"  {number}. ", (str(d.path), "bold")))
        console.print(f"     type {d.type}, used for {' + '.join(d.roles)}, IPv{d.ip_version}")
        console.print(Text.assemble(f"     built {d.built:%Y-%m-%d %H:%M} UTC, ", age))
        if d.stale:
            err.print(
                f"[yellow]warning:[/yellow] {d.path} was built {d.age_days:.0f} days ago "
                f"(more than {geo.STALE_DAYS}); download a fresh copy"
            )
    if result["registry"]:
        console.print(
            Text.assemble(
                ("registry fallback: ", "bold"),
                f"iptocc {geo.registry_version()} (RIR delegation data shipped in the package)",
            )
        )
    else:
        console.print(Text.assemble(("registry fallback: ", "bold"), "off"))


@geoip.command()
@click.option(
    "--csv",
    "csv_path",
    type=_existing_file,
    required=True,
    help="CSV with network,country[,asn,org] per line (a header row naming the columns "
    "is allowed; '#' lines are comments).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The .mmdb file to write (replaced atomically if it exists).",
)
@click.option(
    "--type",
    "database_type",
    default=geo.BUILD_DATABASE_TYPE,
    show_default=True,
    help="database_type metadata; keep 'Country' and/or 'ASN' in it so the file is "
    "auto-detected for those roles.",
)
@click.option(
    "--description",
    default="egresswatch lab GeoIP database",
    show_default=True,
    help="Description metadata (English).",
)
def build(csv_path: Path, output: Path, database_type: str, description: str) -> None:
    """Build a MaxMind DB from a CSV of ranges (for labs, tests and overrides).

    The file uses the GeoLite2 layout, so egresswatch and any MaxMind reader
    read it. Where networks nest, the more specific one wins. Example:

      egresswatch geoip build --csv geoip/overrides.example.csv -o geoip/lab.mmdb
    """
    rows = geo.read_ranges_csv(csv_path)
    count = geo.build_mmdb(
        geo.iter_rows(rows), output, database_type=database_type, description=description
    )
    _verify(output, rows)
    console = Console(soft_wrap=True)
    console.print(
        Text.assemble(("wrote ", "green"), f"{output}: {count} networks, type {database_type!r}")
    )
    for row in rows:
        if geo.network_is_local(row.network):
            console.print(
                f"[yellow]note:[/yellow] line {row.line}: {row.network} is a local range; "
                "egresswatch answers 'local' for it whatever the file says"
            )


def _verify(path: Path, rows: list[geo.RangeRow]) -> None:
    """Read the file back: each network's first address must answer as its row says.

    Where networks nest, the first address of the wider one may belong to a
    narrower one, so the expected row is the most specific one containing it.
    """
    expected = geo.PrefixTable((row.network, row) for row in rows)  # most specific wins
    db = geo.GeoDatabase.open(path)
    try:
        for row in rows:
            addr = row.network.network_address
            want = expected.match(addr) or row
            country, asn, _ = db.record(addr)
            if country != want.country or asn != want.asn:
                raise GeoIPError(
                    f"{path}: {addr} reads back as {country}/AS{asn}, expected "
                    f"{want.country}/AS{want.asn} (line {want.line}); please report this"
                )
    finally:
        db.close()

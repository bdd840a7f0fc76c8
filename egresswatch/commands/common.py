"""Options and parameter types shared by commands that build an inspector.

Validation lives in ``click.ParamType.convert`` so a bad flag is an ordinary
usage error (exit 2) with a message, never a traceback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from egresswatch.model import Mode
from egresswatch.runtime import Settings

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


class IPAddressType(click.ParamType):
    """An IPv4 or IPv6 address, normalised."""

    name = "address"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(ipaddress.ip_address(str(value).strip("[]")))
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 or IPv6 address", param, ctx)


class HostPortType(click.ParamType):
    """HOST:PORT (IPv6 in brackets); the port must be 1-65535."""

    name = "host:port"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            self.fail(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9721)", param, ctx)
        return host.strip("[]") or "127.0.0.1", int(port)


def inspector_options[F: Callable[..., Any]](func: F) -> F:
    """The flags every inspector-building command takes (policy, mode, catalog, GeoIP)."""
    options = [
        click.option(
            "--policy",
            type=_existing_file,
            envvar="EGRESSWATCH_POLICY",
            help="Policy TOML file (default: the shipped policy, monitor mode). "
            "Env: EGRESSWATCH_POLICY.",
        ),
        click.option(
            "--mode",
            type=click.Choice([m.value for m in Mode]),
            help="Override the policy's mode: 'monitor' records would-blocks, "
            "'enforce' blocks.",
        ),
        click.option(
            "--catalog",
            "catalogs",
            type=_existing_file,
            multiple=True,
            help="Extra service catalog TOML (adds or overrides shipped entries). Repeatable.",
        ),
        click.option(
            "--geoip-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="EGRESSWATCH_GEOIP_DIR",
            help="Folder searched for *.mmdb GeoIP databases. Env: EGRESSWATCH_GEOIP_DIR.",
        ),
        click.option("--country-db", type=_existing_file, help="MaxMind-format country database."),
        click.option("--asn-db", type=_existing_file, help="MaxMind-format ASN database."),
        click.option(
            "--geo-overrides",
            type=_existing_file,
            help="Lab overrides CSV (CIDR,country-or-label); consulted before any database.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(params: dict[str, Any], **extra: Any) -> Settings:
    """Build Settings from the values of :func:`inspector_options` (plus command extras)."""
    return Settings(
        policy=params.get("policy"),
        mode=Mode(params["mode"]) if params.get("mode") else None,
        catalogs=tuple(params.get("catalogs") or ()),
        geoip_dir=params.get("geoip_dir"),
        country_db=params.get("country_db"),
        asn_db=params.get("asn_db"),
        geo_overrides=params.get("geo_overrides"),
        **extra,
    )

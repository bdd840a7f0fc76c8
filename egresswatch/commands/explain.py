"""``egresswatch explain``: judge one request offline and say why."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from egresswatch.commands.common import IPAddressType, inspector_options, settings_from
from egresswatch.jsonable import decision_to_dict
from egresswatch.model import Action, Decision, Observation, Protocol, Sensor, Stage, Transport
from egresswatch.runtime import DEFAULT_BODY_LIMIT, build_inspector

_DEFAULT_PORTS = {"http": 80, "https": 443}


class URLType(click.ParamType):
    """An absolute http:// or https:// URL."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parts = urlsplit(str(value))
            port = parts.port
        except ValueError as e:
            self.fail(f"{value!r} is not a valid URL: {e}", param, ctx)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            self.fail(f"{value!r} must be an absolute http:// or https:// URL", param, ctx)
        del port
        return parts


class HeaderType(click.ParamType):
    """'Name: value'."""

    name = "header"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, val = str(value).partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            self.fail(f"{value!r} is not a header; write it as 'Name: value'", param, ctx)
        return name.strip().lower(), val.strip()


class BodyType(click.ParamType):
    """Literal text, or @FILE to read the body from a file (@- for standard input)."""

    name = "body"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bytes):
            return value
        text = str(value)
        if not text.startswith("@"):
            return text.encode()
        name = text[1:]
        if name == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(name).read_bytes()
        except OSError as e:
            self.fail(f"cannot read body file {name!r}: {e.strerror}", param, ctx)


def build_observation(
    method: str,
    url: Any,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    address: str | None,
    body_limit: int = DEFAULT_BODY_LIMIT,
) -> Observation:
    """The observation a proxy would make of this request."""
    host = url.hostname
    port = url.port or _DEFAULT_PORTS[url.scheme]
    all_headers = list(headers)
    names = {k for k, _ in all_headers}
    if "host" not in names:
        all_headers.insert(0, ("host", url.netloc))
    if body and "content-type" not in names and body.lstrip()[:1] in (b"{", b"["):
        all_headers.append(("content-type", "application/json"))
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    tls = url.scheme == "https"
    return Observation(
        sensor=Sensor.EXPLAIN,
        transport=Transport.TCP,
        protocol=Protocol.HTTPS if tls else Protocol.HTTP,
        dst_addr=address,
        dst_port=port,
        stage=Stage.REQUEST,
        http_host=host,
        sni=host if tls else None,
        client_app=dict(all_headers).get("user-agent"),
        method=method.upper(),
        path=path,
        headers=tuple(all_headers),
        body=body[:body_limit],
        body_truncated=len(body) > body_limit,
        bytes_out=len(body),
    )


@click.command()
@click.argument("method")
@click.argument("url", type=URLType())
@click.option(
    "-H", "--header", "headers", type=HeaderType(), multiple=True,
    help="A request header, 'Name: value'. Repeatable.",
)
@click.option(
    "--body", type=BodyType(), default=b"",
    help="Request body: literal text, @FILE, or @- for standard input.",
)
@click.option(
    "--address", type=IPAddressType(),
    help="The destination address (explain does no DNS: without it the address "
    "country is unknown).",
)
@inspector_options
@click.option("--json", "as_json", is_flag=True, help="Print the decision as one JSON object.")
def explain(method: str, url: Any, headers: tuple[tuple[str, str], ...], body: bytes,
            address: str | None, as_json: bool, **params: Any) -> None:
    """Judge one HTTP request offline and print the decision and its reason.

    \b
    Example:
      egresswatch explain POST https://api.deepseek.com/chat/completions \\
        --address 203.0.113.10 --policy egresswatch/data/policy-example.toml \\
        --body '{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}'

    Nothing is sent anywhere. Exit code 0 when the request would be allowed or
    alerted, 1 when it would be blocked (also a would-block in monitor mode).
    """
    inspector = build_inspector(settings_from(params))
    decision = inspector.inspect(build_observation(method, url, headers, body, address))
    if as_json:
        click.echo(json.dumps(decision_to_dict(decision), indent=2, ensure_ascii=False))
    else:
        _print(decision)
    if decision.verdict.action is Action.BLOCK:
        raise SystemExit(1)


_COLOURS = {"allow": "green", "alert": "yellow", "block": "bold red", "would-block": "bold yellow"}


def _print(decision: Decision) -> None:
    data = decision_to_dict(decision)
    console = Console()
    verdict = data["verdict"]
    colour = _COLOURS.get(verdict["label"], "white")
    console.print(f"[{colour}]{verdict['label'].upper()}[/] ({verdict['mode']} mode, "
                  f"rule [bold]{verdict['rule']}[/])")
    console.print(verdict["reason"], soft_wrap=True, markup=False)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    dest = data["destination"]
    geo = dest["geo"]
    where = geo["country"] or "unknown"
    if geo["asn"]:
        where += f", AS{geo['asn']}" + (f" {geo['org']}" if geo["org"] else "")
    table.add_row("destination", escape(f"{dest['host'] or '-'} "
                                        f"{dest['address'] or '(no address)'}:{dest['port']}"))
    table.add_row("address country", f"{where} (source: {geo['source']})")
    service = data["service"]
    if service:
        if service["match"] == "lookalike":
            line = f"lookalike of {service['name']} [lookalike]: not operated by " \
                   f"{service['operator']} ({service['operator_country']}); operator unknown"
        else:
            line = f"{service['name']} [{service['match']}] — {service['operator']}, " \
                   f"{service['operator_country']}; category {service['category']}"
        if service["unverified"]:
            line += f" (unverified: {', '.join(service['unverified'])})"
        table.add_row("service", escape(line))
    else:
        table.add_row("service", "not in the catalog")
    table.add_row("payload", ", ".join(data["payload_types"]) or "-")
    findings = [f"{f['kind']} {f['value']} ({f['where']})" for f in data["findings"]]
    table.add_row("findings", escape("; ".join(findings)) or "none")
    if data["flags"]:
        table.add_row("flags", ", ".join(data["flags"]))
    console.print(table)

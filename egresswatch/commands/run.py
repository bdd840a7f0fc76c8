"""``egresswatch run``: the whole monitor from one config file (see ``egresswatch.config``).

The flags are generated from :data:`egresswatch.config.FIELDS`, so every setting
of ``egresswatch.toml`` is also a flag and an ``EGRESSWATCH_*`` variable with the
same parser; the command loads the config and hands it to one
:class:`~egresswatch.supervisor.Monitor`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from egresswatch import config as cfg


class FieldType(click.ParamType):
    """A flag parsed by the same function as the file and the environment variable."""

    def __init__(self, field: cfg.Field) -> None:
        self.field = field
        name = _KEY_METAVARS.get(field.key) or _METAVARS.get(field.parse) or field.flag
        self.name = name.upper()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        parse = self.field.parse
        if self.field.multiple:
            parse = _item_parser(self.field)
        try:
            return parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


#: how --help shows a value of each parser
_METAVARS: dict[Callable[[Any], Any], str] = {
    cfg.parse_host_port: "host:port",
    cfg.parse_optional_host_port: "host:port",
    cfg.parse_path: "path",
    cfg.parse_existing_file: "file",
    cfg.parse_positive_float: "seconds",
    cfg.parse_count: "n",
    cfg.parse_size: "size",
    cfg.parse_mode: "monitor|enforce",
    cfg.parse_proxy_mode: "mode",
    cfg.parse_optional_str: "text",
    cfg.parse_url_or_empty: "url",
    cfg.parse_webhook_format: "json|slack",
    cfg.parse_bpf: "filter",
}


_KEY_METAVARS = {
    "store.url": "url",
    "sensor.name": "name",
    "proxy.passthrough": "host",
    "policy.catalogs": "file",
    "sniffer.interfaces": "iface",
}


def _item_parser(field: cfg.Field) -> Callable[[Any], Any]:
    """Repeatable flags: parse one item with the list parser and take it out again."""

    def parse(value: Any) -> Any:
        items = field.parse([value])
        if not items:
            raise ValueError("empty value")
        return items[0]

    return parse


def _param_name(field: cfg.Field) -> str:
    return "f_" + field.key.replace(".", "__")


def field_options[F: Callable[..., Any]](func: F) -> F:
    """One click option per config field (no click defaults: unset flags do not override)."""
    for field in reversed(cfg.FIELDS):
        where = f"[{field.key.split('.')[0]}] {field.key.split('.')[1]}, env {field.env}"
        help_text = f"{field.help} (egresswatch.toml: {where})"
        if field.is_bool:
            option = click.option(
                f"--{field.flag}/--no-{field.flag}",
                _param_name(field),
                default=None,
                help=help_text,
            )
        else:
            names = [f"--{field.flag}", *([field.short] if field.short else [])]
            option = click.option(
                *names,
                _param_name(field),
                type=FieldType(field),
                multiple=field.multiple,
                default=None,
                help=help_text,
            )
        func = option(func)
    return func


def flags_from(params: dict[str, Any]) -> dict[str, Any]:
    """The fields set on the command line, keyed by their config key."""
    out: dict[str, Any] = {}
    for field in cfg.FIELDS:
        value = params.get(_param_name(field))
        if value is None or (field.multiple and not value):
            continue
        out[field.key] = tuple(value) if field.multiple else value
    return out


@click.command("run")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"egresswatch.toml to read (env {cfg.CONFIG_ENV}). Without one, the embedded "
    "defaults: regular proxy on 127.0.0.1:8080, SQLite in $XDG_DATA_HOME/egresswatch, "
    "the registry GeoIP fallback, the shipped catalog and monitor-mode policy, metrics "
    "on 127.0.0.1:9721.",
)
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the effective configuration (each value with where it came from) and exit.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Load everything (config, policy, catalog, GeoIP), print the banner and exit.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show mitmproxy's own log.")
@field_options
def run(
    config_path: Path | None, print_config: bool, check: bool, verbose: bool, **params: Any
) -> None:
    """Run the whole monitor: proxy, sniffer, store, metrics and alerts, supervised together.

    Start-up prints where everything is: the proxy and how to trust its CA, the
    metrics URL, the database, the policy and its mode, and the GeoIP sources
    with their age. A sniffer that fails is restarted; a proxy that stops ends
    the monitor with exit code 4, so it never runs half-way.

    SIGTERM or Ctrl-C: stop accepting, finish requests in flight, flush the
    store, exit 0. SIGHUP: reload the policy and catalog without dropping
    connections.

    Settings come from the defaults, then the config file, then EGRESSWATCH_*
    variables, then these flags (later wins).

    \b
    Examples:
      egresswatch run
      egresswatch run --config /etc/egresswatch/egresswatch.toml
      egresswatch run --proxy-mode transparent --listen 0.0.0.0:8080 -i eth1
      egresswatch run --print-config > egresswatch.toml
    """
    from egresswatch.supervisor import Monitor

    path = cfg.find_config(config_path)
    conf = cfg.load(path, flags=flags_from(params))
    if print_config:
        click.echo(conf.as_toml(), nl=False)
        return
    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def out(line: str) -> None:
        console.print(escape(line))

    monitor = Monitor(conf, out=out, verbose=verbose)
    if check:
        monitor.build(check=True)
        try:
            for line in monitor.banner(check=True):
                out(line)
        finally:
            monitor.close()
        return
    raise SystemExit(monitor.run())

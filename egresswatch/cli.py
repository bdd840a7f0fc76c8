"""The ``egresswatch`` command line: a thin root that loads each command on demand.

Each command lives in ``egresswatch/commands/<module>.py`` and exposes a click
command or group under the name listed in ``COMMANDS``. Commands parse their
arguments, build a config and call one function; domain errors become one line
on stderr and the exit code documented below.

Exit codes:
  0  success (explain: allowed or alerted; verify: PASS)
  1  the verdict is a block (explain) or the audit failed (verify)
  2  usage error (bad flag or argument)
  3  configuration or data error (policy, catalog, GeoIP database ...)
  4  runtime error (database, capture, proxy could not start)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from egresswatch import __version__
from egresswatch.errors import EgressWatchError

#: command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "explain": ("egresswatch.commands.explain", "explain", "Judge one request offline."),
    "geoip": ("egresswatch.commands.geoip", "geoip", "Look up, inspect and build GeoIP dbs."),
    "policy": ("egresswatch.commands.policy", "policy", "Check a policy file."),
    "catalog": ("egresswatch.commands.catalog", "catalog", "Show and check the service catalog."),
    "flows": ("egresswatch.commands.flows", "flows", "List recorded flows with filters."),
    "report": ("egresswatch.commands.report", "report", "Summarise egress by service and country."),
    "tail": ("egresswatch.commands.tail", "tail", "Follow new decisions live."),
    "db": ("egresswatch.commands.db", "db", "Database upkeep: migrate, prune."),
    "proxy": ("egresswatch.commands.proxy", "proxy", "Run the inline mitmproxy sensor."),
    "sniff": ("egresswatch.commands.sniff", "sniff", "Passive capture, live or from a pcap."),
    "run": ("egresswatch.commands.run", "run", "Run the whole monitor from one config."),
    "status": ("egresswatch.commands.status", "status", "Is the monitor running, and how is it."),
    "ca": ("egresswatch.commands.ca", "ca", "Export the proxy's CA with install steps."),
    "gateway": ("egresswatch.commands.gateway", "gateway", "Lab gateway: nftables redirect."),
    "verify": ("egresswatch.commands.verify", "verify", "Prove a command makes no calls home."),
}


def _available() -> list[str]:
    """Commands whose module exists in this install."""
    return [name for name, (module, _, _) in COMMANDS.items() if importlib.util.find_spec(module)]


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (fast ``--help``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_available()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attr, _ = COMMANDS[cmd_name]
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name == module:  # command not built yet in this checkout
                    return None
                raise
            command = getattr(mod, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(_available())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except EgressWatchError as e:
            click.echo(f"egresswatch: error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="egresswatch")
def cli() -> None:
    """See and stop what AI clients send out, and where it ends up.

    egresswatch judges every flow by the country of the destination address,
    the legal home of the service's operator, and what the payload carries
    (chat prompts, credentials, contact data, telemetry ...).
    """


def main() -> None:
    """Console entry point."""
    sys.exit(cli.main(standalone_mode=True))


if __name__ == "__main__":
    main()

"""``egresswatch verify -- CMD``: prove that a command makes no calls home (or only allowed ones).

Parses flags, builds a :class:`~egresswatch.verify.VerifyConfig` and calls
:func:`~egresswatch.verify.run_verify`; writes the report in the formats asked for.
Exit 0 PASS, 1 FAIL, 2 usage, 3 config/data, 4 setup/runtime (see docs/verify.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from egresswatch.errors import EgressWatchError
from egresswatch.runtime import Settings

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_out_file = click.Path(dir_okay=False, writable=True, path_type=Path)


class HostPatternType(click.ParamType):
    """A host name, a ``*.`` pattern, or an IP address (``--allow``)."""

    name = "host"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower().rstrip(".")
        if not text or any(c in text for c in " /@") or text.count(":") == 1:
            self.fail(
                f"{value!r} is not a host name or address (examples: registry.ollama.ai, "
                "*.hf.co, 192.0.2.7)",
                param,
                ctx,
            )
        return text


class ProfileType(click.ParamType):
    """The name of a shipped expected-egress profile."""

    name = "profile"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from egresswatch.verify import Profile, load_profiles

        if isinstance(value, Profile):
            return value
        profiles = load_profiles()
        key = str(value).strip().lower().replace("-", "").replace(" ", "")
        aliases = {"hf": "huggingface", "huggingfacehub": "huggingface"}
        key = aliases.get(key, key)
        if key not in profiles:
            self.fail(
                f"unknown profile {value!r}; known: {', '.join(sorted(profiles))}", param, ctx
            )
        return profiles[key]


class TimeoutType(click.ParamType):
    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 < seconds <= 7 * 24 * 3600:
            self.fail(f"timeout must be between 0 and one week, not {value!r}", param, ctx)
        return seconds


@click.command(
    "verify",
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
)
@click.option(
    "--policy",
    type=_existing_file,
    help="Policy TOML: destinations it allows count as allowed. Without it, nothing is "
    "allowed except by --allow and --profile (the shipped policy only labels).",
)
@click.option(
    "--allow",
    "allow",
    type=HostPatternType(),
    multiple=True,
    help="Allow this host and the names below it (or an address). Repeatable.",
)
@click.option(
    "--profile",
    "profiles",
    type=ProfileType(),
    multiple=True,
    help="Expected-egress profile: huggingface, vllm, ollama, gradio, lmstudio. Allows what "
    "the tool is known to need and explains the rest (how to turn it off). Repeatable.",
)
@click.option(
    "--timeout",
    type=TimeoutType(),
    help="Kill the command (and everything it started) after this many seconds.",
)
@click.option(
    "--json",
    "json_path",
    type=_out_file,
    help="Write the report as JSON (schema in docs/verify.md).",
)
@click.option(
    "--junit", "junit_path", type=_out_file, help="Write JUnit XML: one test case per destination."
)
@click.option(
    "--markdown", "markdown_path", type=_out_file, help="Write a Markdown summary (CI job summary)."
)
@click.option(
    "--online",
    is_flag=True,
    help="Forward allowed traffic for real (machines with internet only; root). Refuses "
    "when no route could reach the internet.",
)
@click.option(
    "--catalog",
    "catalogs",
    type=_existing_file,
    multiple=True,
    help="Extra service catalog TOML. Repeatable.",
)
@click.option(
    "--geoip-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EGRESSWATCH_GEOIP_DIR",
    help="Folder with MaxMind-format GeoIP databases. Env: EGRESSWATCH_GEOIP_DIR.",
)
@click.option(
    "--confdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("~/.mitmproxy"),
    show_default=True,
    help="Where egresswatch's CA lives (created if missing); the command trusts it for the run.",
)
@click.option("--no-sniffer", is_flag=True, help="Do not run the passive sniffer in the gateway.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def verify(**params: Any) -> None:
    """Run COMMAND where nothing can leave, and report every destination it tried.

    COMMAND runs in a fresh network namespace whose only way out is an
    egresswatch gateway made for this run: DNS gets answers from a private pool
    (198.18.0.0/15), HTTPS is intercepted with egresswatch's CA (the command gets
    SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and NODE_EXTRA_CA_CERTS) so
    each request's payload is classified, then answered with an error; other TCP
    and UDP is recorded with its first bytes. Loopback inside works, so a local
    model server and its client can run in one COMMAND (use sh -c '...').

    \b
    Example:
      sudo egresswatch verify --profile huggingface --junit egress.xml -- python app.py

    \b
    Exit codes: 0 PASS (nothing but allowed egress), 1 FAIL, 2 usage error,
    3 configuration error, 4 could not set up or run (not root, gateway failed,
    interrupted). The command's own exit status is in the report.

    Needs root (namespaces, nftables); through sudo the command runs as you.
    Without root, verify runs itself in an unprivileged user namespace where the
    kernel allows it (like unshare -rn). See docs/verify.md.
    """
    from egresswatch import verify as v

    # Without root, try again as root of our own user+network namespace (unshare -rn).
    marker = os.environ.get(v.USERNS_ENV)
    wanted = (os.geteuid() != 0 and marker is None) or marker == "force"
    if wanted and v.userns_works():
        raise SystemExit(v.run_in_userns(sys.argv[1:]))
    console = Console(stderr=False)
    settings = Settings(
        policy=params["policy"],
        catalogs=tuple(params["catalogs"]),
        geoip_dir=params["geoip_dir"],
        store=False,
        metrics_listen=None,
    )
    config = v.VerifyConfig(
        command=tuple(params["command"]),
        settings=settings,
        allow=tuple(params["allow"]),
        profiles=tuple(params["profiles"]),
        timeout=params["timeout"],
        online=params["online"],
        confdir=params["confdir"],
        sniffer=not params["no_sniffer"],
    )
    report = v.run_verify(config)
    try:
        if params["json_path"]:
            params["json_path"].write_text(json.dumps(v.to_json(report), indent=2) + "\n")
        if params["junit_path"]:
            params["junit_path"].write_text(v.to_junit(report))
        if params["markdown_path"]:
            params["markdown_path"].write_text(v.to_markdown(report))
    except OSError as e:
        raise ReportWriteError(f"cannot write the report: {e}") from e
    sys.stdout.flush()
    if params["quiet"]:
        bad = sum(1 for d in report.destinations if not d.allowed)
        click.echo(
            f"{report.verdict}: {len(report.destinations)} destination(s), {bad} not allowed"
        )
    else:
        v.render_terminal(report, console)
    raise SystemExit(0 if report.passed else 1)


class ReportWriteError(EgressWatchError):
    exit_code = 4

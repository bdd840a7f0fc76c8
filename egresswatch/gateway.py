"""A lab gateway: IP forwarding and an nftables table of egresswatch's own.

LAN clients are sent through the transparent proxy without being configured for
one: TCP 80/443 arriving on the LAN interface is redirected to the proxy's port,
UDP/443 (QUIC, RFC 9000) can be dropped so clients fall back to TCP where they are
inspected, and DNS (port 53) can be redirected to the gateway's own resolver so
clients with a hard-coded resolver are still seen.

As in sshuttle's firewall backends, everything that touches the kernel goes
through **one** helper, :func:`run_command`; the functions here only build
:class:`Command` lists, so tests check the exact commands without root, and a
dry run prints them. All rules live in one table (``inet egresswatch``): setup
replaces it in a single ``nft -f`` transaction (idempotent), teardown is one
``delete table``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from egresswatch.errors import EgressWatchError

#: our table; one per gateway, so teardown cannot touch anybody else's rules
TABLE = "egresswatch"
#: ``inet`` tables see IPv4 and IPv6 (nft(8), "ADDRESS FAMILIES")
FAMILY = "inet"
#: what mitmproxy's transparent mode takes (TCP only: lab-notes.md)
WEB_PORTS = (80, 443)
#: DNS, RFC 1035 section 4.2 (UDP and TCP)
DNS_PORT = 53
IPV4_FORWARD = "net.ipv4.ip_forward"
IPV6_FORWARD = "net.ipv6.conf.all.forwarding"


class GatewayError(EgressWatchError):
    """A gateway command failed (no root, no nft, unknown interface, rule rejected)."""

    exit_code = 4


@dataclass(frozen=True, slots=True)
class Command:
    """One program run: its argv and, for ``nft -f -``, the script on stdin."""

    argv: tuple[str, ...]
    input: str | None = None

    def __str__(self) -> str:
        line = " ".join(self.argv)
        return f"{line} <<'EOF'\n{self.input}EOF" if self.input is not None else line


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Command], Result]


@dataclass(frozen=True, slots=True)
class GatewayPlan:
    """What ``gateway setup`` does; built from flags, validated by the CLI's types."""

    lan: str
    proxy_port: int = 8080
    block_quic: bool = False
    dns: bool = False
    #: where redirected DNS goes on the gateway (a local resolver, or mitmproxy's dns mode)
    dns_port: int = DNS_PORT
    ipv6: bool = True
    table: str = TABLE


def ruleset(plan: GatewayPlan) -> str:
    """The nft script: replace our table atomically (add + delete + define in one transaction).

    ``add table`` first makes the ``delete`` valid when the table does not exist yet, so
    running setup twice gives the same result (nft(8): a file is one transaction).
    """
    lan = _quoted(plan.lan)
    web = ", ".join(str(p) for p in WEB_PORTS)
    pre = [
        f"iifname {lan} tcp dport {{ {web} }} redirect to :{plan.proxy_port}",
    ]
    if plan.dns:
        pre.append(
            f"iifname {lan} meta l4proto {{ tcp, udp }} th dport {DNS_PORT} "
            f"redirect to :{plan.dns_port}"
        )
    fwd: list[str] = []
    if plan.block_quic:
        # mitmproxy's transparent mode takes no UDP: QUIC would pass uninspected.
        fwd.append(f"iifname {lan} udp dport 443 drop")
    body = [
        f"add table {FAMILY} {plan.table}",
        f"delete table {FAMILY} {plan.table}",
        f"table {FAMILY} {plan.table} {{",
        "    chain prerouting {",
        "        type nat hook prerouting priority dstnat; policy accept;",
        *(f"        {rule}" for rule in pre),
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        *(f"        {rule}" for rule in fwd),
        "    }",
        "}",
    ]
    return "\n".join(body) + "\n"


def setup_commands(plan: GatewayPlan) -> list[Command]:
    """Check the interface, turn on forwarding, load the table."""
    cmds = [
        Command(("ip", "-o", "link", "show", "dev", plan.lan)),
        Command(("sysctl", "-qw", f"{IPV4_FORWARD}=1")),
    ]
    if plan.ipv6:
        cmds.append(Command(("sysctl", "-qw", f"{IPV6_FORWARD}=1")))
    cmds.append(Command(("nft", "-f", "-"), ruleset(plan)))
    return cmds


def list_command(table: str = TABLE) -> Command:
    return Command(("nft", "list", "table", FAMILY, table))


def teardown_command(table: str = TABLE) -> Command:
    """The whole teardown: one ``delete table`` (forwarding is left as it is)."""
    return Command(("nft", "delete", "table", FAMILY, table))


def run_command(cmd: Command) -> Result:
    """Run one command: the only place this module starts a program."""
    if shutil.which(cmd.argv[0]) is None:
        raise GatewayError(
            f"{cmd.argv[0]} not found; install it "
            "(Debian: apt-get install nftables iproute2 procps)"
        )
    try:
        res = subprocess.run(
            list(cmd.argv), input=cmd.input, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GatewayError(f"{' '.join(cmd.argv)}: {e}") from e
    return Result(res.returncode, res.stdout, res.stderr)


def _checked(run: Runner, cmd: Command) -> Result:
    res = run(cmd)
    if res.returncode != 0:
        why = res.stderr.strip() or res.stdout.strip() or f"exit status {res.returncode}"
        if cmd.argv[:2] == ("ip", "-o"):
            raise GatewayError(f"no interface {cmd.argv[-1]!r} here ({why})")
        low = why.lower()
        if "operation not permitted" in low or "permission denied" in low:
            raise GatewayError(f"{cmd.argv[0]}: needs root (CAP_NET_ADMIN): {why}")
        raise GatewayError(f"{' '.join(cmd.argv)} failed: {why}")
    return res


def setup(plan: GatewayPlan, run: Runner = run_command) -> list[Command]:
    """Apply ``plan``; returns the commands run. Raises GatewayError on the first failure."""
    cmds = setup_commands(plan)
    for cmd in cmds:
        _checked(run, cmd)
    return cmds


def teardown(table: str = TABLE, run: Runner = run_command) -> bool:
    """Delete our table. False if there was none (teardown is idempotent)."""
    if run(list_command(table)).returncode != 0:
        return False
    _checked(run, teardown_command(table))
    return True


def current(table: str = TABLE, run: Runner = run_command) -> str | None:
    """The loaded table as ``nft list`` prints it, or None."""
    res = run(list_command(table))
    return res.stdout if res.returncode == 0 else None


def ipv6_available() -> bool:
    return os.path.exists("/proc/sys/" + IPV6_FORWARD.replace(".", "/"))


def _quoted(name: str) -> str:
    # Interface names cannot contain quotes or whitespace (the CLI's type checks); quoting
    # keeps names such as "eth0.10" from being read as nft syntax.
    return f'"{name}"'


def describe(plan: GatewayPlan) -> Sequence[str]:
    """What the table does, in words, for the console after setup."""
    lines = [
        f"TCP {'/'.join(map(str, WEB_PORTS))} from {plan.lan} -> transparent proxy on port "
        f"{plan.proxy_port}",
    ]
    if plan.dns:
        lines.append(f"DNS (UDP/TCP 53) from {plan.lan} -> port {plan.dns_port} on this gateway")
        # Nothing answers there unless something listens: egresswatch can (docs/gateway.md).
        lines.append(f"  serve it with: egresswatch run ... --dns-listen 0.0.0.0:{plan.dns_port}")
    lines.append(
        f"QUIC (UDP/443) from {plan.lan}: "
        + ("dropped (clients fall back to TCP)" if plan.block_quic else "forwarded uninspected")
    )
    return lines

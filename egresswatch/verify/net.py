"""Addresses, ports and nftables rules of a verify run, and whether ``--online`` could work."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from collections.abc import Iterable
from typing import Any, NamedTuple

#: the command<->gateway link is a /30 of link-local space (RFC 3927): see link_addresses
LINK_PREFIX = 30
PROXY_PORT, DNS_PORT, RAW_PORT = 18080, 18053, 18099


#: documentation ranges (RFC 5737 §3, RFC 3849): the internet does not route them (RFC
#: 5737 §4), so a default route through, or from, such an address reaches no internet.
_DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


#: IPv6 sources that cannot reach the IPv6 internet: ULA (RFC 4193), link-local (RFC 4291)
_V6_LOCAL = (ipaddress.ip_network("fc00::/7"), ipaddress.ip_network("fe80::/10"))


def _ip_json(*args: str) -> list[dict[str, Any]]:
    try:
        res = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
        data = json.loads(res.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return []
    return data if isinstance(data, list) else []


def _in(addr: str | None, nets: Iterable[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def internet_route() -> str | None:
    """None when a default route could reach the internet, else why not.

    Reads the routing table and interface addresses (``ip -j``); sends nothing. A
    default route counts only when its gateway is not a documentation address and its
    interface has a source address the internet could answer (IPv4: not documentation;
    private is fine behind NAT. IPv6: global, not ULA, not documentation).
    """
    routes = [(4, r) for r in _ip_json("-4", "route", "show", "default")]
    routes += [(6, r) for r in _ip_json("-6", "route", "show", "default")]
    if not routes:
        return "no default route"
    for family, route in routes:
        if _in(route.get("gateway"), _DOC_NETS):
            continue
        dev = route.get("dev")
        if not dev:
            continue
        addrs = [
            a.get("local")
            for link in _ip_json("addr", "show", "dev", str(dev))
            for a in link.get("addr_info", [])
            if a.get("family") == ("inet" if family == 4 else "inet6")
            and a.get("scope") == "global"
        ]
        bad = _DOC_NETS if family == 4 else (*_DOC_NETS, *_V6_LOCAL)
        if any(not _in(a, bad) for a in addrs):
            return None
    return (
        "the default routes go through or from documentation, unique-local or link-local "
        "addresses, which the internet does not route"
    )


def gateway_ruleset(table: str, iface: str) -> str:
    """The gateway's one nftables table: everything from the command is answered here.

    REDIRECT (nft ``redirect``) rewrites to the incoming interface's address; the
    listeners bind every address. Forwarding is dropped: nothing passes the gateway.
    """
    return (
        f"table inet {table} {{\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "{iface}" udp dport 53 redirect to :{DNS_PORT}\n'
        f'        iifname "{iface}" tcp dport 53 redirect to :{RAW_PORT}\n'
        f'        iifname "{iface}" tcp dport {{ 80, 443 }} redirect to :{PROXY_PORT}\n'
        f'        iifname "{iface}" meta l4proto tcp redirect to :{RAW_PORT}\n'
        "    }\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy drop;\n"
        "    }\n"
        "}\n"
    )


class Link(NamedTuple):
    """Addresses of the command<->gateway link of one run."""

    cmd: str
    gw: str
    cmd6: str
    gw6: str


def link_addresses(seed: int) -> Link:
    """A /30 in 169.254.0.0/16 (RFC 3927 link-local: never routed) chosen by ``seed``.

    Offline each run has its own gateway namespace and any /30 would do; online the
    gateway end lives in the host's namespace, so concurrent runs need distinct links.
    Blocks 1..8191 of 169.254.0.0/17 are used: clear of 169.254.169.254 (cloud metadata).
    """
    block = seed % 8191 + 1
    base = int(ipaddress.IPv4Address("169.254.0.0")) + block * 4
    six = f"fd65:7776:{block:x}::"
    return Link(
        str(ipaddress.IPv4Address(base + 2)),
        str(ipaddress.IPv4Address(base + 1)),
        six + "2",
        six + "1",
    )


def is_link_address(addr: str | None) -> bool:
    """True for the command link's own addresses (a sniffer view from the wrong end)."""
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    return ip in _LINK_NETS[0] if ip.version == 4 else ip in _LINK_NETS[1]


_LINK_NETS = (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fd65:7776::/32"))


class Ports(NamedTuple):
    proxy: int
    dns: int
    raw: int


def free_port(addr: str, kind: int) -> int:
    """A port the kernel says is free on ``addr`` now (online: we share the host's ports)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((addr, 0))
        port: int = s.getsockname()[1]
        return port


def online_ruleset(table: str, iface: str, ports: Ports) -> str:
    """``--online``: the gateway shares the host's namespace; only our listeners are reachable.

    The command may reach nothing of the host's but the three listeners, and nothing is
    forwarded from or to its link: allowed traffic leaves only through the proxy or the
    raw relay, which connect on their own. A drop verdict is final in nftables, so these
    hold whatever other tables accept.
    """
    return (
        f"table inet {table} {{\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f'        iifname "{iface}" udp dport 53 redirect to :{ports.dns}\n'
        f'        iifname "{iface}" tcp dport {{ 80, 443 }} redirect to :{ports.proxy}\n'
        f'        iifname "{iface}" meta l4proto tcp redirect to :{ports.raw}\n'
        "    }\n"
        "    chain input {\n"
        "        type filter hook input priority filter; policy accept;\n"
        f'        iifname "{iface}" tcp dport {{ {ports.proxy}, {ports.raw} }} accept\n'
        f'        iifname "{iface}" udp dport {ports.dns} accept\n'
        f'        iifname "{iface}" drop\n'
        "    }\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy accept;\n"
        f'        iifname "{iface}" drop\n'
        f'        oifname "{iface}" drop\n'
        "    }\n"
        "}\n"
    )

"""Addresses as sensors give them, and which ones are local (never egress).

Local is defined explicitly, not with ``ipaddress.is_private``: the stdlib also
counts the documentation ranges (RFC 5737, RFC 3849) as private, and
egresswatch's tests and labs use those ranges as "the internet".
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


#: Address blocks that are "local": traffic to them does not leave the site, so
#: they never get a country. Sources: IANA IPv4/IPv6 Special-Purpose Address
#: Registries (RFC 6890) and the RFC cited per line. The documentation ranges
#: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (RFC 5737) and 2001:db8::/32
#: (RFC 3849) are deliberately absent.
LOCAL_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network (RFC 1122 §3.2.1.3)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space / CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122 §3.2.1.3)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    # benchmarking nets (RFC 2544) are lab gear and fake-IP DNS of local proxies
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
    ("::/128", "unspecified (RFC 4291 §2.5.2)"),
    ("::1/128", "loopback (RFC 4291 §2.5.3)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local (RFC 4291 §2.5.6)"),
    ("fec0::/10", "site-local, deprecated (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291 §2.7)"),
)

#: NAT64 well-known prefix: the last 32 bits are the IPv4 destination (RFC 6052 §2.1)
_NAT64_PREFIX = int(ipaddress.IPv6Address("64:ff9b::")) >> 32


class PrefixTable[V]:
    """Longest-prefix match over a few networks: one dict probe per distinct prefix length.

    A handful of prefix lengths make this a few hundred nanoseconds, with no
    dependency; the big tables live in the mmdb files.
    """

    def __init__(self, entries: Iterable[tuple[IPNetwork, V]]) -> None:
        self._maps: dict[tuple[int, int], dict[int, V]] = {}
        for net, value in entries:
            bits = net.max_prefixlen
            key = int(net.network_address) >> (bits - net.prefixlen)
            self._maps.setdefault((net.version, net.prefixlen), {})[key] = value
        self._lengths: dict[int, list[tuple[int, int, dict[int, V]]]] = {4: [], 6: []}
        for (version, plen), table in sorted(self._maps.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            self._lengths[version].append((bits - plen, plen, table))

    def match(self, ip: IPAddress) -> V | None:
        """The value of the longest network containing ``ip``, or None."""
        return self.match_value(ip.version, int(ip))

    def match_value(self, version: int, value: int) -> V | None:
        """:meth:`match` for an address given as (4 or 6, integer value)."""
        for shift, _plen, table in self._lengths[version]:
            hit = table.get(value >> shift)
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        return sum(len(t) for t in self._maps.values())


_LOCAL_BLOCKS = tuple(ipaddress.ip_network(net) for net, _ in LOCAL_NETWORKS)
_LOCAL = PrefixTable(zip(_LOCAL_BLOCKS, (reason for _, reason in LOCAL_NETWORKS), strict=True))


_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


def _parse(addr: str) -> tuple[int, int, str] | None:
    """(4 or 6, integer value, text for the C lookups) or None; see :func:`parse_address`.

    ``socket.inet_pton`` is C and about ten times faster than ``ipaddress`` here,
    which matters for uncached lookups on the proxy's hot path.
    """
    text = addr.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return 4, int.from_bytes(socket.inet_pton(_AF_INET, text)), text
    except (OSError, ValueError):
        pass
    text = text.split("%", 1)[0]  # zone id (RFC 4007 §11): same address
    try:
        packed = socket.inet_pton(_AF_INET6, text)
    except (OSError, ValueError):
        return None
    value = int.from_bytes(packed)
    top = value >> 32
    if top == 0xFFFF or top == _NAT64_PREFIX:
        v4 = packed[12:]
        return 4, int.from_bytes(v4), socket.inet_ntop(_AF_INET, v4)
    return 6, value, text


def parse_address(addr: str) -> IPAddress | None:
    """Parse an address as sensors give it; None when it is not an IP address.

    Accepts ``[v6]`` brackets and zone ids (``fe80::1%eth0``). IPv4-mapped IPv6
    (``::ffff:a.b.c.d``, RFC 4291 §2.5.5.2) and NAT64 well-known-prefix addresses
    (``64:ff9b::a.b.c.d``, RFC 6052 §2.1) are judged as the IPv4 address they carry.
    """
    parsed = _parse(addr)
    if parsed is None:
        return None
    version, value, _ = parsed
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def local_reason(addr: str | IPAddress) -> str | None:
    """Why an address is local ("private (RFC 1918)"), or None when it is not."""
    ip = parse_address(addr) if isinstance(addr, str) else addr
    if ip is None:
        return None
    return _LOCAL.match(ip)


def is_local(addr: str | IPAddress) -> bool:
    """True for loopback, private, link-local, CGNAT, ULA, multicast ... (see LOCAL_NETWORKS)."""
    return local_reason(addr) is not None


def network_is_local(net: IPNetwork) -> bool:
    """True when the whole network lies inside one local block (see LOCAL_NETWORKS)."""
    return any(
        net.version == block.version and net.subnet_of(block)  # type: ignore[arg-type]
        for block in _LOCAL_BLOCKS
    )

"""Hot-path header decoding: every link type, IPv4/IPv6 extension headers, fragments, bad input."""

from __future__ import annotations

import ipaddress

import pytest
from helpers.packets import CLIENT_MAC, GW_MAC
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Raw

from egresswatch.sniffer.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Fragment,
    Packet,
    decode,
    tcp_seq,
)

V4 = IP(src="192.0.2.1", dst="203.0.113.10") / TCP(sport=40000, dport=443, flags="PA", seq=77)
V6 = IPv6(src="2001:db8::1", dst="2001:db8::80") / UDP(sport=40001, dport=53)
PAYLOAD = b"hello world"


def _decoded(data: bytes, linktype: int) -> Packet:
    out = decode(data, linktype)
    assert isinstance(out, tuple) and not isinstance(out, Fragment), out
    return Packet(*out)


@pytest.mark.parametrize(
    ("frame", "linktype", "vlan"),
    [
        (Ether(src=CLIENT_MAC, dst=GW_MAC) / V4 / Raw(PAYLOAD), LINKTYPE_ETHERNET, 0),
        (
            Ether(src=CLIENT_MAC, dst=GW_MAC) / Dot1Q(vlan=7) / V4 / Raw(PAYLOAD),
            LINKTYPE_ETHERNET,
            1,
        ),
        (
            Ether(src=CLIENT_MAC, dst=GW_MAC)
            / Dot1AD(vlan=100)
            / Dot1Q(vlan=7)
            / V4
            / Raw(PAYLOAD),
            LINKTYPE_ETHERNET,
            2,
        ),
        (V4 / Raw(PAYLOAD), LINKTYPE_RAW, 0),
        (V4 / Raw(PAYLOAD), 12, 0),
        (V4 / Raw(PAYLOAD), LINKTYPE_IPV4, 0),
        (CookedLinux(proto=0x0800) / V4 / Raw(PAYLOAD), LINKTYPE_LINUX_SLL, 0),
        (CookedLinuxV2(proto=0x0800) / V4 / Raw(PAYLOAD), LINKTYPE_LINUX_SLL2, 0),
        (Loopback(type=2) / V4 / Raw(PAYLOAD), LINKTYPE_NULL, 0),
        (b"\x00\x00\x00\x02" + bytes(V4 / Raw(PAYLOAD)), LINKTYPE_LOOP, 0),
        (b"\x02\x00\x00\x00" + bytes(V4 / Raw(PAYLOAD)), LINKTYPE_NULL, 0),
        (b"\x00\x00\x00\x02" + bytes(V4 / Raw(PAYLOAD)), LINKTYPE_NULL, 0),  # big-endian writer
    ],
    ids=[
        "eth",
        "vlan",
        "qinq",
        "raw",
        "raw-bsd",
        "ipv4",
        "sll",
        "sll2",
        "null",
        "loop",
        "null-le",
        "null-be",
    ],
)
def test_link_types_ipv4_tcp(frame: object, linktype: int, vlan: int) -> None:
    data = frame if isinstance(frame, bytes) else bytes(frame)  # type: ignore[call-overload]
    p = _decoded(data, linktype)
    assert ipaddress.ip_address(p.src) == ipaddress.ip_address("192.0.2.1")
    assert ipaddress.ip_address(p.dst) == ipaddress.ip_address("203.0.113.10")
    assert (p.proto, p.sport, p.dport) == (6, 40000, 443)
    assert p.flags == 0x18
    assert tcp_seq(data, p.l4) == 77
    assert data[p.start : p.end] == PAYLOAD
    assert p.vlan == vlan


@pytest.mark.parametrize(
    ("frame", "linktype"),
    [
        (Ether(src=CLIENT_MAC, dst=GW_MAC) / V6 / Raw(PAYLOAD), LINKTYPE_ETHERNET),
        (V6 / Raw(PAYLOAD), LINKTYPE_RAW),
        (V6 / Raw(PAYLOAD), LINKTYPE_IPV6),
        (CookedLinuxV2(proto=0x86DD) / V6 / Raw(PAYLOAD), LINKTYPE_LINUX_SLL2),
        (Loopback(type=30) / V6 / Raw(PAYLOAD), LINKTYPE_NULL),  # Darwin AF_INET6
        (Loopback(type=24) / V6 / Raw(PAYLOAD), LINKTYPE_NULL),  # NetBSD/OpenBSD
        (Loopback(type=28) / V6 / Raw(PAYLOAD), LINKTYPE_NULL),  # FreeBSD
    ],
)
def test_link_types_ipv6_udp(frame: object, linktype: int) -> None:
    data = bytes(frame)  # type: ignore[call-overload]
    p = _decoded(data, linktype)
    assert str(ipaddress.ip_address(p.src)) == "2001:db8::1"
    assert (p.proto, p.sport, p.dport) == (17, 40001, 53)
    assert data[p.start : p.end] == PAYLOAD


def test_ipv6_extension_headers_are_walked() -> None:
    pkt = (
        IPv6(src="2001:db8::1", dst="2001:db8::80")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=[])
        / TCP(sport=1234, dport=443, flags="S", seq=9)
    )
    p = _decoded(bytes(pkt), LINKTYPE_RAW)
    assert (p.proto, p.sport, p.dport, p.flags) == (6, 1234, 443, 0x02)


def test_ipv6_first_fragment_decodes_later_fragment_is_attributed() -> None:
    big = (
        IPv6(src="2001:db8::1", dst="2001:db8::80")
        / IPv6ExtHdrFragment(id=42)
        / UDP(sport=5000, dport=53)
        / Raw(b"x" * 3000)
    )
    from scapy.layers.inet6 import fragment6

    frags = fragment6(big, 1280)
    first = decode(bytes(frags[0]), LINKTYPE_RAW)
    assert isinstance(first, tuple) and not isinstance(first, Fragment)
    p = Packet(*first)
    assert (p.sport, p.dport) == (5000, 53)
    assert p.frag is not None and p.frag[1] is True and p.frag[2] == 42
    later = decode(bytes(frags[1]), LINKTYPE_RAW)
    assert isinstance(later, Fragment)
    assert later.ident == 42 and later.proto == 17 and later.length > 0


def test_ipv4_fragments() -> None:
    from scapy.layers.inet import fragment

    frags = fragment(
        IP(src="192.0.2.1", dst="198.51.100.53", id=99) / UDP(sport=5, dport=53) / Raw(b"y" * 3000),
        fragsize=1000,
    )
    first = decode(bytes(frags[0]), LINKTYPE_RAW)
    assert isinstance(first, tuple) and not isinstance(first, Fragment)
    assert Packet(*first).frag == (0, True, 99)
    rest = [decode(bytes(f), LINKTYPE_RAW) for f in frags[1:]]
    assert all(isinstance(r, Fragment) and r.ident == 99 for r in rest)
    assert sum(r.length for r in rest) + (first[8] - first[6]) == 3008  # type: ignore[union-attr]


def test_ethernet_padding_is_not_payload() -> None:
    # a 60-byte minimum frame: the IP total length, not the frame, bounds the payload
    frame = (
        bytes(
            Ether(src=CLIENT_MAC, dst=GW_MAC)
            / IP(src="192.0.2.1", dst="192.0.2.2")
            / TCP(sport=1, dport=2, flags="A")
        )
        + b"\x00" * 6
    )
    p = _decoded(frame, LINKTYPE_ETHERNET)
    assert p.end - p.start == 0


ETH = bytes(Ether(src=CLIENT_MAC, dst=GW_MAC) / V4 / Raw(PAYLOAD))


@pytest.mark.parametrize(
    ("data", "linktype", "reason"),
    [
        (ETH[:10], LINKTYPE_ETHERNET, "truncated-link"),
        (ETH[:30], LINKTYPE_ETHERNET, "truncated-ip"),
        (ETH[:40], LINKTYPE_ETHERNET, "truncated-tcp"),
        (ETH[:14] + b"\x55" + ETH[15:], LINKTYPE_ETHERNET, "bad-ip-version"),
        (ETH[:14] + b"\x42" + ETH[15:], LINKTYPE_ETHERNET, "bad-ip-header-length"),
        (ETH[:16] + b"\x00\x05" + ETH[18:], LINKTYPE_ETHERNET, "bad-ip-length"),
        (ETH[:46] + b"\x10" + ETH[47:], LINKTYPE_ETHERNET, "bad-tcp-offset"),
        (
            bytes(Ether(src=CLIENT_MAC, dst=GW_MAC) / Dot1Q(vlan=1))[:16],
            LINKTYPE_ETHERNET,
            "truncated-link",
        ),
        (bytes(V6)[:30], LINKTYPE_RAW, "truncated-ip"),
        (bytes(IPv6(src="::1", dst="::1", nh=0)) + b"\x11", LINKTYPE_RAW, "truncated-ipv6-ext"),
        (
            bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2, len=4)),
            LINKTYPE_RAW,
            "bad-udp-length",
        ),
        (b"\x00\x01", LINKTYPE_LINUX_SLL2, "truncated-link"),
        (b"", LINKTYPE_RAW, "truncated-link"),
        (ETH, 147, "unsupported-linktype"),
    ],
)
def test_malformed_reasons(data: bytes, linktype: int, reason: str) -> None:
    assert decode(data, linktype) == reason


@pytest.mark.parametrize(
    "frame",
    [
        Ether(src=CLIENT_MAC, dst=GW_MAC, type=0x0806) / Raw(b"\x00" * 28),  # ARP
        Ether(src=CLIENT_MAC, dst=GW_MAC)
        / IP(src="192.0.2.1", dst="192.0.2.2", proto=1)
        / Raw(b"\x08\x00" + b"\x00" * 6),  # ICMP
    ],
)
def test_not_followed_is_skip_not_malformed(frame: object) -> None:
    out = decode(bytes(frame), LINKTYPE_ETHERNET)  # type: ignore[call-overload]
    assert isinstance(out, str) and out.startswith("skip:")

"""Hot-path decoding of link, network and transport headers with plain byte indexing.

Full scapy dissection runs at about 2,200 packets/s (issue #5); this module reads
only the fields the flow table needs, straight from the captured bytes, and
returns either a :class:`Packet` tuple or a short reason string for the
malformed-packet counter. It never raises on bad input: every length is checked
before it is read.

Link types are libpcap's ``LINKTYPE_*`` numbers
(https://www.tcpdump.org/linktypes.html).
"""

from __future__ import annotations

from typing import NamedTuple

# LINKTYPE_* values, https://www.tcpdump.org/linktypes.html
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, version nibble tells which
LINKTYPE_LOOP = 108  # OpenBSD loopback: like NULL but always network byte order
LINKTYPE_LINUX_SLL = 113  # Linux cooked capture v1, 16-byte header
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # Linux cooked capture v2, 20-byte header
#: DLT_RAW as some platforms number it (pcap-common.c: 12 on most BSDs, 14 on OpenBSD)
_RAW_ALIASES = (12, 14)

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "null",
    LINKTYPE_ETHERNET: "ethernet",
    LINKTYPE_RAW: "raw",
    LINKTYPE_LOOP: "loop",
    LINKTYPE_LINUX_SLL: "linux-sll",
    LINKTYPE_IPV4: "ipv4",
    LINKTYPE_IPV6: "ipv6",
    LINKTYPE_LINUX_SLL2: "linux-sll2",
    12: "raw",
    14: "raw",
}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
#: 802.1Q, 802.1ad (QinQ outer tag) and the pre-standard 0x9100 QinQ tag
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
#: address families of IPv6 in DLT_NULL headers (FreeBSD 28, Darwin 30, NetBSD/OpenBSD 24)
_NULL_AF_INET6 = (24, 28, 30)

PROTO_TCP = 6
PROTO_UDP = 17

# IPv6 extension headers we walk over (RFC 8200 §4; AH is RFC 4302 with 4-byte units)
_V6_HOP = 0
_V6_ROUTING = 43
_V6_FRAGMENT = 44
_V6_AH = 51
_V6_DSTOPTS = 60
_V6_MOBILITY = 135
_V6_HIP = 139
_V6_SHIM6 = 140
_V6_GENERIC_EXT = frozenset((_V6_HOP, _V6_ROUTING, _V6_DSTOPTS, _V6_MOBILITY, _V6_HIP, _V6_SHIM6))

# TCP flags (RFC 9293 §3.1)
FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10


class Packet(NamedTuple):
    """The header fields of one IP packet that the sniffer uses (documentation of the tuple).

    :func:`decode` returns a plain tuple in this field order (a plain tuple is
    cheaper to build on the hot path). Addresses are the raw 4 or 16 bytes
    (turned into text only when a flow is reported). ``l4`` is the offset of the
    transport header, ``start``/``end`` bound the transport payload. ``frag`` is
    None for an unfragmented packet, else (0, more-fragments, id) for a first
    fragment.
    """

    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    flags: int
    l4: int
    start: int
    end: int
    frag: tuple[int, bool, int] | None
    vlan: int


#: what :func:`decode` returns for a TCP/UDP packet, field order of :class:`Packet`
PacketTuple = tuple[
    bytes, bytes, int, int, int, int, int, int, int, tuple[int, bool, int] | None, int
]


def tcp_seq(data: bytes, l4: int) -> int:
    """The TCP sequence number of the segment whose header starts at ``l4``."""
    return int.from_bytes(data[l4 + 4 : l4 + 8], "big")


class Fragment(NamedTuple):
    """A non-first IP fragment: no transport header, attributed to its flow by (src, dst, id).

    ``offset`` is the fragment's place in the original transport payload (bytes),
    ``more`` the more-fragments flag, ``start`` where its bytes begin in the frame.
    """

    src: bytes
    dst: bytes
    proto: int
    ident: int
    length: int
    offset: int = 0
    more: bool = False
    start: int = 0


def link_offset(data: bytes, linktype: int) -> tuple[int, int, int] | str:
    """(ethertype or 4/6, offset of the IP header, VLAN tag count) or a malformed reason."""
    n = len(data)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return "truncated-link"
        et = data[12] << 8 | data[13]
        off = 14
        tags = 0
        while et in _VLAN_TYPES:
            if n < off + 4 or tags >= 4:
                return "truncated-link"
            et = data[off + 2] << 8 | data[off + 3]
            off += 4
            tags += 1
        return et, off, tags
    if linktype == LINKTYPE_RAW or linktype in _RAW_ALIASES:
        if n < 1:
            return "truncated-link"
        v = data[0] >> 4
        return (ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else v), 0, 0
    if linktype == LINKTYPE_LINUX_SLL:
        # pcap-linktype(7) LINKTYPE_LINUX_SLL: protocol type at bytes 14-15
        if n < 16:
            return "truncated-link"
        return data[14] << 8 | data[15], 16, 0
    if linktype == LINKTYPE_LINUX_SLL2:
        # LINKTYPE_LINUX_SLL2: protocol type at bytes 0-1, header is 20 bytes
        if n < 20:
            return "truncated-link"
        return data[0] << 8 | data[1], 20, 0
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return "truncated-link"
        if linktype == LINKTYPE_LOOP:
            fam = int.from_bytes(data[:4], "big")
        else:
            # host byte order of the writer: the family is small, so whichever end is nonzero
            fam = int.from_bytes(data[:4], "little")
            if fam > 0xFFFF:
                fam = int.from_bytes(data[:4], "big")
        if fam == 2:
            return ETH_IPV4, 4, 0
        if fam in _NULL_AF_INET6:
            return ETH_IPV6, 4, 0
        return "skip:not-ip"
    if linktype == LINKTYPE_IPV4:
        return ETH_IPV4, 0, 0
    if linktype == LINKTYPE_IPV6:
        return ETH_IPV6, 0, 0
    return "unsupported-linktype"


def decode(data: bytes, linktype: int) -> PacketTuple | Fragment | str:
    """Decode one captured frame: a :class:`Packet`-ordered tuple, a Fragment, or a reason.

    Reasons starting with ``skip:`` are well-formed traffic the sniffer does not
    follow (ARP, ICMP ...); the others are malformed or truncated packets.
    """
    n = len(data)
    # fast path: untagged Ethernet, by far the most common frame
    if (
        linktype == LINKTYPE_ETHERNET
        and n >= 14
        and ((et := data[12] << 8 | data[13]) == ETH_IPV4 or et == ETH_IPV6)
    ):
        off = 14
        vlan = 0
    else:
        lk = link_offset(data, linktype)
        if isinstance(lk, str):
            return lk
        et, off, vlan = lk
    if et == ETH_IPV4:
        if n < off + 20:
            return "truncated-ip"
        b0 = data[off]
        if b0 >> 4 != 4:
            return "bad-ip-version"
        ihl = (b0 & 0x0F) * 4
        if ihl < 20:
            return "bad-ip-header-length"
        total = data[off + 2] << 8 | data[off + 3]
        end = off + total
        if total < ihl:
            return "bad-ip-length"
        if end > n:
            # snaplen cut: parse what we have, the flow still counts
            end = n
        l4 = off + ihl
        if l4 > end:
            return "truncated-ip"
        proto = data[off + 9]
        src = data[off + 12 : off + 16]
        dst = data[off + 16 : off + 20]
        fw = data[off + 6] << 8 | data[off + 7]
        frag: tuple[int, bool, int] | None = None
        if fw & 0x3FFF:  # MF set or a nonzero offset (RFC 791 §3.1)
            ident = data[off + 4] << 8 | data[off + 5]
            foff = (fw & 0x1FFF) * 8
            if foff:
                return Fragment(src, dst, proto, ident, end - l4, foff, bool(fw & 0x2000), l4)
            frag = (0, bool(fw & 0x2000), ident)
    elif et == ETH_IPV6:
        if n < off + 40:
            return "truncated-ip"
        if data[off] >> 4 != 6:
            return "bad-ip-version"
        plen = data[off + 4] << 8 | data[off + 5]
        end = off + 40 + plen
        if end > n:
            end = n
        proto = data[off + 6]
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        l4 = off + 40
        frag = None
        hops = 0
        while True:
            if proto in _V6_GENERIC_EXT:
                if l4 + 8 > end:
                    return "truncated-ipv6-ext"
                proto, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
            elif proto == _V6_FRAGMENT:
                # RFC 8200 §4.5: next header, reserved, offset(13)|res(2)|M(1), id(32)
                if l4 + 8 > end:
                    return "truncated-ipv6-ext"
                fo = data[l4 + 2] << 8 | data[l4 + 3]
                ident = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
                nxt = data[l4]
                l4 += 8
                if fo & 0xFFF8:
                    return Fragment(
                        src, dst, nxt, ident, max(0, end - l4), fo & 0xFFF8, bool(fo & 1), l4
                    )
                if fo & 1:
                    frag = (0, True, ident)
                proto = nxt
            elif proto == _V6_AH:
                if l4 + 8 > end:
                    return "truncated-ipv6-ext"
                proto, l4 = data[l4], l4 + (data[l4 + 1] + 2) * 4
            else:
                break
            hops += 1
            if hops > 16:
                return "too-many-ipv6-ext"
        if l4 > end:
            return "truncated-ipv6-ext"
    else:
        return "skip:ethertype"
    if proto == PROTO_TCP:
        if l4 + 20 > end:
            return "truncated-tcp"
        doff = (data[l4 + 12] >> 4) * 4
        if doff < 20:
            return "bad-tcp-offset"
        if l4 + doff > end:
            return "truncated-tcp"
        return (
            src,
            dst,
            PROTO_TCP,
            data[l4] << 8 | data[l4 + 1],
            data[l4 + 2] << 8 | data[l4 + 3],
            data[l4 + 13],
            l4,
            l4 + doff,
            end,
            frag,
            vlan,
        )
    if proto == PROTO_UDP:
        if l4 + 8 > end:
            return "truncated-udp"
        ulen = data[l4 + 4] << 8 | data[l4 + 5]
        uend = end
        if ulen >= 8 and l4 + ulen <= end:
            uend = l4 + ulen  # trust the UDP length inside the IP packet (Ethernet padding)
        elif ulen < 8 and not (ulen == 0 and et == ETH_IPV6):  # 0 = jumbogram (RFC 2675)
            return "bad-udp-length"
        return (
            src,
            dst,
            PROTO_UDP,
            data[l4] << 8 | data[l4 + 1],
            data[l4 + 2] << 8 | data[l4 + 3],
            0,
            l4,
            l4 + 8,
            uend,
            frag,
            vlan,
        )
    return "skip:ip-proto"

"""DNS parsing and the address → name cache: CNAME chains, HTTPS hints, TTLs, DNS over TCP."""

from __future__ import annotations

import ipaddress

import pytest
from helpers.packets import (
    client_hello,
    dns_query,
    dns_response,
    feed,
    tcp_flow,
    tls_records,
    udp_packet,
)
from helpers.sniffer_fakes import RecordingInspector

from egresswatch.sniffer import Sniffer
from egresswatch.sniffer.dns import DnsCache, parse_message, read_name

RES = "198.51.100.53"


def raw(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def test_cname_chain_names_address_by_question() -> None:
    msg = parse_message(
        dns_response(
            "api.chat.example",
            ["lb.example.net", "edge.cdn.example"],
            ["203.0.113.7"],
            ["2001:db8::7"],
            ttl=120,
        )
    )
    assert msg.response and [q.name for q in msg.questions] == ["api.chat.example"]
    cache = DnsCache(grace=0)
    learned = dict(cache.learn(msg, now=100.0))
    assert set(learned) == {"203.0.113.7", "2001:db8::7"}
    res = cache.lookup(raw("203.0.113.7"), 150.0)
    assert res is not None
    assert res.name == "api.chat.example"
    assert res.chain == ("api.chat.example", "lb.example.net", "edge.cdn.example")
    assert res.via == "A"
    assert cache.lookup(raw("203.0.113.7"), 221.0) is None  # TTL 120 ran out


def test_grace_keeps_stale_names_a_while() -> None:
    cache = DnsCache(grace=60)
    cache.learn(parse_message(dns_response("a.example", (), ["203.0.113.8"], ttl=10)), 0.0)
    assert cache.lookup(raw("203.0.113.8"), 69.0) is not None
    assert cache.lookup(raw("203.0.113.8"), 71.0) is None


def test_https_record_hints() -> None:
    msg = parse_message(
        dns_response(
            "svc.example", (), qtype="HTTPS", https_hints=(["203.0.113.9"], ["2001:db8::9"])
        )
    )
    learned = DnsCache().learn(msg, 0.0)
    assert sorted((a, r.via) for a, r in learned) == [
        ("2001:db8::9", "HTTPS-hint"),
        ("203.0.113.9", "HTTPS-hint"),
    ]


def test_cache_is_bounded_and_counts_evictions() -> None:
    cache = DnsCache(max_entries=2)
    for i in range(4):
        cache.learn(parse_message(dns_response(f"n{i}.example", (), [f"203.0.113.{i}"])), 0.0)
    assert len(cache) == 2 and cache.evictions == 2
    assert cache.lookup(raw("203.0.113.0"), 1.0) is None
    assert cache.lookup(raw("203.0.113.3"), 1.0) is not None


def test_compression_loop_and_truncation_raise_valueerror() -> None:
    with pytest.raises(ValueError):
        read_name(b"\xc0\x00", 0)  # pointer to itself
    good = dns_response("a.example", ("b.example",), ["203.0.113.1"])
    for cut in (5, 13, 20, len(good) - 2):
        with pytest.raises(ValueError):
            parse_message(good[:cut])


def test_later_flow_is_named_from_dns() -> None:
    insp = RecordingInspector()
    sn = Sniffer(insp.inspect)
    pkts = [
        udp_packet("192.0.2.1", RES, 33000, 53, dns_query("model.example.ai")),
        udp_packet(
            RES,
            "192.0.2.1",
            53,
            33000,
            dns_response("model.example.ai", ["x.cdn.example"], ["203.0.113.30"]),
        ),
    ]
    # a TCP flow to that address on an odd port, carrying no name of its own
    pkts += tcp_flow("192.0.2.1", "203.0.113.30", 40000, 9999, b"\x00\x01binary")
    feed(sn, pkts)
    sn.close()
    by_proto = {str(o.protocol): o for o in insp.seen}
    assert by_proto["raw"].dns_name == "model.example.ai"
    assert by_proto["raw"].dst_port == 9999
    dns_obs = by_proto["dns"]
    assert dns_obs.dst_addr == RES and dns_obs.dns_name is None
    assert ("dns-query", "model.example.ai A") in dns_obs.headers


def test_dns_over_tcp_split_messages() -> None:
    """Two length-prefixed queries in one stream, answers split across segments."""
    summaries = []
    sn = Sniffer(on_flow_end=summaries.append)
    q = dns_query("t1.example", ident=1)
    q2 = dns_query("t2.example", "AAAA", ident=2)
    r = dns_response("t1.example", (), ["203.0.113.41"], ident=1)
    r2 = dns_response("t2.example", (), (), ["2001:db8::42"], qtype="AAAA", ident=2)

    def framed(m: bytes) -> bytes:
        return len(m).to_bytes(2, "big") + m

    pkts = tcp_flow(
        "192.0.2.1",
        RES,
        40001,
        53,
        framed(q) + framed(q2),
        server_data=framed(r) + framed(r2),
        mss=25,
    )
    feed(sn, pkts)
    assert sn.dns.lookup(raw("203.0.113.41"), 1001.0) is not None
    assert sn.dns.lookup(raw("2001:db8::42"), 1001.0).name == "t2.example"  # type: ignore[union-attr]
    sn.close()
    (s,) = summaries
    assert s.protocol == "dns" and s.transport == "tcp"
    assert [n for n, _ in s.dns_queries] == ["t1.example", "t2.example"]
    assert {a for a, *_ in s.dns_answers} == {"203.0.113.41", "2001:db8::42"}


def test_dot_and_doh_are_marked() -> None:
    summaries = []
    sn = Sniffer(on_flow_end=summaries.append)
    pkts = tcp_flow(
        "192.0.2.1", "198.51.100.9", 40002, 853, tls_records(client_hello("dot.example.net"))
    )
    pkts += tcp_flow(
        "192.0.2.1", "198.51.100.10", 40003, 443, tls_records(client_hello("dns.google"))
    )
    pkts += tcp_flow(
        "192.0.2.1", "198.51.100.11", 40004, 443, tls_records(client_hello("chat.example.com"))
    )
    feed(sn, pkts)
    sn.close()
    marks = {s.sni: (s.encrypted_dns, s.resolver) for s in summaries}
    assert marks == {
        "dot.example.net": ("dot", None),
        "dns.google": ("doh", "Google"),
        "chat.example.com": (None, None),
    }


def test_on_dns_reports_each_learned_address() -> None:
    got = []
    sn = Sniffer(on_dns=got.append)
    feed(
        sn,
        [
            udp_packet(
                RES,
                "192.0.2.1",
                53,
                33001,
                dns_response("m.example", ["c.example"], ["203.0.113.60"], ttl=30),
            )
        ],
    )
    (a,) = got
    assert (a.client_addr, a.qname, a.rtype, a.answer, a.ttl) == (
        "192.0.2.1",
        "m.example",
        "A",
        "203.0.113.60",
        30,
    )
    assert a.chain == ("m.example", "c.example")


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_ip_fragmented_dns_answer_is_reassembled(v6: bool, reverse: bool) -> None:
    """A big EDNS0 answer split by IP (v4 fragments or the v6 Fragment header)."""
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
    from scapy.packet import Raw

    addrs = [f"203.0.113.{i}" for i in range(1, 200)]
    answer = dns_response("many.example", ("lb.example",), addrs, ttl=60)
    assert len(answer) > 3000
    if v6:
        pkt = (
            IPv6(src="2001:db8::53", dst="2001:db8::1")
            / IPv6ExtHdrFragment(id=77)
            / UDP(sport=53, dport=33002)
            / Raw(answer)
        )
        frags = fragment6(pkt, 1280)
    else:
        pkt = IP(src=RES, dst="192.0.2.1", id=77) / UDP(sport=53, dport=33002) / Raw(answer)
        frags = fragment(pkt, fragsize=1200)
    rest = frags[1:][::-1] if reverse else frags[1:]
    sn = Sniffer()
    feed(sn, [bytes(frags[0]), *(bytes(f) for f in rest)], linktype=101)
    assert sn.stats.fragments_reassembled == 1
    res = sn.dns.lookup(raw("203.0.113.150"), 1001.0)
    assert res is not None and res.chain == ("many.example", "lb.example")
    assert sn.stats.dns_addresses_learned == len(addrs)


def test_incomplete_fragments_expire_counted() -> None:
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.packet import Raw

    answer = dns_response("x.example", (), [f"203.0.113.{i}" for i in range(1, 200)])
    frags = fragment(
        IP(src=RES, dst="192.0.2.1", id=78) / UDP(sport=53, dport=33003) / Raw(answer),
        fragsize=1200,
    )
    sn = Sniffer()
    feed(sn, [bytes(frags[0])], linktype=101, t0=0.0)
    feed(sn, [udp_packet("192.0.2.1", "203.0.113.5", 1, 2, b"x")], t0=10.0)
    assert sn.stats.malformed["fragments-incomplete"] == 1


def test_encrypted_dns_marks_reach_the_decision_as_flags() -> None:
    from egresswatch.catalog import Catalog
    from egresswatch.geo import GeoChain
    from egresswatch.inspector import Inspector
    from egresswatch.policy import Policy

    inspector = Inspector(GeoChain(), Catalog.load(), Policy.default())
    seen = []

    def inspect(obs):  # type: ignore[no-untyped-def]
        d = inspector.inspect(obs)
        seen.append(d)
        return d

    sn = Sniffer(inspect)
    pkts = tcp_flow(
        "192.0.2.1", "198.51.100.9", 40002, 853, tls_records(client_hello("dot.example.net"))
    )
    pkts += tcp_flow(
        "192.0.2.1", "198.51.100.10", 40003, 443, tls_records(client_hello("dns.google"))
    )
    pkts += tcp_flow(
        "192.0.2.1", "198.51.100.11", 40004, 443, tls_records(client_hello("chat.example.com"))
    )
    feed(sn, pkts)
    sn.close()
    flags = {d.observation.sni: set(d.assessment.flags) for d in seen}
    assert "dot" in flags["dot.example.net"]
    assert "doh" in flags["dns.google"]
    assert not {"dot", "doh", "doq"} & flags["chat.example.com"]

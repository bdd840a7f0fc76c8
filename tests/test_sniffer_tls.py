"""TLS ClientHello parsing: SNI, ALPN, ECH, records and segments, bad input."""

from __future__ import annotations

import pytest
from helpers.packets import RecordingSink, client_hello, feed, tcp_flow, tls_records
from helpers.sniffer_fakes import RecordingInspector

from egresswatch.sniffer import Sniffer
from egresswatch.sniffer.tls import handshake_from_records, parse_client_hello


def test_parse_sni_alpn_and_size() -> None:
    msg = client_hello("Chat.Example.COM.", ("h2", "http/1.1"))
    hello = parse_client_hello(msg)
    assert hello.sni == "chat.example.com"  # lower case, no trailing dot
    assert hello.alpn == ("h2", "http/1.1")
    assert not hello.ech
    assert hello.version == 0x0303
    # the X25519MLKEM768 share alone is 1216 bytes
    assert hello.length > 1400
    # with the GREASE ECH extension browsers add, it no longer fits one 1460-byte segment
    assert len(tls_records(client_hello("chat.example.com", grease_ech=True))) > 1460


def test_ech_outer_name() -> None:
    hello = parse_client_hello(client_hello("public.example.net", ech=True))
    assert hello.ech and hello.sni == "public.example.net"


def test_no_sni_is_a_case_not_an_error() -> None:
    hello = parse_client_hello(client_hello(None, ()))
    assert hello.sni is None and hello.alpn == ()


def test_handshake_split_over_records() -> None:
    msg = client_hello("split.example.org")
    stream = tls_records(msg, record_size=100)
    assert stream.count(b"\x16\x03\x01") >= len(msg) // 100
    assert handshake_from_records(stream) == msg
    # every prefix is "need more", never an error
    for cut in (0, 3, 5, 50, 105, len(stream) - 1):
        assert handshake_from_records(stream[:cut]) is None


@pytest.mark.parametrize(
    "stream",
    [
        b"\x17\x03\x03\x00\x10" + b"\x00" * 16,  # application data first
        b"\x16\x02\x00\x00\x10" + b"\x00" * 16,  # not TLS 1.x
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
        b"\x16\x03\x01\x00\x00",  # empty record
    ],
)
def test_not_a_clienthello_raises_valueerror(stream: bytes) -> None:
    with pytest.raises(ValueError):
        handshake_from_records(stream)


def test_truncated_hello_body_raises_valueerror() -> None:
    msg = bytearray(client_hello("a.example"))
    msg[4 + 2 + 32] = 200  # session id length runs past the cipher suites
    with pytest.raises(ValueError):
        parse_client_hello(bytes(msg))


@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("record_size", [16384, 700])
def test_multi_segment_hello_through_the_sniffer(reorder: bool, record_size: int) -> None:
    """A 1.5 KB hello in 536-byte segments (optionally out of order) across records."""
    sink = RecordingSink()
    seen = []

    def inspect(obs):  # type: ignore[no-untyped-def]
        seen.append(obs)
        return _decision(obs)

    sn = Sniffer(inspect, sink)
    data = tls_records(client_hello("big.example.com", ("h2",)), record_size)
    pkts = tcp_flow(
        "192.0.2.1",
        "203.0.113.10",
        41000,
        443,
        data,
        mss=536,
        reorder=reorder,
        server_data=b"\x16\x03\x03\x00\x02ok",
    )
    assert sum(1 for p in pkts if p.haslayer("Raw")) >= 4
    feed(sn, pkts)
    sn.close()
    assert [o.sni for o in seen] == ["big.example.com"]
    obs = seen[0]
    assert obs.alpn == ("h2",)
    assert str(obs.protocol) == "tls" and str(obs.stage) == "clienthello"
    assert obs.dst_addr == "203.0.113.10" and obs.dst_port == 443
    assert obs.client_addr == "192.0.2.1" and obs.client_port == 41000
    assert sn.stats.malformed == {}
    assert [c.bytes_out for c in sink.closed] == [len(data)]
    assert sink.closed[0].flow_id == obs.flow_id and sink.closed[0].status == "fin"


def test_browser_sized_hello_in_full_size_segments() -> None:
    inspector = RecordingInspector()
    sn = Sniffer(inspector.inspect)
    data = tls_records(client_hello("pq.example.com", grease_ech=True))
    pkts = tcp_flow("192.0.2.1", "203.0.113.10", 41003, 443, data, mss=1460)
    assert sum(1 for p in pkts if p.haslayer("Raw")) == 2
    feed(sn, pkts)
    sn.close()
    # GREASE ECH is indistinguishable from real ECH on the wire (by design), so it is flagged
    assert [(o.sni, o.ech) for o in inspector.seen] == [("pq.example.com", True)]


def test_ech_flow_marked_and_sni_is_outer() -> None:
    seen = []
    sn = Sniffer(lambda o: seen.append(o) or _decision(o))
    feed(
        sn,
        tcp_flow(
            "192.0.2.1",
            "203.0.113.10",
            41001,
            443,
            tls_records(client_hello("cover.example.net", ech=True)),
        ),
    )
    sn.close()
    assert seen[0].ech and seen[0].sni == "cover.example.net"


def test_garbage_after_0x16_counts_and_still_judges() -> None:
    seen = []
    sn = Sniffer(lambda o: seen.append(o) or _decision(o))
    feed(sn, tcp_flow("192.0.2.1", "203.0.113.10", 41002, 443, b"\x16\x03\x01\x00\x05\x02abcd"))
    sn.close()
    assert sn.stats.malformed["tls-clienthello"] == 1
    assert len(seen) == 1 and seen[0].sni is None


def _decision(obs):  # type: ignore[no-untyped-def]
    from helpers.sniffer_fakes import decision_for

    return decision_for(obs)

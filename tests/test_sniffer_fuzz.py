"""Hypothesis: truncated real packets plus random bytes never raise out of any sniffer parser.

Each parser may return a result or raise ValueError (its documented failure);
the sniffer's ``feed`` may raise nothing at all.
"""

from __future__ import annotations

import contextlib
import os

from helpers.packets import (
    client_hello,
    crypto_frame,
    dns_query,
    dns_response,
    quic_initial,
    tcp_flow,
    tls_records,
    udp_packet,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egresswatch.sniffer import Sniffer
from egresswatch.sniffer import dns as dnsmod
from egresswatch.sniffer import http as httpmod
from egresswatch.sniffer import quic as quicmod
from egresswatch.sniffer import tls as tlsmod
from egresswatch.sniffer.decode import SUPPORTED_LINKTYPES, decode
from egresswatch.sniffer.flows import Stream

HELLO = tls_records(client_hello("fuzz.example.com", ("h2",), ech=True), 600)
HELLO_MSG = client_hello("fuzz.example.com")
DNS_MSG = dns_response(
    "a.example",
    ("b.example", "c.example"),
    ["203.0.113.1"],
    ["2001:db8::1"],
    https_hints=(["203.0.113.2"], []),
)
QUIC_DG = quic_initial(crypto_frame(0, client_hello("q.example", quic=True)), os.urandom(8))
HTTP = b"POST /v1/chat HTTP/1.1\r\nHost: x.example\r\nContent-Length: 4\r\n\r\nbody"
FRAMES = [
    bytes(p)
    for p in [
        *tcp_flow("192.0.2.1", "203.0.113.10", 40000, 443, HELLO, mss=400, vlan=[5]),
        *tcp_flow("2001:db8::1", "2001:db8::2", 40001, 80, HTTP, ext=True),
        *tcp_flow("192.0.2.1", "203.0.113.10", 40004, 80, HTTP),  # the untagged fast path
        udp_packet("192.0.2.1", "198.51.100.53", 40002, 53, dns_query("a.example")),
        udp_packet("198.51.100.53", "192.0.2.1", 53, 40002, DNS_MSG),
        udp_packet("192.0.2.1", "203.0.113.11", 40003, 443, QUIC_DG),
    ]
]

fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cut_and_noise(real: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(0, len(real)), st.binary(max_size=64)).map(
        lambda t: real[: t[0]] + t[1]
    )


def _only_value_error(fn, data):  # type: ignore[no-untyped-def]
    with contextlib.suppress(ValueError):
        fn(data)


@fuzz
@given(
    data=st.one_of(st.binary(max_size=200), *[cut_and_noise(f) for f in FRAMES[:6]]),
    linktype=st.sampled_from(sorted(SUPPORTED_LINKTYPES)),
)
def test_decode_never_raises(data: bytes, linktype: int) -> None:
    out = decode(data, linktype)
    assert isinstance(out, (tuple, str))


@fuzz
@given(st.one_of(cut_and_noise(HELLO), st.binary(max_size=300)))
def test_tls_record_parser(data: bytes) -> None:
    _only_value_error(tlsmod.handshake_from_records, data)


@fuzz
@given(st.one_of(cut_and_noise(HELLO_MSG), st.binary(max_size=300)))
def test_clienthello_parser(data: bytes) -> None:
    _only_value_error(tlsmod.parse_client_hello, data)


@fuzz
@given(st.one_of(cut_and_noise(DNS_MSG), st.binary(max_size=300)))
def test_dns_parser(data: bytes) -> None:
    _only_value_error(lambda d: dnsmod.DnsCache().learn(dnsmod.parse_message(d), 0.0), data)


@fuzz
@given(st.one_of(cut_and_noise(QUIC_DG), st.binary(max_size=300)))
def test_quic_initial_parser(data: bytes) -> None:
    _only_value_error(quicmod.decrypt_initial, data)


@fuzz
@given(st.binary(max_size=200))
def test_quic_frame_parser(data: bytes) -> None:
    _only_value_error(quicmod.parse_frames, data)


@fuzz
@given(st.one_of(cut_and_noise(HTTP), st.binary(max_size=200)))
def test_http_parser(data: bytes) -> None:
    _only_value_error(httpmod.parse_request, data)


@fuzz
@given(st.lists(st.tuples(st.integers(0, 70_000), st.binary(max_size=40)), max_size=80))
def test_crypto_stream_reassembly(frames: list[tuple[int, bytes]]) -> None:
    s = quicmod.CryptoStream()
    for off, data in frames:
        try:
            s.add(off, data)
        except ValueError:
            break
    assert len(s.buf) <= quicmod.CryptoStream.LIMIT


@fuzz
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40)), max_size=30))
def test_stream_reassembly(segments: list[tuple[int, bytes]]) -> None:
    s = Stream(base=1000, limit=4096)
    for seq, payload in segments:
        s.add(seq, payload)
    assert len(s.buf) <= 4096


@fuzz
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(FRAMES) - 1),
            st.integers(0, 1600),
            st.binary(max_size=40),
            st.integers(0, 1599),
            st.integers(0, 255),
        ),
        max_size=25,
    )
)
def test_sniffer_feed_never_raises(edits: list[tuple[int, int, bytes, int, int]]) -> None:
    """Real frames, truncated, with random tails and a flipped byte, in any order."""
    sn = Sniffer(lambda obs: None, None)  # type: ignore[arg-type,return-value]
    t = 0.0
    for idx, cut, tail, flip_at, flip in edits:
        frame = bytearray(FRAMES[idx][:cut] + tail)
        if frame:
            frame[flip_at % len(frame)] ^= flip
        for linktype in (1, 101, 276):
            sn.feed(t, bytes(frame), linktype)
        t += 0.5
    # the originals still parse after all that noise
    for f in FRAMES:
        sn.feed(t, f)
    sn.close()
    assert sn.stats.packets == 3 * len(edits) + len(FRAMES)
    assert sn.stats.malformed.get("parser-error", 0) == 0
    assert sn.stats.malformed.get("decoder-error", 0) == 0

"""The flow table and judging: orientation, TCP state, timeouts, eviction, HTTP, sinks."""

from __future__ import annotations

import pytest
from helpers.packets import (
    RecordingSink,
    client_hello,
    feed,
    tcp_flow,
    tls_records,
    udp_packet,
)
from helpers.sniffer_fakes import RecordingInspector, decision_for
from scapy.layers.inet import IP, UDP, fragment
from scapy.packet import Raw

from egresswatch.model import Action, Observation, Sensor, Stage
from egresswatch.sniffer import Sniffer, SnifferConfig

HTTP_REQ = (
    b"POST /api/generate?key=secret HTTP/1.1\r\nHost: ollama.lab.example:11434\r\n"
    b"User-Agent: ollama-python/0.3\r\nContent-Type: application/json\r\n"
    b"Content-Length: 38\r\n\r\n"
    b'{"model":"llama3","prompt":"tell me"}\n'
)


def test_plain_http_request_observation() -> None:
    insp = RecordingInspector()
    sink = RecordingSink()
    sn = Sniffer(insp.inspect, sink)
    # the request split so the body arrives in a later segment than the head
    feed(
        sn,
        tcp_flow(
            "192.0.2.1",
            "203.0.113.50",
            40000,
            11434,
            HTTP_REQ,
            mss=150,
            server_data=b"HTTP/1.1 200 OK\r\n\r\n",
        ),
    )
    sn.close()
    (obs,) = insp.seen
    assert obs.sensor is Sensor.SNIFFER and str(obs.protocol) == "http"
    assert obs.stage is Stage.REQUEST
    assert (obs.method, obs.path, obs.http_host) == (
        "POST",
        "/api/generate?key=secret",
        "ollama.lab.example",
    )
    assert obs.header("content-type") == "application/json"
    assert obs.client_app == "ollama-python/0.3"
    assert obs.body == b'{"model":"llama3","prompt":"tell me"}\n'
    assert not obs.body_truncated
    assert len(sink.decisions) == 1 and len(sink.closed) == 1
    assert sink.closed[0].bytes_out == len(HTTP_REQ)
    assert sink.closed[0].bytes_in == len(b"HTTP/1.1 200 OK\r\n\r\n")


def test_keep_alive_request_lines_are_all_recorded() -> None:
    summaries = []
    sn = Sniffer(on_flow_end=summaries.append)
    two = b"GET /a HTTP/1.1\r\nHost: h.example\r\n\r\n"
    pkts = tcp_flow("192.0.2.1", "203.0.113.50", 40001, 80, two)
    later = tcp_flow(
        "192.0.2.1", "203.0.113.50", 40001, 80, b"GET /b HTTP/1.1\r\nHost: h.example\r\n\r\n"
    )
    # splice the second request's data segment (seq after the first) before the FIN
    seg = later[3]
    seg["TCP"].seq = pkts[3]["TCP"].seq + len(two)
    feed(sn, [*pkts[:4], seg, *pkts[4:]])
    sn.close()
    assert summaries[0].http_requests == ("GET /a HTTP/1.1", "GET /b HTTP/1.1")


def test_orientation_when_the_syn_was_missed() -> None:
    insp = RecordingInspector()
    sn = Sniffer(insp.inspect)
    pkts = tcp_flow(
        "192.0.2.1",
        "203.0.113.10",
        45000,
        443,
        tls_records(client_hello("late.example")),
        server_data=b"\x16\x03\x03\x00\x01x",
    )
    # start capturing after the handshake: the first packet seen is the server's SYN-ACK
    feed(sn, pkts[1:])
    sn.close()
    (obs,) = insp.seen
    assert (obs.client_addr, obs.client_port, obs.dst_addr, obs.dst_port) == (
        "192.0.2.1",
        45000,
        "203.0.113.10",
        443,
    )
    assert obs.sni == "late.example"


def test_reset_closes_and_reports_once() -> None:
    sink = RecordingSink()
    sn = Sniffer(RecordingInspector().inspect, sink)
    feed(
        sn,
        tcp_flow(
            "192.0.2.1",
            "203.0.113.10",
            45001,
            443,
            tls_records(client_hello("r.example")),
            close="rst",
        ),
    )
    assert [c.status for c in sink.closed] == ["reset"]
    sn.close()
    assert len(sink.closed) == 1 and sn.stats.flows_finished == 1


def test_syn_only_flow_is_judged_when_it_ends() -> None:
    insp = RecordingInspector()
    sink = RecordingSink()
    sn = Sniffer(insp.inspect, sink)
    feed(sn, tcp_flow("192.0.2.1", "203.0.113.99", 45002, 8443, b"", close="none")[:1])
    assert insp.seen == []
    sn.close()
    (obs,) = insp.seen
    assert obs.stage is Stage.CONNECT and str(obs.protocol) == "raw"
    assert sink.closed[0].status == "end-of-capture"


def test_idle_timeout_finishes_flows() -> None:
    sink = RecordingSink()
    sn = Sniffer(
        RecordingInspector().inspect,
        sink,
        config=SnifferConfig(idle_timeout=10, udp_idle_timeout=5),
    )
    feed(sn, [udp_packet("192.0.2.1", "203.0.113.5", 5000, 7000, b"\x01\x02")], t0=0.0)
    assert len(sn.flows) == 1
    feed(sn, [udp_packet("192.0.2.2", "203.0.113.5", 5000, 7000, b"x")], t0=6.0)
    assert [c.status for c in sink.closed] == ["idle"]
    assert len(sn.flows) == 1


def test_table_is_bounded_and_evictions_counted() -> None:
    sink = RecordingSink()
    sn = Sniffer(RecordingInspector().inspect, sink, config=SnifferConfig(max_flows=16))
    feed(sn, [udp_packet("192.0.2.1", "203.0.113.5", 5000 + i, 7000, b"x") for i in range(20)])
    assert len(sn.flows) == 16
    assert sn.stats.evictions == 4
    assert [c.status for c in sink.closed] == ["evicted"] * 4


def test_fragments_are_counted_and_attributed() -> None:
    summaries = []
    sn = Sniffer(on_flow_end=summaries.append)
    frags = fragment(
        IP(src="192.0.2.1", dst="203.0.113.6", id=7)
        / UDP(sport=6000, dport=7001)
        / Raw(b"z" * 3000),
        fragsize=1000,
    )
    feed(sn, [bytes(f) for f in frags], linktype=101)
    sn.close()
    assert sn.stats.fragments == len(frags) == 4
    (s,) = summaries
    assert s.packets_out == 4 and s.bytes_out == 3000  # the UDP payload, all fragments


def test_inspector_and_sink_failures_are_counted_not_raised() -> None:
    class BadSink(RecordingSink):
        def record(self, decision: object) -> None:
            raise RuntimeError("disk full")

    def bad_inspect(obs: Observation) -> object:
        raise RuntimeError("bug")

    sn = Sniffer(bad_inspect, RecordingSink())  # type: ignore[arg-type]
    feed(sn, tcp_flow("192.0.2.1", "203.0.113.10", 45003, 443, tls_records(client_hello("a.b"))))
    assert sn.stats.inspector_errors == 1
    sn2 = Sniffer(lambda o: decision_for(o, Action.BLOCK), BadSink())
    feed(sn2, tcp_flow("192.0.2.1", "203.0.113.10", 45004, 443, tls_records(client_hello("a.b"))))
    assert sn2.stats.sink_errors == 1 and sn2.stats.decisions == 1


def test_summary_keeps_what_a_bypass_check_needs() -> None:
    summaries = []
    sn = Sniffer(RecordingInspector().inspect, on_flow_end=summaries.append)
    feed(
        sn,
        tcp_flow(
            "192.0.2.1",
            "203.0.113.10",
            45005,
            443,
            tls_records(client_hello("k.example")),
            vlan=[42],
        ),
    )
    sn.close()
    (s,) = summaries
    assert s.match_key == ("tcp", "192.0.2.1", 45005, "203.0.113.10", 443)
    assert s.first_seen <= s.last_seen
    assert s.names == (("k.example", "sni"),)
    assert s.flow_id and s.decision is not None and s.decision.observation.flow_id == s.flow_id
    assert s.vlan == 1
    d = s.to_dict()
    assert d["names"] == [{"name": "k.example", "source": "sni"}]
    assert d["decision"]["verdict"]["action"] == "allow"


def _summaries(frames: list[bytes], linktype: int) -> list[dict]:  # type: ignore[type-arg]
    out: list = []  # type: ignore[type-arg]
    sn = Sniffer(on_flow_end=out.append)
    feed(sn, frames, linktype=linktype)
    sn.close()
    rows = []
    for s in out:
        d = s.to_dict()
        d.pop("flow_id")
        rows.append(d)
    return rows


def test_fast_path_and_full_decoder_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Untagged Ethernet IPv4/IPv6 frames take the one-struct fast path; the same packets as
    raw IP take decode(). Both must produce identical flows."""
    import egresswatch.sniffer.engine as engine

    calls = []
    real_decode = engine.decode
    monkeypatch.setattr(engine, "decode", lambda d, lt: calls.append(lt) or real_decode(d, lt))
    pkts = []
    for client, server in (("192.0.2.1", "203.0.113.10"), ("2001:db8::1", "2001:db8::10")):
        pkts += tcp_flow(
            client,
            server,
            40000,
            443,
            tls_records(client_hello("eq.example")),
            mss=500,
            server_data=b"\x16\x03\x03\x00\x01x",
        )
        pkts += tcp_flow(client, server, 40001, 80, HTTP_REQ)
        pkts.append(udp_packet(client, server, 40002, 9999, b"\x01\x02\x03"))
    eth = [bytes(p) for p in pkts]
    raw = [bytes(p.payload) for p in pkts]  # strip Ethernet: raw IP
    fast = _summaries(eth, 1)
    # only the two tiny UDP frames (shorter than the fast path's header) went to decode()
    assert calls == [1, 1]
    slow = _summaries(raw, 101)
    assert len(calls) == 2 + len(raw)
    assert len(fast) == 6
    assert fast == slow


def test_tick_ends_idle_flows_on_a_quiet_link() -> None:
    sink = RecordingSink()
    sn = Sniffer(RecordingInspector().inspect, sink, config=SnifferConfig(udp_idle_timeout=5))
    feed(sn, [udp_packet("192.0.2.1", "203.0.113.5", 5000, 7000, b"x")], t0=100.0)
    sn.tick(103.0)
    assert sink.closed == []
    sn.tick(106.0)
    assert [c.status for c in sink.closed] == ["idle"] and not sn.flows


def test_port_reuse_after_close_is_a_new_flow() -> None:
    insp = RecordingInspector()
    sink = RecordingSink()
    sn = Sniffer(insp.inspect, sink)
    first = tcp_flow(
        "192.0.2.1", "203.0.113.10", 46000, 443, tls_records(client_hello("one.example"))
    )
    second = tcp_flow(
        "192.0.2.1", "203.0.113.10", 46000, 443, tls_records(client_hello("two.example"))
    )
    feed(sn, first + second)  # the second SYN comes within the closed flow's linger
    sn.close()
    assert [o.sni for o in insp.seen] == ["one.example", "two.example"]
    assert [c.status for c in sink.closed] == ["fin", "fin"]
    assert sn.stats.flows_created == 2

"""The sniffer: packets in, flows judged by the shared inspector, byte counts to the sinks.

:meth:`Sniffer.feed` is the hot path: decode headers, find the flow, count
bytes; payload is looked at only until the flow's name is known (the first
flight: DNS, ClientHello, QUIC Initials, HTTP request head). As soon as a flow
has its name it becomes an :class:`~egresswatch.model.Observation` (sensor
``sniffer``) for the injected inspector, and the Decision goes to the sink; when
the flow ends (FIN/RST, idle timeout, eviction, end of capture) the sink gets a
:class:`~egresswatch.model.FlowClosed` with the final counts.

Bad input never escapes: every packet either counts as a flow packet, as
skipped (not IP/TCP/UDP) or as malformed under a reason.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from egresswatch.model import (
    Decision,
    FlowClosed,
    Observation,
    Protocol,
    Sensor,
    Stage,
    Transport,
)
from egresswatch.ports import Sink
from egresswatch.sniffer import dns as dnsmod
from egresswatch.sniffer import http as httpmod
from egresswatch.sniffer import quic as quicmod
from egresswatch.sniffer import tls as tlsmod
from egresswatch.sniffer.decode import (
    FIN,
    LINKTYPE_ETHERNET,
    PROTO_TCP,
    PROTO_UDP,
    RST,
    SYN,
    Fragment,
    decode,
    tcp_seq,
)
from egresswatch.sniffer.flows import Flow, FlowKey, FlowSummary, Stream
from egresswatch.sniffer.resolvers import DOT_PORT, resolver_by_address, resolver_by_name

log = logging.getLogger(__name__)

#: Ethernet + IPv4 (IHL 5) + the first 14 bytes of TCP, network byte order (RFC 791 §3.1,
#: RFC 9293 §3.1): ethertype, version/IHL, total length, flags/fragment offset, protocol,
#: source, destination, source port, destination port, data offset, TCP flags. For UDP the
#: last two fields are payload bytes and are ignored.
_FAST_V4 = struct.Struct("!12xHBxH2xHxB2x4s4sHH8xBB")
#: the same for IPv6 without extension headers (RFC 8200 §3): version/class byte, payload
#: length, next header, source, destination, then the TCP fields as above
_FAST_V6 = struct.Struct("!14xB3xHBx16s16sHH8xBB")

#: the inspector as the sniffer needs it: ``Inspector.inspect`` or any function like it
InspectFn = Callable[[Observation], Decision]

DNS_PORTS = frozenset((53, 5353, 5355))  # DNS, mDNS (RFC 6762), LLMNR (RFC 4795)
#: ports that are almost always the server side, to orient flows picked up mid-stream
SERVER_PORTS = frozenset((53, 80, 443, 853, 8080, 8443, 3128, 11434, 5353, 5355))
_APP_PROTOCOL = {
    "tls": Protocol.TLS,
    "quic": Protocol.QUIC,
    "http": Protocol.HTTP,
    "dns": Protocol.DNS,
    "raw": Protocol.RAW,
}


class DnsAnswer(NamedTuple):
    """One address learned from a DNS response (for the store's ``dns_answers`` table)."""

    time: float
    client_addr: str
    #: the name the client asked for
    qname: str
    #: A | AAAA | HTTPS-hint | SVCB-hint
    rtype: str
    answer: str
    #: seconds, as answered (the chain's smallest TTL)
    ttl: int
    #: CNAME chain from qname to the record's owner
    chain: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SnifferConfig:
    """Knobs of the flow table and parsers. Times are seconds of capture time."""

    #: flows in the table at most; the oldest is evicted (and counted) beyond it
    max_flows: int = 100_000
    #: a TCP flow silent this long is finished
    idle_timeout: float = 120.0
    #: a UDP flow silent this long is finished (DNS flows: ``dns_idle_timeout``)
    udp_idle_timeout: float = 60.0
    dns_idle_timeout: float = 5.0
    #: a TCP flow stays this long after FIN/FIN or RST to absorb the last ACKs
    closed_linger: float = 2.0
    #: how much of a plain HTTP body goes to the classifier
    body_limit: int = 4096
    #: client Initials of one QUIC flow tried before giving up on its name
    quic_max_packets: int = 8
    dns_cache_size: int = 65_536
    dns_grace: float = 60.0
    #: how often (capture time) idle flows are swept
    sweep_interval: float = 1.0


@dataclass(slots=True)
class SnifferStats:
    """Counters of the sniffer itself (exported as metrics by the metrics module)."""

    packets: int = 0
    bytes: int = 0
    #: well-formed packets the sniffer does not follow (ARP, ICMP, other IP protocols)
    skipped: int = 0
    #: malformed or truncated packets (and payloads) by reason
    malformed: Counter[str] = field(default_factory=Counter)
    fragments: int = 0
    fragments_reassembled: int = 0
    flows_created: int = 0
    flows_finished: int = 0
    evictions: int = 0
    dns_messages: int = 0
    dns_addresses_learned: int = 0
    #: names found, by where they came from (sni, quic-sni, http-host, dns)
    names: Counter[str] = field(default_factory=Counter)
    decisions: int = 0
    inspector_errors: int = 0
    sink_errors: int = 0
    #: packets the kernel dropped before we read them (live capture only)
    kernel_drops: int = 0
    kernel_packets: int = 0

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "malformed": dict(self.malformed),
            "fragments": self.fragments,
            "fragments_reassembled": self.fragments_reassembled,
            "flows_created": self.flows_created,
            "flows_finished": self.flows_finished,
            "evictions": self.evictions,
            "dns_messages": self.dns_messages,
            "dns_addresses_learned": self.dns_addresses_learned,
            "names": dict(self.names),
            "decisions": self.decisions,
            "inspector_errors": self.inspector_errors,
            "sink_errors": self.sink_errors,
            "kernel_drops": self.kernel_drops,
            "kernel_packets": self.kernel_packets,
        }


class Sniffer:
    """Passive flow tracker and name extractor; thread-unsafe, one per capture loop.

    ``inspect`` (usually ``Inspector.inspect``) and ``sink`` are injected; either
    may be None (then no decisions / nobody to tell). ``on_flow_end`` receives a
    :class:`FlowSummary` per finished flow, ``on_dns`` a :class:`DnsAnswer` per
    address learned from DNS.
    """

    def __init__(
        self,
        inspect: InspectFn | None = None,
        sink: Sink | None = None,
        *,
        config: SnifferConfig | None = None,
        on_flow_end: Callable[[FlowSummary], None] | None = None,
        on_dns: Callable[[DnsAnswer], None] | None = None,
    ) -> None:
        self.inspect = inspect
        self.sink = sink
        self.config = config or SnifferConfig()
        self.on_flow_end = on_flow_end
        self.on_dns = on_dns
        self.stats = SnifferStats()
        self.dns = dnsmod.DnsCache(self.config.dns_cache_size, self.config.dns_grace)
        self.flows: dict[FlowKey, Flow] = {}
        #: first fragment's (src, dst, proto, id) -> flow, so later fragments count too
        self._frags: dict[tuple[bytes, bytes, int, int], tuple[Flow, bool]] = {}
        #: UDP DNS datagrams being reassembled: key -> (offset -> bytes, first seen)
        self._reasm: dict[tuple[bytes, bytes, int, int], tuple[dict[int, bytes], float]] = {}
        self._next_sweep = 0.0
        self.now = 0.0

    # -- hot path -------------------------------------------------------------------------

    def feed(self, ts: float, data: bytes, linktype: int = LINKTYPE_ETHERNET) -> None:
        """Account one captured frame. Never raises on any input."""
        st = self.stats
        st.packets += 1
        n = len(data)
        st.bytes += n
        # Fast path (most frames): untagged Ethernet, IPv4 without options, not fragmented,
        # TCP or UDP, one struct call for all the header fields we need. Anything else, or
        # anything that does not add up, goes through decode(), which checks everything.
        fields = _FAST_V4.unpack_from(data) if linktype == LINKTYPE_ETHERNET and n >= 54 else None
        if (
            fields is not None
            and fields[0] == 0x0800
            and fields[1] == 0x45
            and not fields[3] & 0x3FFF
            and (fields[4] == PROTO_TCP or fields[4] == PROTO_UDP)
            and fields[2] >= 40
        ):
            _, _, total, _, proto, src, dst, sport, dport, doff, flags = fields
            end = 14 + total
            l4 = 34
            fast = True
        elif (
            fields is not None
            and fields[0] == 0x86DD
            and n >= 74
            and (fields6 := _FAST_V6.unpack_from(data))[0] >> 4 == 6
            and (fields6[2] == PROTO_TCP or fields6[2] == PROTO_UDP)
            and fields6[1] >= 20
        ):
            _, plen, proto, src, dst, sport, dport, doff, flags = fields6
            end = 54 + plen
            l4 = 54
            fast = True
        else:
            fast = False
        if fast:
            if end > n:
                end = n
            if proto == PROTO_TCP:
                start = l4 + (doff >> 4) * 4
                if doff < 0x50 or start > end:
                    st.malformed["bad-tcp-offset" if doff < 0x50 else "truncated-tcp"] += 1
                    return
            else:
                start = l4 + 8
                flags = 0
            frag = None
            vlan = 0
        else:
            try:
                p = decode(data, linktype)
            except Exception:  # a decoder bug must not stop capture; count it
                st.malformed["decoder-error"] += 1
                return
            if type(p) is not tuple:
                if isinstance(p, str):
                    if p.startswith("skip:"):
                        st.skipped += 1
                    else:
                        st.malformed[p] += 1
                elif isinstance(p, Fragment):
                    self._fragment(p, data, ts)
                return
            # mypy cannot narrow on ``type(p) is tuple`` (Fragment is a tuple too)
            src, dst, proto, sport, dport, flags, l4, start, end, frag, vlan = p  # type: ignore[misc]
        if ts > self.now:
            self.now = ts
            if ts >= self._next_sweep:
                self._next_sweep = ts + self.config.sweep_interval
                self.sweep(ts)
        flows = self.flows
        f = flows.get((proto, src, sport, dst, dport))
        outbound = True
        if f is None:
            f = flows.get((proto, dst, dport, src, sport))
            if f is None:
                f, outbound = self._new_flow(proto, src, sport, dst, dport, flags, vlan, ts)
            else:
                outbound = False
        if f.end_reason is not None and proto == PROTO_TCP and flags & 0x12 == SYN:
            # a new connection on a recently closed 5-tuple (port reuse): a new flow
            self._finish(flows.pop(f.key), ts, f.end_reason)
            f, outbound = self._new_flow(proto, src, sport, dst, dport, flags, vlan, ts)
        f.last = ts
        plen = end - start
        if outbound:
            f.pkts_out += 1
            f.bytes_out += plen
        else:
            f.pkts_in += 1
            f.bytes_in += plen
        if frag is not None:
            st.fragments += 1
            if len(self._frags) > 4096:
                self._frags.clear()
            self._frags[(src, dst, proto, frag[2])] = (f, outbound)
            if frag[1] and proto == PROTO_UDP and (sport in DNS_PORTS or dport in DNS_PORTS):
                # a large DNS answer (EDNS0, RFC 6891) split by IP: collect it (cheap, bounded)
                self._start_reassembly((src, dst, proto, frag[2]), data[l4:end], ts)
                return
        if (
            proto == PROTO_TCP
            and flags & (SYN | FIN | RST)
            and self._tcp_flags(f, flags, tcp_seq(data, l4), outbound, ts)
        ):
            return
        if f.parsing and plen:
            try:
                if proto == PROTO_TCP:
                    self._tcp_payload(f, tcp_seq(data, l4), data[start:end], outbound, ts)
                else:
                    self._udp_payload(f, data[start:end], outbound, ts)
            except Exception:  # a parser bug must not stop capture; count it, stop parsing
                log.debug("parser error on flow %r", f.key, exc_info=True)
                st.malformed["parser-error"] += 1
                f.parsing = False
                if not f.judged:
                    self._judge(f, ts)

    # -- flows ----------------------------------------------------------------------------

    def _new_flow(
        self,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        flags: int,
        vlan: int,
        ts: float,
    ) -> tuple[Flow, bool]:
        """Create a flow oriented client → server; returns (flow, packet is outbound)."""
        if proto == PROTO_TCP and flags & SYN:
            outbound = not flags & 0x10  # SYN+ACK comes from the server
        else:
            outbound = not _server_side(sport, dport)
        if outbound:
            key: FlowKey = (proto, src, sport, dst, dport)
        else:
            key = (proto, dst, dport, src, sport)
        flows = self.flows
        if len(flows) >= self.config.max_flows:
            oldest = next(iter(flows))
            self.stats.evictions += 1
            self._finish(flows.pop(oldest), ts, "evicted")
        f = Flow(key, ts)
        f.vlan = vlan
        flows[key] = f
        self.stats.flows_created += 1
        f.dns_res = self.dns.lookup(f.server, ts)
        if f.dns_res is not None:
            self.stats.names["dns"] += 1
        if f.sport == DOT_PORT:
            f.encrypted_dns = "dot" if proto == PROTO_TCP else "doq"
            f.resolver = resolver_by_address(f.server) or (
                resolver_by_name(f.dns_res.name) if f.dns_res else None
            )
        elif f.sport == 443:
            op = resolver_by_address(f.server) or (
                resolver_by_name(f.dns_res.name) if f.dns_res else None
            )
            if op:
                f.encrypted_dns, f.resolver = "doh", op
        return f, outbound

    def _tcp_flags(self, f: Flow, fl: int, seq: int, outbound: bool, ts: float) -> bool:
        """Track TCP state; True if the flow was finished by this packet."""
        if fl & RST:
            if f.state != "closed":
                f.state = "reset"
                self._close(f, ts, "reset")
            return True
        if fl & SYN:
            if outbound and f.state == "new":
                f.state = "syn"
                f.cstream = Stream((seq + 1) & 0xFFFFFFFF)
            elif not outbound and f.state in ("new", "syn"):
                f.state = "established"
                if f.app == "dns" or f.sport in DNS_PORTS:
                    f.sstream = Stream((seq + 1) & 0xFFFFFFFF)
        if fl & FIN:
            f.fins |= 1 if outbound else 2
            if f.fins == 3 and f.state != "closed":
                f.state = "fin"
                self._close(f, ts, "fin")
                return False
            if f.state not in ("closed", "fin"):
                f.state = "closing"
        return False

    def _close(self, f: Flow, ts: float, reason: str) -> None:
        """FIN/FIN or RST: report now, keep the entry briefly to absorb trailing ACKs."""
        if f.end_reason is None:
            f.end_reason = reason
            self._report_end(f, ts)
        f.state = "closed" if reason == "fin" else f.state
        f.parsing = False

    def _fragment(self, frag: Fragment, data: bytes, ts: float) -> None:
        self.stats.fragments += 1
        key = (frag.src, frag.dst, frag.proto, frag.ident)
        entry = self._frags.get(key)
        if entry is None:
            return
        f, outbound = entry
        if outbound:
            f.pkts_out += 1
            f.bytes_out += frag.length
        else:
            f.pkts_in += 1
            f.bytes_in += frag.length
        pending = self._reasm.get(key)
        if pending is None:
            return
        parts = pending[0]
        parts[frag.offset] = data[frag.start : frag.start + frag.length]
        if not frag.more:
            parts[-1] = b""  # marks that the last fragment is in; its offset ends the datagram
        if -1 not in parts:
            return
        whole = bytearray()
        for off in sorted(o for o in parts if o >= 0):
            if off > len(whole):
                return  # a hole: wait for the missing fragment
            whole += parts[off][len(whole) - off :]
        del self._reasm[key]
        self.stats.fragments_reassembled += 1
        if f.parsing and len(whole) > 8:
            try:
                self._udp_payload(f, bytes(whole[8:]), outbound, ts)
            except Exception:
                log.debug("parser error on reassembled datagram", exc_info=True)
                self.stats.malformed["parser-error"] += 1

    def _start_reassembly(
        self, key: tuple[bytes, bytes, int, int], first: bytes, ts: float
    ) -> None:
        if len(self._reasm) >= 64:  # bounded: drop the oldest unfinished datagram
            self._reasm.pop(next(iter(self._reasm)))
            self.stats.malformed["fragments-incomplete"] += 1
        self._reasm[key] = ({0: first}, ts)

    def sweep(self, now: float) -> None:
        """Finish flows that have been idle too long (and closed flows past their linger)."""
        cfg = self.config
        done = []
        for key, f in self.flows.items():
            idle = now - f.last
            if f.end_reason is not None:
                if idle >= cfg.closed_linger:
                    done.append(key)
            elif f.proto == PROTO_TCP:
                if idle >= cfg.idle_timeout:
                    done.append(key)
            elif idle >= (cfg.dns_idle_timeout if f.app == "dns" else cfg.udp_idle_timeout):
                done.append(key)
        for key in done:
            self._finish(self.flows.pop(key), now, "idle")
        stale = [k for k, (_, first) in self._reasm.items() if now - first > 5.0]
        for k in stale:
            del self._reasm[k]
            self.stats.malformed["fragments-incomplete"] += 1

    def tick(self, now: float) -> None:
        """Advance the clock without a packet (live capture on a quiet link) and sweep."""
        if now > self.now:
            self.now = now
        self._next_sweep = self.now + self.config.sweep_interval
        self.sweep(self.now)

    def close(self) -> None:
        """End of capture: finish every flow still in the table."""
        for f in list(self.flows.values()):
            self._finish(f, self.now, "end-of-capture")
        self.flows.clear()
        self._frags.clear()
        if self._reasm:
            self.stats.malformed["fragments-incomplete"] += len(self._reasm)
            self._reasm.clear()

    def _finish(self, f: Flow, ts: float, reason: str) -> None:
        if f.end_reason is None:
            f.end_reason = reason
            self._report_end(f, ts)
        self.stats.flows_finished += 1
        if self.on_flow_end is not None:
            try:
                self.on_flow_end(FlowSummary.of(f))
            except Exception:
                self.stats.sink_errors += 1
                log.exception("on_flow_end callback failed")

    def _report_end(self, f: Flow, ts: float) -> None:
        """Judge a flow that never got a name, then hand its byte counts to the sink."""
        if not f.judged:
            self._judge(f, ts)
        if self.sink is not None and f.decision is not None and f.flow_id is not None:
            try:
                self.sink.flow_closed(
                    FlowClosed(
                        flow_id=f.flow_id,
                        sensor=Sensor.SNIFFER,
                        time=f.last,
                        bytes_out=f.bytes_out,
                        bytes_in=f.bytes_in,
                        duration=max(0.0, f.last - f.first),
                        status=f.end_reason,
                    )
                )
            except Exception:
                self.stats.sink_errors += 1
                log.exception("sink.flow_closed failed")

    # -- payload ----------------------------------------------------------------------------

    def _udp_payload(self, f: Flow, payload: bytes, outbound: bool, ts: float) -> None:
        if f.sport in DNS_PORTS or (f.cport in DNS_PORTS and f.app == "dns"):
            f.app = "dns"
            self._dns_message(f, payload, outbound, ts, "udp")
            if not f.judged:
                self._judge(f, ts)
            return
        if outbound and (f.app == "quic" or quicmod.looks_like_initial(payload)):
            self._quic(f, payload, ts)
            return
        if not outbound and f.app == "quic":
            return  # server Initials use server keys; nothing to name from them
        f.app = f.app or "raw"
        f.parsing = False
        if not f.judged:
            self._judge(f, ts)

    def _tcp_payload(self, f: Flow, seq: int, payload: bytes, outbound: bool, ts: float) -> None:
        if not payload:
            return
        if not outbound:
            if f.app == "dns":
                if f.sstream is None:
                    f.sstream = Stream(seq)
                if f.sstream.add(seq, payload):
                    self._dns_tcp(f, f.sstream, False, ts)
            elif f.app == "http" and not f.judged:
                self._judge(f, ts)  # the server answers: the request head is all we get
            elif f.app is None and not f.judged:
                f.app = "raw"  # server speaks first (SMTP, SSH ...): no client name coming
                f.parsing = False
                self._judge(f, ts)
            return
        s = f.cstream
        if s is None:
            s = f.cstream = Stream(seq)
        if f.app == "http" and f.judged:
            # later requests on a kept-alive connection: record their request lines only
            if httpmod.looks_like_request(payload) and len(f.http_lines) < 32:
                line = payload.split(b"\r\n", 1)[0][:512].decode("latin-1")
                f.http_lines.append(line)
            return
        if not s.add(seq, payload):
            return
        buf = s.buf
        if f.app is None:
            if len(buf) < 1:
                return
            if buf[0] == tlsmod.CONTENT_HANDSHAKE:
                f.app = "tls"
            elif f.sport in DNS_PORTS or (f.encrypted_dns == "dot" and buf[0] != 0x16):
                f.app = "dns"
            elif httpmod.looks_like_request(buf):
                f.app = "http"
            elif len(buf) < 8 and any(m.startswith(bytes(buf)) for m in httpmod.METHODS):
                return  # a tiny first segment that may still become a request line
            else:
                f.app = "raw"
                f.parsing = False
                f.cstream = None
                self._judge(f, ts)
                return
        if f.app == "tls":
            self._tls(f, s, ts)
        elif f.app == "http":
            self._http(f, s, ts)
        elif f.app == "dns":
            self._dns_tcp(f, s, True, ts)

    def _tls(self, f: Flow, s: Stream, ts: float) -> None:
        try:
            msg = tlsmod.handshake_from_records(s.buf)
            if msg is None:
                if len(s.buf) >= s.limit:
                    raise ValueError("ClientHello larger than the reassembly limit")
                return
            hello = tlsmod.parse_client_hello(msg)
        except ValueError as e:
            self.stats.malformed["tls-clienthello"] += 1
            f.note = f"tls: {e}"
        else:
            f.sni, f.alpn, f.ech, f.tls_version = hello.sni, hello.alpn, hello.ech, hello.version
            if hello.sni:
                f.sni_source = "sni-outer" if hello.ech else "sni"
                self.stats.names["sni"] += 1
                self._mark_doh(f, hello.sni)
        f.parsing = False
        f.cstream = None
        self._judge(f, ts, Stage.CLIENTHELLO)

    def _http(self, f: Flow, s: Stream, ts: float) -> None:
        try:
            req = httpmod.parse_request(s.buf, self.config.body_limit)
        except ValueError as e:
            self.stats.malformed["http-request"] += 1
            f.note = f"http: {e}"
            f.app = "raw"
            f.parsing = False
            f.cstream = None
            self._judge(f, ts)
            return
        if req is None:
            return
        f.http = req
        if not f.http_lines:
            f.http_lines.append(req.request_line[:512])
            if req.host:
                self.stats.names["http-host"] += 1
        if (
            req.content_length is not None
            and len(req.body) < min(req.content_length, self.config.body_limit)
            and len(s.buf) < s.limit
        ):
            return  # wait for more of the body (judged at the latest when the server answers)
        self._judge(f, ts, Stage.REQUEST)

    def _quic(self, f: Flow, datagram: bytes, ts: float) -> None:
        f.app = "quic"
        pos = 0
        # coalesced packets (RFC 9000 §12.2): an Initial may be followed by 0-RTT/Handshake
        while pos < len(datagram) and f.quic_packets < self.config.quic_max_packets:
            if quicmod.looks_like_initial(datagram[pos : pos + 7]) is None:
                break
            f.quic_packets += 1
            try:
                pkt, keys = self._decrypt(f, datagram, pos)
            except ValueError as e:
                self.stats.malformed["quic-initial"] += 1
                f.note = f"quic: {e}"
                break
            f.quic_keys = keys
            f.quic_version = pkt.version
            f.quic_largest = max(f.quic_largest, pkt.packet_number)
            if f.crypto is None:
                f.crypto = quicmod.CryptoStream()
            try:
                for off, chunk in pkt.crypto:
                    f.crypto.add(off, chunk)
                msg = tlsmod.handshake_message(f.crypto.buf)
                if msg is not None:
                    hello = tlsmod.parse_client_hello(msg)
                    f.sni, f.alpn, f.ech = hello.sni, hello.alpn, hello.ech
                    f.tls_version = hello.version
                    if hello.sni:
                        f.sni_source = "quic-sni-outer" if hello.ech else "quic-sni"
                        self.stats.names["quic-sni"] += 1
                        self._mark_doh(f, hello.sni)
                    f.parsing = False
                    f.crypto = None
                    f.quic_keys = None
                    self._judge(f, ts, Stage.CLIENTHELLO)
                    return
            except ValueError as e:
                self.stats.malformed["quic-clienthello"] += 1
                f.note = f"quic: {e}"
                break
            pos += pkt.size
        if f.quic_packets >= self.config.quic_max_packets or f.note:
            f.parsing = False
            f.crypto = None
            f.quic_keys = None
            if not f.judged:
                self._judge(f, ts, Stage.PACKET)

    @staticmethod
    def _decrypt(
        f: Flow, datagram: bytes, pos: int
    ) -> tuple[quicmod.InitialPacket, quicmod.InitialKeys]:
        try:
            return quicmod.decrypt_initial(datagram, pos, f.quic_keys, f.quic_largest)
        except ValueError:
            if f.quic_keys is None:
                raise
        # a new connection on the same 5-tuple (or after Retry): keys from its own DCID
        return quicmod.decrypt_initial(datagram, pos, None, -1)

    def _mark_doh(self, f: Flow, name: str) -> None:
        op = resolver_by_name(name)
        if op and f.encrypted_dns is None:
            f.encrypted_dns, f.resolver = "doh", op

    def _dns_tcp(self, f: Flow, s: Stream, outbound: bool, ts: float) -> None:
        """DNS over TCP: 2-byte length prefix per message (RFC 1035 §4.2.2)."""
        buf = s.buf
        while s.taken + 2 <= len(buf):
            ln = buf[s.taken] << 8 | buf[s.taken + 1]
            if s.taken + 2 + ln > len(buf):
                break
            self._dns_message(f, bytes(buf[s.taken + 2 : s.taken + 2 + ln]), outbound, ts, "tcp")
            s.taken += 2 + ln
        if not f.judged and f.dns_queries:
            self._judge(f, ts)
        if len(buf) >= s.limit:
            f.parsing = False

    def _dns_message(self, f: Flow, payload: bytes, outbound: bool, ts: float, via: str) -> None:
        try:
            msg = dnsmod.parse_message(payload)
        except ValueError as e:
            self.stats.malformed[f"dns-{via}"] += 1
            f.note = f"dns: {e}"
            return
        self.stats.dns_messages += 1
        if not msg.response:
            for q in msg.questions:
                if len(f.dns_queries) < 16:
                    f.dns_queries.append((q.name, dnsmod.TYPE_NAMES.get(q.qtype, str(q.qtype))))
            return
        if not f.dns_queries:
            for q in msg.questions[:16]:
                f.dns_queries.append((q.name, dnsmod.TYPE_NAMES.get(q.qtype, str(q.qtype))))
        learned = self.dns.learn(msg, ts)
        self.stats.dns_addresses_learned += len(learned)
        if self.on_dns is not None and learned:
            client = dnsmod.addr_text(f.client)
            for addr, res in learned:
                try:
                    self.on_dns(
                        DnsAnswer(
                            ts,
                            client,
                            res.name,
                            res.via,
                            addr,
                            max(0, int(res.expires - ts)),
                            res.chain,
                        )
                    )
                except Exception:
                    self.stats.sink_errors += 1
                    log.exception("on_dns callback failed")
        room = 64 - len(f.dns_answers)
        if room > 0:
            f.dns_answers.extend(learned[:room])

    # -- judging ----------------------------------------------------------------------------

    def _judge(self, f: Flow, ts: float, stage: Stage | None = None) -> None:
        """Turn the flow into an Observation, ask the inspector, hand the Decision on."""
        f.judged = True
        if f.app is None:
            f.app = "raw"
        if self.inspect is None:  # extraction only: no Observation to build
            f.flow_id = os.urandom(16).hex()  # as random as uuid4().hex, cheaper
            return
        obs = self.observation(f, ts, stage)
        f.flow_id = obs.flow_id
        try:
            decision = self.inspect(obs)
        except Exception:
            self.stats.inspector_errors += 1
            log.exception("inspector failed on flow %s", obs.flow_id)
            return
        f.decision = decision
        self.stats.decisions += 1
        if self.sink is not None:
            try:
                self.sink.record(decision)
            except Exception:
                self.stats.sink_errors += 1
                log.exception("sink.record failed")

    def observation(self, f: Flow, ts: float, stage: Stage | None = None) -> Observation:
        """The flow as an Observation (what the inspector judges)."""
        req = f.http
        headers: tuple[tuple[str, str], ...] = req.headers if req else ()
        if f.app == "dns" and f.dns_queries:
            # the queried name is payload, not the destination's name: pass it as metadata
            headers = tuple(("dns-query", f"{n} {t}") for n, t in f.dns_queries[:8])
        if stage is None:
            stage = Stage.PACKET if (f.pkts_out + f.pkts_in) > 1 or f.bytes_out else Stage.CONNECT
        body = req.body if req else b""
        truncated = bool(
            req
            and (
                (req.content_length is not None and len(body) < req.content_length)
                or len(body) >= self.config.body_limit
            )
        )
        return Observation(
            sensor=Sensor.SNIFFER,
            transport=Transport.TCP if f.proto == PROTO_TCP else Transport.UDP,
            protocol=_APP_PROTOCOL.get(f.app or "raw", Protocol.RAW),
            dst_addr=dnsmod.addr_text(f.server),
            dst_port=f.sport,
            time=f.first,
            stage=stage,
            client_addr=dnsmod.addr_text(f.client),
            client_port=f.cport,
            client_app=req.header_value("user-agent") if req else None,
            sni=f.sni,
            http_host=req.host if req else None,
            dns_name=f.dns_res.name if f.dns_res else None,
            alpn=f.alpn,
            ech=f.ech,
            method=req.method if req else None,
            path=req.target if req else None,
            headers=headers,
            body=body,
            body_truncated=truncated,
            bytes_out=f.bytes_out,
            bytes_in=f.bytes_in,
            tags=(f.encrypted_dns,) if f.encrypted_dns else (),
        )


def _server_side(sport: int, dport: int) -> bool:
    """Guess whether the sender of a flow's first seen packet is the server (by its port).

    Only a clear server port on one side decides; otherwise the first sender is
    taken as the client, which is right whenever the capture saw the flow start.
    """
    s_srv = sport in SERVER_PORTS or sport < 1024
    d_srv = dport in SERVER_PORTS or dport < 1024
    return s_srv and not d_srv

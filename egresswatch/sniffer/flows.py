"""Flow state: the mutable per-flow record, TCP stream reassembly, and the frozen summary.

A flow is keyed by its 5-tuple oriented client → server: ``(proto, client
address, client port, server address, server port)`` with raw address bytes.
The summary keeps the key and every name the flow went by, so that "seen by the
sniffer, never by the proxy" (a bypass) can be computed by matching summaries
against the proxy's flows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from egresswatch.model import Decision
from egresswatch.sniffer.dns import Resolution, addr_text
from egresswatch.sniffer.http import Request
from egresswatch.sniffer.quic import CryptoStream, InitialKeys

FlowKey = tuple[int, bytes, int, bytes, int]

#: how far ahead of the contiguous stream a segment may land and still be kept
STREAM_WINDOW = 256 * 1024


class Stream:
    """One direction of a TCP byte stream, reassembled by sequence number (bounded).

    Only the start of a stream is ever needed (ClientHello, request head, DNS
    messages), so bytes beyond ``limit`` are dropped and out-of-order segments
    wait in a small dict until the gap before them fills.
    """

    __slots__ = ("base", "buf", "limit", "pending", "taken")

    def __init__(self, base: int, limit: int = 64 * 1024) -> None:
        self.base = base
        self.buf = bytearray()
        self.pending: dict[int, bytes] = {}
        self.limit = limit
        #: bytes of ``buf`` already consumed by a message parser
        self.taken = 0

    def add(self, seq: int, payload: bytes) -> bool:
        """Add a segment; True when the contiguous part grew."""
        rel = (seq - self.base) & 0xFFFFFFFF
        if rel >= 0x80000000:  # starts before the base: keep only the new tail
            back = 0x100000000 - rel
            if back >= len(payload):
                return False
            payload = payload[back:]
            rel = 0
        if rel >= self.limit or rel > STREAM_WINDOW:
            return False
        have = len(self.buf)
        if rel > have:
            if len(self.pending) < 64:
                old = self.pending.get(rel, b"")
                if len(payload) > len(old):
                    self.pending[rel] = payload
            return False
        if rel + len(payload) <= have:
            return False  # retransmission
        self.buf += payload[have - rel : self.limit - rel]
        while self.pending:
            have = len(self.buf)
            ready = [off for off in self.pending if off <= have]
            if not ready:
                break
            for off in sorted(ready):
                chunk = self.pending.pop(off)
                have = len(self.buf)
                if off + len(chunk) > have:
                    self.buf += chunk[have - off : self.limit - off]
        return True


class Flow:
    """Mutable state of one flow in the table (hot path: plain slots, no properties)."""

    __slots__ = (
        "alpn",
        "app",
        "bytes_in",
        "bytes_out",
        "client",
        "cport",
        "crypto",
        "cstream",
        "decision",
        "dns_answers",
        "dns_queries",
        "dns_res",
        "ech",
        "encrypted_dns",
        "end_reason",
        "fins",
        "first",
        "flow_id",
        "http",
        "http_lines",
        "judged",
        "key",
        "last",
        "note",
        "parsing",
        "pkts_in",
        "pkts_out",
        "proto",
        "quic_keys",
        "quic_largest",
        "quic_packets",
        "quic_version",
        "resolver",
        "server",
        "sni",
        "sni_source",
        "sport",
        "sstream",
        "state",
        "tls_version",
        "vlan",
    )

    def __init__(self, key: FlowKey, ts: float) -> None:
        self.key = key
        self.proto, self.client, self.cport, self.server, self.sport = key
        self.first = ts
        self.last = ts
        self.pkts_out = 0
        self.pkts_in = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.state = "new"
        self.fins = 0
        #: tls | quic | http | dns | raw, or None while unknown
        self.app: str | None = None
        #: still looking at payload for names
        self.parsing = True
        self.judged = False
        self.decision: Decision | None = None
        self.flow_id: str | None = None
        self.sni: str | None = None
        self.sni_source: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.ech = False
        self.tls_version: int | None = None
        self.http: Request | None = None
        self.http_lines: list[str] = []
        self.dns_res: Resolution | None = None
        self.dns_queries: list[tuple[str, str]] = []
        self.dns_answers: list[tuple[str, Resolution]] = []
        self.encrypted_dns: str | None = None
        self.resolver: str | None = None
        self.cstream: Stream | None = None
        self.sstream: Stream | None = None
        self.quic_version: int | None = None
        self.quic_keys: InitialKeys | None = None
        self.quic_largest = -1
        self.quic_packets = 0
        self.crypto: CryptoStream | None = None
        self.note: str | None = None
        self.end_reason: str | None = None
        self.vlan = 0

    def names(self) -> list[tuple[str, str]]:
        """(name, where it came from), most authoritative first, no repeats."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        host = self.http.host if self.http else None
        for name, source in (
            (host, "http-host"),
            (self.sni, self.sni_source or "sni"),
            (self.dns_res.name if self.dns_res else None, "dns"),
        ):
            if name and name not in seen:
                seen.add(name)
                out.append((name, source))
        return out


class FlowSummary(NamedTuple):
    """A finished flow as the sniffer saw it; what ``sniff --json`` prints per flow.

    Keeps the oriented 5-tuple and all names: the inputs a later bypass check
    needs to match sniffer flows against proxy flows. (A NamedTuple rather than a
    frozen dataclass: one is built per flow, and a frozen dataclass's ``__init__``
    costs several times more.)
    """

    flow_id: str | None
    transport: str
    protocol: str
    client_addr: str
    client_port: int
    server_addr: str
    server_port: int
    first_seen: float
    last_seen: float
    packets_out: int
    packets_in: int
    bytes_out: int
    bytes_in: int
    names: tuple[tuple[str, str], ...]
    sni: str | None
    alpn: tuple[str, ...]
    ech: bool
    tls_version: int | None
    quic_version: int | None
    http_requests: tuple[str, ...]
    http_host: str | None
    dns_name: str | None
    dns_chain: tuple[str, ...]
    dns_queries: tuple[tuple[str, str], ...]
    dns_answers: tuple[tuple[str, str, tuple[str, ...], str], ...]
    encrypted_dns: str | None
    resolver: str | None
    tcp_state: str | None
    end_reason: str | None
    note: str | None
    vlan: int
    decision: Decision | None = None

    @classmethod
    def of(cls, f: Flow) -> FlowSummary:
        """Freeze a flow's state."""
        res = f.dns_res
        return cls(  # positional: keyword arguments cost measurably per flow
            f.flow_id,
            "tcp" if f.proto == 6 else "udp",
            f.app or "raw",
            addr_text(f.client),
            f.cport,
            addr_text(f.server),
            f.sport,
            f.first,
            f.last,
            f.pkts_out,
            f.pkts_in,
            f.bytes_out,
            f.bytes_in,
            tuple(f.names()),
            f.sni,
            f.alpn,
            f.ech,
            f.tls_version,
            f.quic_version,
            tuple(f.http_lines),
            f.http.host if f.http else None,
            res.name if res else None,
            res.chain if res else (),
            tuple(f.dns_queries),
            tuple((a, r.name, r.chain, r.via) for a, r in f.dns_answers),
            f.encrypted_dns,
            f.resolver,
            f.state if f.proto == 6 else None,
            f.end_reason,
            f.note,
            f.vlan,
            f.decision,
        )

    @property
    def match_key(self) -> tuple[str, str, int, str, int]:
        """(transport, client addr, client port, server addr, server port): what a proxy flow
        to the same original destination from the same client socket also has. A sniffer
        flow whose key no proxy flow shares within its time span went around the proxy."""
        return (
            self.transport,
            self.client_addr,
            self.client_port,
            self.server_addr,
            self.server_port,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stable keys; documented in docs/sniffer.md)."""
        from egresswatch.jsonable import decision_to_dict

        return {
            "flow_id": self.flow_id,
            "transport": self.transport,
            "protocol": self.protocol,
            "client": {"addr": self.client_addr, "port": self.client_port},
            "server": {"addr": self.server_addr, "port": self.server_port},
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "names": [{"name": n, "source": s} for n, s in self.names],
            "sni": self.sni,
            "alpn": list(self.alpn),
            "ech": self.ech,
            "tls_version": f"{self.tls_version:#06x}" if self.tls_version else None,
            "quic_version": f"{self.quic_version:#010x}" if self.quic_version else None,
            "http": {"host": self.http_host, "requests": list(self.http_requests)}
            if self.http_requests
            else None,
            "dns_name": {"name": self.dns_name, "chain": list(self.dns_chain)}
            if self.dns_name
            else None,
            "dns": {
                "queries": [{"name": n, "type": t} for n, t in self.dns_queries],
                "answers": [
                    {"addr": a, "name": n, "chain": list(c), "via": v}
                    for a, n, c, v in self.dns_answers
                ],
            }
            if self.dns_queries or self.dns_answers
            else None,
            "encrypted_dns": self.encrypted_dns,
            "resolver": self.resolver,
            "packets": {"out": self.packets_out, "in": self.packets_in},
            "bytes": {"out": self.bytes_out, "in": self.bytes_in},
            "tcp_state": self.tcp_state,
            "end": self.end_reason,
            "note": self.note,
            "vlan_tags": self.vlan,
            "decision": decision_to_dict(self.decision) if self.decision else None,
        }

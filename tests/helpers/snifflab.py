"""Both ends of the sniffer's live lab test, run as processes inside lab namespaces.

``server`` (in the "internet" namespace) answers DNS over UDP and TCP for a few
names with documentation addresses, accepts TLS on 443 with a throwaway cert,
accepts raw TCP on 8443 and swallows UDP on 443. ``client`` (in the client
namespace) makes the traffic the sniffer must name: DNS lookups (UDP and TCP),
a real TLS handshake (Python's ssl), a browser-sized post-quantum ClientHello
sent over a socket with a small MSS (so the kernel really segments it), and QUIC
v1 / v2 Initials (each ClientHello split over several Initials).

    ip netns exec INET python tests/helpers/snifflab.py server --pki DIR
    ip netns exec CLIENT python tests/helpers/snifflab.py client --ca DIR/ca.pem

Only documentation addresses (RFC 5737) are used; nothing leaves the namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.packets import (
    client_hello,
    dns_query,
    dns_response,
    quic_initials_for_hello,
    tls_records,
)

WEB = "203.0.113.10"
QUIC_HOST = "203.0.113.11"
RAW_HOST = "203.0.113.12"
DNS = "198.51.100.20"
WEB6 = "2001:db8:1::10"
#: name -> address the lab's DNS answers (through a CNAME, like a CDN)
ZONE = {
    "chat.lab.example": WEB,
    "h3.lab.example": QUIC_HOST,
    "raw.lab.example": RAW_HOST,
    "big.lab.example": WEB,
}


def _answer(query: bytes) -> bytes:
    from scapy.layers.dns import DNS as DNSPkt

    q = DNSPkt(query)
    name = q.qd[0].qname.decode().rstrip(".")
    addr = ZONE.get(name)
    return dns_response(name, [f"edge.{name}"], [addr] if addr else [], ident=q.id, ttl=60)


class _DnsUdp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(_answer(data), self.client_address)


class _DnsTcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buf = b""
        while True:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                reply = _answer(buf[2 : 2 + n])
                buf = buf[2 + n :]
                self.request.sendall(len(reply).to_bytes(2, "big") + reply)


class _Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(5)
        with contextlib.suppress(OSError):
            while self.request.recv(65536):
                pass


class _Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Threaded6(_Threaded):
    address_family = socket.AF_INET6


class _ThreadedUdp(socketserver.ThreadingMixIn, socketserver.UDPServer):
    allow_reuse_address = True
    daemon_threads = True


def server(pki: Path) -> None:
    from helpers.servers import make_pki

    p = make_pki(pki, list(ZONE), [WEB])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(p.cert, p.key)

    class _Tls(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            with contextlib.suppress(OSError, ssl.SSLError):
                conn = ctx.wrap_socket(self.request, server_side=True)
                conn.sendall(conn.recv(1024) or b"")
                conn.close()

    servers = [
        _ThreadedUdp((DNS, 53), _DnsUdp),
        _Threaded((DNS, 53), _DnsTcp),
        _Threaded((WEB, 443), _Tls),
        _Threaded((WEB, 8443), _Sink),
        _Threaded((RAW_HOST, 9000), _Sink),
        _Threaded6((WEB6, 8443), _Sink),
    ]
    udp443 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp443.bind((QUIC_HOST, 443))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("READY", flush=True)
    while True:
        with contextlib.suppress(OSError):
            udp443.recvfrom(65535)


def _dns_udp(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(dns_query(name, ident=os.getpid() & 0xFFFF), (DNS, 53))
        reply, _ = s.recvfrom(4096)
    from scapy.layers.dns import DNS as DNSPkt

    answers = [rr.rdata for rr in DNSPkt(reply).an if rr.type == 1]
    return str(answers[-1])


def _dns_tcp(name: str) -> None:
    q = dns_query(name, ident=1234)
    with socket.create_connection((DNS, 53), timeout=3) as s:
        s.sendall(len(q).to_bytes(2, "big") + q)
        s.recv(4096)


def client(ca: Path) -> None:
    web = _dns_udp("chat.lab.example")
    # a real TLS handshake with Python's ssl (OpenSSL)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((web, 443), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="chat.lab.example") as tls,
    ):
        tls.sendall(b"ping")
        tls.recv(16)
    # a browser-sized post-quantum ClientHello, segmented for real by a 536-byte MSS
    _dns_tcp("big.lab.example")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        s.settimeout(5)
        s.connect((WEB, 8443))
        s.sendall(tls_records(client_hello("big.lab.example", ("h2",), grease_ech=True)))
        time.sleep(0.2)
    # the same over IPv6
    with socket.create_connection((WEB6, 8443), timeout=5) as s:
        s.sendall(tls_records(client_hello("v6.lab.example", ("h2",))))
        time.sleep(0.2)
    # QUIC v1 split over three Initials, and v2 over two
    quic = _dns_udp("h3.lab.example")
    # (each Initial must fit the 1500-byte MTU, as real QUIC ensures: RFC 9000 §14)
    for version, host, parts in ((1, "h3.lab.example", 3), (0x6B3343CF, "v2.lab.example", 2)):
        hello = client_hello(host, ("h3",), quic=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for dg in quic_initials_for_hello(hello, os.urandom(8), version=version, packets=parts):
                s.sendto(dg, (quic, 443))
    # a named flow with no name of its own: only DNS knows what it is
    raw_addr = _dns_udp("raw.lab.example")
    with socket.create_connection((raw_addr, 9000), timeout=5) as s:
        s.sendall(b"\x00\x01\x02binary")
    print("DONE", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    sp = sub.add_parser("server")
    sp.add_argument("--pki", type=Path, required=True)
    cp = sub.add_parser("client")
    cp.add_argument("--ca", type=Path, required=True)
    args = ap.parse_args()
    if args.role == "server":
        server(args.pki)
    else:
        client(args.ca)


if __name__ == "__main__":
    main()

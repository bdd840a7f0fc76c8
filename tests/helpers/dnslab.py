"""A tiny authoritative DNS server and a one-shot client for the namespace lab.

Run as a script (inside a lab namespace only)::

    python dnslab.py serve ADDR PORT LOG NAME=ADDR ...   # prints READY; logs each query
    python dnslab.py query SERVER NAME                   # prints {"rcode": .., "addrs": [..]}

Messages are parsed and written with mitmproxy's own DNS codec (RFC 1035 section 4).
The server answers A queries for the names it was given (TTL 300) and NXDOMAIN for any
other name; each query is appended to LOG as JSON (name, type, peer), so a test can tell
which queries reached "the internet" and from where.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import sys

from mitmproxy import dns

#: the TTL of every answer: long enough that the proxy still knows the name when asked
TTL = 300


def serve(addr: str, port: int, log: str, records: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        print("READY", flush=True)
        with open(log, "a", buffering=1) as out:
            while True:
                data, peer = s.recvfrom(4096)
                try:
                    msg = dns.DNSMessage.unpack(data)
                except Exception:  # a lab server: ignore what is not DNS
                    continue
                q = msg.questions[0] if msg.questions else None
                name = q.name.lower().rstrip(".") if q else ""
                out.write(
                    json.dumps({"name": name, "type": q.type if q else None, "peer": peer[0]})
                    + "\n"
                )
                if q is not None and name in records and q.type == dns.types.A:
                    ip = ipaddress.IPv4Address(records[name])
                    reply = msg.succeed([dns.ResourceRecord.A(q.name, ip, ttl=TTL)])
                elif q is not None and name in records:
                    reply = msg.succeed([])  # the name exists, no record of that type
                else:
                    reply = msg.fail(dns.response_codes.NXDOMAIN)
                s.sendto(reply.packed, peer)


def query(server: str, name: str, port: int = 53) -> dict[str, object]:
    msg = dns.DNSMessage(
        timestamp=None,
        id=random.randrange(1 << 16),
        query=True,
        op_code=dns.op_codes.QUERY,
        authoritative_answer=False,
        truncation=False,
        recursion_desired=True,
        recursion_available=False,
        reserved=0,
        response_code=dns.response_codes.NOERROR,
        questions=[dns.Question(name, dns.types.A, dns.classes.IN)],
        answers=[],
        authorities=[],
        additionals=[],
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(msg.packed, (server, port))
        reply = dns.DNSMessage.unpack(s.recv(4096))
    return {
        "rcode": reply.response_code,
        "id_ok": reply.id == msg.id,
        "addrs": [str(rr.ipv4_address) for rr in reply.answers if rr.type == dns.types.A],
    }


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        pairs = dict(arg.split("=", 1) for arg in sys.argv[5:])
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], pairs)
    elif sys.argv[1] == "query":
        print(json.dumps(query(sys.argv[2], sys.argv[3])))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} serve|query ...")

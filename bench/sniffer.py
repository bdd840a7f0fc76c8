"""Sniffer throughput: egresswatch's offline reader vs tshark on the same mixed capture.

Builds a capture of at least 200,000 packets (TLS 1.3 over IPv4 and IPv6 with
multi-segment post-quantum-sized ClientHellos, DNS over UDP with CNAME chains,
QUIC v1/v2 Initials plus short-header data, plain HTTP), then measures in the
same run:

- egresswatch: scapy's RawPcapReader + the sniffer's own header parsing, flow
  table and name extraction (no judging, like tshark), and again with judging
  by the real inspector when it can be built;
- ``tshark -r FILE -T fields -e tls.handshake.extensions_server_name
  -e dns.qry.name -e http.host``.

Flows are generated from scapy-built templates whose client ports and addresses
are patched per flow (checksums are not recomputed; neither tool checks them by
default), because building 200k packets with scapy alone takes minutes.

Usage: .venv/bin/python bench/sniffer.py [--packets N] [--keep FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds scripts named like stdlib modules (inspect.py): never import from it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.packets import (  # noqa: E402
    client_hello,
    dns_query,
    dns_response,
    quic_initials_for_hello,
    tcp_flow,
    tls_records,
    udp_packet,
)
from scapy.utils import RawPcapWriter  # noqa: E402

from egresswatch.sniffer import Sniffer  # noqa: E402
from egresswatch.sniffer.capture import run_file  # noqa: E402

NAMES = [f"svc{i}.bench.example" for i in range(16)]
#: distinct names each tool extracted, to check they found the same ones
DISTINCT: dict[str, set[str]] = {}
RESOLVER = "198.51.100.53"


def _server(i: int, v6: bool = False) -> str:
    return f"2001:db8:1::{i + 1:x}" if v6 else f"203.0.113.{i + 1}"


def _patch(frames: list[bytes], cport: int, client_octet: int, v6: bool) -> list[bytes]:
    """Give a template flow its own client port (and client address byte)."""
    l3 = 14
    l4 = l3 + (40 if v6 else 20)
    # client address last byte: src for client->server packets, dst for replies
    src_last = l3 + (8 + 15 if v6 else 15)
    dst_last = l3 + (24 + 15 if v6 else 19)
    out = []
    tport = None
    for raw in frames:
        b = bytearray(raw)
        sp = b[l4] << 8 | b[l4 + 1]
        dp = b[l4 + 2] << 8 | b[l4 + 3]
        if tport is None:
            tport = sp  # the first packet of each template comes from the client
        if sp == tport:
            b[l4 : l4 + 2] = cport.to_bytes(2, "big")
            b[src_last] = client_octet
        elif dp == tport:
            b[l4 + 2 : l4 + 4] = cport.to_bytes(2, "big")
            b[dst_last] = client_octet
        out.append(bytes(b))
    return out


def _templates() -> dict[str, list[list[bytes]]]:
    rnd = random.Random(5)
    t: dict[str, list[list[bytes]]] = {"tls4": [], "tls6": [], "dns": [], "quic": [], "http": []}
    for i, name in enumerate(NAMES[:8]):
        hello = tls_records(client_hello(name))
        server_data = rnd.randbytes(1400 * 10)
        client_data = rnd.randbytes(600 * 5)
        for key, v6 in (("tls4", False), ("tls6", True)):
            client = "2001:db8::100" if v6 else "192.0.2.100"
            pk = tcp_flow(client, _server(i, v6), 40000, 443, hello + client_data, mss=1400,
                          server_data=server_data)
            t[key].append([bytes(p) for p in pk])
        q = dns_query(name, ident=i)
        r = dns_response(name, [f"edge{i}.cdn.example"], [_server(i)], ident=i)
        t["dns"].append([bytes(udp_packet("192.0.2.100", RESOLVER, 40000, 53, q)),
                         bytes(udp_packet(RESOLVER, "192.0.2.100", 53, 40000, r))])
        version = 1 if i % 2 else 0x6B3343CF
        initials = quic_initials_for_hello(client_hello(name, ("h3",), quic=True),
                                           rnd.randbytes(8), version=version, packets=2)
        frames = [bytes(udp_packet("192.0.2.100", _server(i), 40000, 443, d)) for d in initials]
        for k in range(30):  # short-header 1-RTT packets both ways (RFC 9000 §17.3)
            sh = bytes([0x40 | rnd.randrange(4)]) + rnd.randbytes(8) + rnd.randbytes(1100)
            if k % 3:
                frames.append(bytes(udp_packet(_server(i), "192.0.2.100", 443, 40000, sh)))
            else:
                frames.append(bytes(udp_packet("192.0.2.100", _server(i), 40000, 443, sh)))
        t["quic"].append(frames)
        req = (f"POST /api/generate HTTP/1.1\r\nHost: {name}:11434\r\nUser-Agent: bench\r\n"
               "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
               '{"model":"llama3","prompt":"hello there"}').encode()
        pk = tcp_flow("192.0.2.100", _server(i), 40000, 11434, req,
                      server_data=rnd.randbytes(1400 * 4), mss=1400)
        t["http"].append([bytes(p) for p in pk])
    return t


def build_capture(path: Path, target: int) -> int:
    """Write a mixed capture of at least ``target`` packets; returns the packet count."""
    t = _templates()
    # share of flows by kind (per 100 flows)
    plan = ["tls4"] * 46 + ["tls6"] * 18 + ["dns"] * 20 + ["quic"] * 6 + ["http"] * 10
    w = RawPcapWriter(str(path), linktype=1, sync=False)
    w.write_header(None)
    n = 0
    ts = 1_700_000_000.0
    flow = 0
    while n < target:
        kind = plan[flow % len(plan)]
        tpl = t[kind][flow % 8]
        frames = _patch(tpl, 1024 + flow % 60000, 2 + (flow // 60000) % 250, kind == "tls6")
        for fr in frames:
            sec = int(ts)
            w.write_packet(fr, sec=sec, usec=int((ts - sec) * 1e6))
            ts += 0.00001
        n += len(frames)
        flow += 1
    w.close()
    return n


def bench_egresswatch(
    path: Path, inspect: object = None
) -> tuple[float, float, dict[str, int], Sniffer]:
    """(wall seconds, CPU seconds, names found, sniffer) for one offline run."""
    names: dict[str, int] = {"sni": 0, "dns-query": 0, "http-host": 0}
    distinct: set[str] = set()

    def count(summary: object) -> None:
        s = summary  # FlowSummary
        if s.sni:  # type: ignore[attr-defined]
            names["sni"] += 1
            distinct.add(s.sni)  # type: ignore[attr-defined]
        names["dns-query"] += len(s.dns_queries)  # type: ignore[attr-defined]
        distinct.update(n for n, _ in s.dns_queries)  # type: ignore[attr-defined]
        if s.http_host:  # type: ignore[attr-defined]
            names["http-host"] += 1
            distinct.add(s.http_host)  # type: ignore[attr-defined]

    sn = Sniffer(inspect, None, on_flow_end=count)  # type: ignore[arg-type]
    t0, c0 = time.perf_counter(), time.process_time()
    run_file(sn, path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    DISTINCT["egresswatch"] = distinct
    return wall, cpu, names, sn


def bench_scapy_reader(path: Path) -> float:
    """Seconds scapy's RawPcapReader needs just to hand out the raw records (no parsing)."""
    from scapy.utils import RawPcapReader

    t0 = time.perf_counter()
    with RawPcapReader(str(path)) as r:
        for _ in r:
            pass
    return time.perf_counter() - t0


def bench_tshark(path: Path) -> tuple[float, float, dict[str, int]] | None:
    """(wall seconds, CPU seconds of tshark, names found), None without tshark."""
    tshark = shutil.which("tshark")
    if not tshark:
        return None
    cmd = [tshark, "-r", str(path), "-T", "fields", "-e", "tls.handshake.extensions_server_name",
           "-e", "dns.qry.name", "-e", "http.host"]
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "HOME": tempfile.gettempdir()})
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    names = {"sni": 0, "dns-query": 0, "http-host": 0}
    distinct: set[str] = set()
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        names["sni"] += bool(parts[0])
        names["dns-query"] += bool(parts[1]) and not parts[1].startswith(" ")
        names["http-host"] += bool(parts[2])
        distinct.update(p.split(":")[0] for p in parts[:3] for p in p.split(",") if p)
    DISTINCT["tshark"] = distinct
    return elapsed, cpu, names


_SENDER = r"""
import os, socket, sys, time
dst = sys.argv[1]
rate, count, size, workers = map(int, sys.argv[2:6])
def send(rate, count, seed):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]  # 16 flows
    payload = bytes([seed]) * size
    batch = max(1, rate // 1000)
    sent, t0 = 0, time.perf_counter()
    while sent < count:
        for i in range(batch):
            socks[(sent + i) & 15].sendto(payload, (dst, 5000))
        sent += batch
        ahead = sent / rate - (time.perf_counter() - t0)
        if ahead > 0:
            time.sleep(ahead)
    return sent
t0 = time.perf_counter()
pids = []
for w in range(workers):
    pid = os.fork()
    if pid == 0:
        send(rate // workers, count // workers, w)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print(f"{(count // workers) * workers} {time.perf_counter() - t0:.3f}")
"""

_SINK = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("203.0.113.10", 5000))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
print("READY", flush=True)
while True:
    s.recv(65535)
"""


def bench_live(rates: list[int], seconds: float, senders: int = 2) -> None:
    """Offer UDP at each rate through the lab gateway; the sniffer captures on its veth.

    Runs the real ``egresswatch sniff -i`` (default filter, no judging) in the gateway
    namespace and reads its summary line: packets seen, kernel received and dropped.
    Needs root (namespaces); traffic goes only to 203.0.113.10 inside the lab.
    """
    import re
    import signal

    from helpers.lab import internet_lab, wait_for

    exe = str(Path(sys.executable).parent / "egresswatch")
    print(f"live: UDP, {senders} sender processes x 16 flows, 200-byte payloads, {seconds:.0f} s "
          "per rate, sniffer on the gateway's client-side veth")
    print(f"{'target/s':>10} {'achieved/s':>10} {'sent':>8} {'seen':>8} {'kernel rcv':>10} "
          f"{'dropped':>8}")
    with internet_lab("snb", v6=False) as net:
        lab = net.lab
        lab.spawn(net.internet, [sys.executable, "-c", _SINK], ready="READY")
        for rate in rates:
            err = Path(tempfile.mkstemp(prefix="ew-sniff-")[1])
            with err.open("wb") as fh:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", net.gateway, exe, "sniff", "-i", net.client_iface,
                     "--json", "--no-judge", "--duration", str(seconds * 3 + 30)],
                    stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
            try:
                if not wait_for(lambda e=err: "capturing on" in e.read_text(), timeout=30):
                    raise RuntimeError(err.read_text())
                res = lab.sh(sys.executable, "-c", _SENDER, "203.0.113.10", str(rate),
                             str(int(rate * seconds)), "200", str(senders), ns=net.client,
                             timeout=seconds * 6 + 30)
                sent, took = int(res.stdout.split()[0]), float(res.stdout.split()[1])
                time.sleep(1.0)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            text = err.read_text()
            err.unlink()
            m = re.search(r"(\d+) packets.*kernel: (\d+) received, (\d+) dropped", text)
            if not m:
                print(f"{rate:>10,} {sent / took:>10,.0f} {sent:>8} (no summary: {text[-200:]})")
                continue
            seen, rcv, drop = (int(x) for x in m.groups())
            print(f"{rate:>10,} {sent / took:>10,.0f} {sent:>8} {seen:>8} {rcv:>10} {drop:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, help="write the capture here and keep it")
    ap.add_argument("--judge", action="store_true", help="also time a run with the inspector")
    ap.add_argument("--live", type=lambda v: [int(x) for x in v.split(",")], metavar="RATES",
                    help="also measure live capture in a namespace lab at these packets/s "
                    "(comma-separated, e.g. 20000,50000,100000; needs root)")
    ap.add_argument("--live-seconds", type=float, default=5.0)
    ap.add_argument("--live-senders", type=int, default=2, help="sender processes")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ew-bench-sniffer-"))
    path = args.keep or tmp / "mixed.pcap"
    try:
        t0 = time.perf_counter()
        n = build_capture(path, args.packets)
        print(f"capture: {n} packets, {path.stat().st_size / 1e6:.1f} MB, "
              f"built in {time.perf_counter() - t0:.1f} s")
        # wall time depends on what else runs on the machine; CPU time much less so
        print(f"{'':12} {'wall s':>7} {'packets/s':>11} {'CPU s':>7} {'packets/CPU-s':>13}")
        ew, ewc, ew_names, sn = bench_egresswatch(path)
        print(f"{'egresswatch':12} {ew:7.2f} {n / ew:11,.0f} {ewc:7.2f} {n / ewc:13,.0f}  "
              f"names {ew_names}  malformed {dict(sn.stats.malformed)}")
        sr = bench_scapy_reader(path)
        print(f"(scapy RawPcapReader alone, no parsing: {n / sr:,.0f} records/s)")
        ts = bench_tshark(path)
        if ts is None:
            print("tshark: not installed (apt-get install tshark); no comparison")
        else:
            print(f"{'tshark':12} {ts[0]:7.2f} {n / ts[0]:11,.0f} {ts[1]:7.2f} "
                  f"{n / ts[1]:13,.0f}  names {ts[2]}")
            print(f"ratio: egresswatch is {ts[0] / ew:.2f}x tshark's speed (wall), "
                  f"{ts[1] / ewc:.2f}x (CPU)")
            print("(tshark counts names per packet: DNS names in queries and answers, SNI in "
                  "every ClientHello packet; egresswatch counts per flow)")
            ours, theirs = DISTINCT["egresswatch"], DISTINCT["tshark"]
            print(f"same distinct names from both: {ours == theirs} ({len(theirs)} names)"
                  + ("" if ours == theirs else
                     f"; only tshark: {theirs - ours}, only egresswatch: {ours - theirs}"))
        if args.judge:
            from egresswatch.runtime import Settings, build_inspector

            insp = build_inspector(Settings(metrics_listen=None))
            ej, ejc, _, sj = bench_egresswatch(path, insp.inspect)
            print(f"{'+ inspector':12} {ej:7.2f} {n / ej:11,.0f} {ejc:7.2f} {n / ejc:13,.0f}  "
                  f"decisions {sj.stats.decisions}")
        if args.live:
            bench_live(args.live, args.live_seconds, args.live_senders)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The gateway of ``egresswatch verify``: runs inside the gateway namespace, answers everything.

Started by :func:`egresswatch.verify.run_verify` as
``ip netns exec <gateway> python -m egresswatch.verifylab CONFIG.json``. Both
sensors run here and every attempt of the command under test ends here:

- DNS (UDP/53, redirected by nftables) is answered by :class:`PoolDns` from a
  private pool: each name gets its own address in 198.18.0.0/15 (RFC 2544's
  benchmarking range, never routed on the internet), so a later connection to
  that address is tied back to the name even when the client sends no SNI.
  AAAA queries get an empty answer (NOERROR, no data: RFC 2308 §2.2), so clients
  use the IPv4 pool.
- TCP/80 and TCP/443 go to mitmproxy in transparent mode with the egresswatch
  addon. TLS is terminated with egresswatch's CA, the request is classified, then
  answered locally with 451 (``connection_strategy=lazy``: nothing goes upstream).
- Every other TCP port goes to :class:`RawRecorder`, which reads the first bytes
  (a TLS ClientHello or an HTTP head is parsed for its name and payload) and closes.
- The passive sniffer watches the command's veth and sees every packet, including
  UDP that nobody answers.

Each judged observation becomes one JSON line in the records file (redacted
evidence only: findings as the classifier redacted them, no bodies). The gateway
namespace has no route to anywhere, and forwarding is off: nothing leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from egresswatch.model import (
    Action,
    Decision,
    FlowClosed,
    Mode,
    Observation,
    Protocol,
    Sensor,
    Stage,
    Transport,
    Verdict,
)

log = logging.getLogger(__name__)

#: RFC 2544 §C.2.2 / RFC 5735: 198.18.0.0/15 is for benchmarking and never routed publicly.
DEFAULT_POOL = "198.18.0.0/15"
#: getsockopt(SOL_IP, SO_ORIGINAL_DST) (linux/netfilter_ipv4.h) and its IPv6 twin
#: IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h): both 80.
SO_ORIGINAL_DST = 80
#: how many leading bytes of a raw stream are kept (hex), enough to tell the protocol
FIRST_BYTES = 16
#: how long the raw recorder waits for a client's first bytes
RAW_READ_TIMEOUT = 1.5
RAW_READ_LIMIT = 16 * 1024
#: TTL of pool answers: short, the pool lives only as long as the run
POOL_TTL = 5
#: records kept per run; later attempts are counted by nobody (the report says so)
MAX_RECORDS = 100_000
RULE = "verify"
REASON = "egresswatch verify answers every attempt locally"


# -- the name pool ---------------------------------------------------------------------------


class NamePool:
    """Each name its own address from ``cidr``; thread-safe; both directions."""

    def __init__(self, cidr: str = DEFAULT_POOL) -> None:
        self.net = ipaddress.IPv4Network(cidr)
        self._next = 1
        self._by_name: dict[str, str] = {}
        self._by_addr: dict[str, str] = {}
        self._lock = threading.Lock()

    def address(self, name: str) -> str:
        """The pool address of ``name`` (allocated on first use)."""
        key = name.lower().rstrip(".")
        with self._lock:
            addr = self._by_name.get(key)
            if addr is None:
                if self._next >= self.net.num_addresses - 1:
                    raise ValueError("name pool exhausted")
                addr = str(self.net.network_address + self._next)
                self._next += 1
                self._by_name[key] = addr
                self._by_addr[addr] = key
            return addr

    def name(self, addr: str | None) -> str | None:
        """The name that was given ``addr``, or None."""
        if addr is None:
            return None
        with self._lock:
            return self._by_addr.get(addr)

    def contains(self, addr: str) -> bool:
        try:
            return ipaddress.ip_address(addr) in self.net
        except ValueError:
            return False


# -- attribution -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    name: str


class NetnsOwners:
    """Finds the process in the command's namespace that owns a socket with a local port.

    The gateway runs in another namespace, so its own ``/proc/net/*`` shows other
    sockets: the tables are read through ``/proc/<pid>/net/`` of a process inside
    the command namespace (proc(5)); socket inodes are global, so the fd scan
    works from here. Only processes in that namespace are considered.
    """

    def __init__(self, netns_path: str | None, proc: str = "/proc", max_pids: int = 4096) -> None:
        self.proc = Path(proc)
        self.max_pids = max_pids
        self.ns_ino: int | None = None
        if netns_path:
            with contextlib.suppress(OSError):
                self.ns_ino = os.stat(netns_path).st_ino

    def _members(self) -> list[int]:
        if self.ns_ino is None:
            return []
        out: list[int] = []
        try:
            pids = [int(p) for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return out
        for pid in pids[: self.max_pids]:
            try:
                if os.stat(self.proc / str(pid) / "ns" / "net").st_ino == self.ns_ino:
                    out.append(pid)
            except OSError:
                continue
        return out

    def owner(self, transport: str, port: int | None) -> Owner | None:
        """The owner of the command-side socket bound to local ``port`` (tcp or udp)."""
        if not port:
            return None
        members = self._members()
        if not members:
            return None
        inodes = self._inodes(members[0], transport, port)
        if not inodes:
            return None
        for pid in members:
            fd_dir = self.proc / str(pid) / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    return Owner(pid, _comm(self.proc, pid))
        return None

    def _inodes(self, anchor: int, transport: str, port: int) -> set[int]:
        want = f":{port:04X}"
        found: set[int] = set()
        for table in (transport, transport + "6"):
            try:
                lines = (self.proc / str(anchor) / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                if len(f) > 9 and f[1].endswith(want) and f[9] != "0":
                    found.add(int(f[9]))
        return found


def _comm(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


# -- records ---------------------------------------------------------------------------------


def record_of(decision: Decision, *, first_bytes: bytes | None = None) -> dict[str, Any]:
    """One judged attempt as plain JSON: names, service, payload types, redacted findings."""
    a = decision.assessment
    o = a.observation
    svc = a.service.service if a.service is not None and a.service.official else None
    return {
        "time": o.time,
        "sensor": str(o.sensor),
        "stage": str(o.stage),
        "flow_id": o.flow_id,
        "transport": str(o.transport),
        "protocol": str(o.protocol),
        "dst_addr": o.dst_addr,
        "dst_port": o.dst_port,
        "client_port": o.client_port,
        "host": a.host,
        "sni": o.sni,
        "http_host": o.http_host,
        "dns_name": o.dns_name,
        "method": o.method,
        "path": _redact_path(o.path),
        "pid": o.client_pid,
        "process": o.client_process,
        "service": None
        if svc is None
        else {
            "id": svc.id,
            "name": svc.name,
            "operator": svc.operator,
            "operator_country": svc.operator_country,
        },
        "lookalike": a.service is not None and not a.service.official,
        "address_country": a.geo.country,
        "payload_types": [str(t) for t in a.payload_types],
        "findings": [
            {"kind": str(f.kind), "redacted": f.redacted, "where": f.where, "detail": f.detail}
            for f in a.findings
        ],
        "flags": list(a.flags),
        "policy": {
            "action": str(decision.verdict.action),
            "label": decision.verdict.label,
            "rule": decision.verdict.rule,
            "reason": decision.verdict.reason,
        },
        "first_bytes": first_bytes[:FIRST_BYTES].hex() if first_bytes else None,
    }


def _redact_path(path: str | None) -> str | None:
    from egresswatch.jsonable import redact_path

    return redact_path(path)


class Recorder:
    """Wraps the inspector: names from the pool, owners from /proc, one JSON line per attempt.

    The Decision handed back to the sensor is always a block in enforce mode, except
    at the ClientHello, where letting the handshake finish is what lets the proxy see
    the request (which is then answered 451).
    """

    def __init__(
        self,
        inspect: Callable[[Observation], Decision],
        out_path: Path,
        pool: NamePool,
        owners: NetnsOwners,
        *,
        skip_clients: frozenset[str] = frozenset(),
        permit: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self._inspect = inspect
        #: ``--online``: attempts this accepts are let through (forwarded for real)
        self.permit = permit
        self.pool = pool
        self.owners = owners
        self.skip_clients = skip_clients
        self._out = out_path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        #: flow_id -> first bytes, for raw flows (set by RawRecorder before judging)
        self.first_bytes: dict[str, bytes] = {}
        self.count = 0

    def enrich(self, obs: Observation) -> Observation:
        changes: dict[str, Any] = {}
        if obs.dns_name is None and obs.dst_addr is not None:
            name = self.pool.name(obs.dst_addr)
            if name:
                changes["dns_name"] = name
        if obs.client_pid is None and obs.client_port:
            owner = self.owners.owner(str(obs.transport), obs.client_port)
            if owner is not None:
                changes["client_pid"] = owner.pid
                changes["client_process"] = owner.name
        return replace(obs, **changes) if changes else obs

    def inspect(self, obs: Observation) -> Decision:
        obs = self.enrich(obs)
        decision = self._inspect(obs)
        rec = record_of(decision, first_bytes=self.first_bytes.pop(obs.flow_id, None))
        if obs.client_addr not in self.skip_clients:
            self.write(rec)
        if obs.stage is Stage.CLIENTHELLO:
            verdict = Verdict(Action.ALLOW, RULE, "intercepted to read the request", Mode.MONITOR)
        elif self.permit is not None and self.permit(rec):
            verdict = Verdict(Action.ALLOW, RULE, "allowed: forwarded (--online)", Mode.MONITOR)
        else:
            verdict = Verdict(Action.BLOCK, RULE, REASON, Mode.ENFORCE)
        return Decision(assessment=decision.assessment, verdict=verdict, id=decision.id)

    def write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, sort_keys=True)
        with self._lock:
            self.count += 1
            if self.count > MAX_RECORDS:  # bounded: a runaway loop must not fill the disk
                if self.count == MAX_RECORDS + 1:
                    self._out.write(json.dumps({"truncated": MAX_RECORDS}) + "\n")
                    self._out.flush()
                return
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            self._out.close()


class NullSink:
    """The sensors' sink: records are written by :class:`Recorder` already."""

    def record(self, decision: Decision) -> None:
        pass

    def flow_closed(self, event: FlowClosed) -> None:
        pass

    def close(self) -> None:
        pass


class OnlineUpstream:
    """mitmproxy addon (``--online``): a request that was let through goes to the real name.

    The command connected to a pool address; the name it stands for is resolved by the
    host's resolver when mitmproxy connects (``connection_strategy=lazy``: only now).
    Runs after the egresswatch addon, which has answered 451 to everything not allowed.
    """

    def __init__(self, pool: NamePool) -> None:
        self.pool = pool

    def request(self, flow: Any) -> None:
        if not flow.live or flow.response is not None:
            return
        addr = flow.server_conn.address
        name = self.pool.name(addr[0]) if addr else None
        if name:
            flow.request.host = name  # the Host header already names it


# -- DNS -------------------------------------------------------------------------------------


class PoolDns:
    """mitmproxy addon for the ``dns`` mode: answer every query from the pool, ask nobody."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def dns_request(self, flow: Any) -> None:
        from mitmproxy import dns

        if not flow.live or flow.response is not None:
            return
        answers: list[Any] = []
        q = flow.request.questions[0] if flow.request.questions else None
        if q is None:
            flow.response = flow.request.fail(dns.response_codes.FORMERR)
            return
        name = q.name.rstrip(".").lower()
        if q.type == dns.types.A:
            answers.append(
                dns.ResourceRecord.A(
                    q.name, ipaddress.IPv4Address(self.recorder.pool.address(name)), ttl=POOL_TTL
                )
            )
        elif q.type == dns.types.PTR:
            target = _ptr_address(name)
            back = self.recorder.pool.name(target)
            if back is None:
                flow.response = flow.request.fail(dns.response_codes.NXDOMAIN)
                return
            answers.append(dns.ResourceRecord.PTR(q.name, back, ttl=POOL_TTL))
        # AAAA, HTTPS, SVCB ...: NOERROR with no data (RFC 2308 §2.2), so clients use A.
        flow.response = flow.request.succeed(answers)
        if q.type != dns.types.PTR:
            self._record(flow, name, dns.types.to_str(q.type))

    def _record(self, flow: Any, name: str, qtype: str) -> None:
        client = flow.client_conn.peername
        server = flow.server_conn.address if flow.server_conn else None
        obs = Observation(
            sensor=Sensor.VERIFY,
            transport=Transport.UDP,
            protocol=Protocol.DNS,
            dst_addr=server[0] if server else None,
            dst_port=server[1] if server else 53,
            stage=Stage.REQUEST,
            client_addr=client[0] if client else None,
            client_port=client[1] if client else None,
            dns_name=name,
            headers=(("dns-query", f"{name} {qtype}"),),
        )
        with contextlib.suppress(Exception):
            self.recorder.inspect(obs)


def _ptr_address(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4`` (RFC 1035 §3.5)."""
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name[: -len(".in-addr.arpa")].split(".")
    return ".".join(reversed(parts)) if len(parts) == 4 else None


# -- raw TCP ---------------------------------------------------------------------------------


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-NAT destination of a redirected TCP connection (SO_ORIGINAL_DST)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return socket.inet_ntop(socket.AF_INET, packed), port
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        addr = ipaddress.IPv6Address(packed)
        return str(addr.ipv4_mapped or addr), port
    except OSError:
        return None


def raw_observation(
    data: bytes, dst: tuple[str, int] | None, client: tuple[str, int] | None
) -> Observation:
    """An Observation of a raw TCP stream from its first bytes (TLS and HTTP/1 are parsed)."""
    from egresswatch.sniffer import http as httpmod
    from egresswatch.sniffer import tls as tlsmod

    fields: dict[str, Any] = {"protocol": Protocol.RAW}
    if data[:1] == b"\x16":
        with contextlib.suppress(ValueError, IndexError):
            msg = tlsmod.handshake_from_records(data)
            if msg is not None:
                hello = tlsmod.parse_client_hello(msg)
                fields.update(protocol=Protocol.TLS, sni=hello.sni, alpn=tuple(hello.alpn))
    elif httpmod.looks_like_request(data):
        with contextlib.suppress(ValueError):
            req = httpmod.parse_request(data)
            if req is not None:
                fields.update(
                    protocol=Protocol.HTTP,
                    http_host=req.host,
                    method=req.method,
                    path=req.target,
                    headers=req.headers,
                    body=req.body,
                    body_truncated=req.content_length is not None
                    and len(req.body) < req.content_length,
                )
    return Observation(
        sensor=Sensor.VERIFY,
        transport=Transport.TCP,
        dst_addr=dst[0] if dst else None,
        dst_port=dst[1] if dst else None,
        stage=Stage.REQUEST if data else Stage.CONNECT,
        client_addr=client[0] if client else None,
        client_port=client[1] if client else None,
        bytes_out=len(data),
        **fields,
    )


class RawRecorder:
    """Accepts redirected TCP on any other port, keeps the first bytes, judges, closes."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        dst = original_dst(sock) if sock is not None else None
        peer = writer.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1])) if peer else None
        # Look up the owner while the socket is surely open.
        obs0 = Observation(
            sensor=Sensor.VERIFY, transport=Transport.TCP, protocol=Protocol.RAW,
            dst_addr=None, dst_port=None, client_port=client[1] if client else None,
        )  # fmt: skip
        owner = await asyncio.to_thread(self.recorder.enrich, obs0)
        data = b""
        deadline = time.monotonic() + RAW_READ_TIMEOUT
        with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
            while len(data) < RAW_READ_LIMIT:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                chunk = await asyncio.wait_for(reader.read(RAW_READ_LIMIT - len(data)), left)
                if not chunk:
                    break
                data += chunk
                if _complete(data):
                    break
        obs = raw_observation(data, dst, client)
        obs = replace(obs, client_pid=owner.client_pid, client_process=owner.client_process)
        self.recorder.first_bytes[obs.flow_id] = data
        decision = None
        with contextlib.suppress(Exception):
            decision = await asyncio.to_thread(self.recorder.inspect, obs)
        if decision is not None and not decision.verdict.enforced and dst is not None:
            target = self.recorder.pool.name(dst[0]) or dst[0]
            await _relay(reader, writer, data, (target, dst[1]))
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    target: tuple[str, int],
    idle: float = 300.0,
) -> None:
    """``--online``: connect to the real target, send what was read, then pipe both ways."""
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*target), 15)
    except (OSError, TimeoutError):
        return
    up_w.write(first)

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            while chunk := await asyncio.wait_for(src.read(65536), idle):
                dst.write(chunk)
                await dst.drain()
        with contextlib.suppress(OSError):
            if dst.can_write_eof():
                dst.write_eof()

    await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
    up_w.close()


def _complete(data: bytes) -> bool:
    """Enough to judge: a whole ClientHello, an HTTP head, or any non-TLS/HTTP bytes."""
    from egresswatch.sniffer import http as httpmod
    from egresswatch.sniffer import tls as tlsmod

    if data[:1] == b"\x16":
        try:
            return tlsmod.handshake_from_records(data) is not None
        except ValueError:
            return True
    if httpmod.looks_like_request(data):
        return b"\r\n\r\n" in data
    return True


# -- the process -----------------------------------------------------------------------------


def _sniff(recorder: Recorder, iface: str, stop: threading.Event, ready: threading.Event) -> None:
    from egresswatch.sniffer.capture import LiveCapture
    from egresswatch.sniffer.engine import Sniffer

    class FirstBytesSniffer(Sniffer):
        """Keeps the datagram being judged, so raw UDP is recorded with its first bytes."""

        pending = b""

        def _udp_payload(self, f: Any, payload: bytes, outbound: bool, ts: float) -> None:
            self.pending = payload if outbound else b""
            try:
                super()._udp_payload(f, payload, outbound, ts)
            finally:
                self.pending = b""

    def judge(obs: Observation) -> Decision:
        if obs.protocol is Protocol.RAW and sniffer.pending:
            recorder.first_bytes[obs.flow_id] = sniffer.pending
        return recorder.inspect(obs)

    sniffer = FirstBytesSniffer(judge, None)
    cap = LiveCapture(sniffer, [iface])
    try:
        cap.open()
    except Exception as e:  # reported, the proxy side still works
        print(f"sniffer: {e}", file=sys.stderr, flush=True)
        return
    finally:
        ready.set()
    try:
        while not stop.is_set():
            cap.run(duration=0.5)
        sniffer.close()
    finally:
        cap.close()


async def _serve(cfg: dict[str, Any]) -> None:
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from egresswatch import runtime
    from egresswatch.proxy import EgressWatch

    settings = runtime.Settings(
        policy=Path(cfg["policy"]) if cfg.get("policy") else None,
        catalogs=tuple(Path(p) for p in cfg.get("catalogs", [])),
        geoip_dir=Path(cfg["geoip_dir"]) if cfg.get("geoip_dir") else None,
        country_db=Path(cfg["country_db"]) if cfg.get("country_db") else None,
        asn_db=Path(cfg["asn_db"]) if cfg.get("asn_db") else None,
        geo_overrides=Path(cfg["geo_overrides"]) if cfg.get("geo_overrides") else None,
        store=False,
        metrics_listen=None,
    )
    inspector = runtime.build_inspector(settings)
    pool = NamePool(cfg.get("pool", DEFAULT_POOL))
    owners = NetnsOwners(cfg.get("command_netns"))
    online = cfg.get("online")
    permit: Callable[[dict[str, Any]], bool] | None = None
    if online:
        from egresswatch.verify import load_profiles, record_allowed

        shipped = load_profiles()
        profiles = [shipped[p] for p in online.get("profiles", []) if p in shipped]

        def permit(rec: dict[str, Any]) -> bool:
            return record_allowed(
                rec,
                allow=online.get("allow", []),
                profiles=profiles,
                policy_given=bool(online.get("policy_given")),
            )

    recorder = Recorder(
        inspector.inspect,
        Path(cfg["records"]),
        pool,
        owners,
        skip_clients=frozenset(cfg.get("skip_clients", ["127.0.0.1", "::1"])),
        permit=permit,
    )
    stop, sniff_ready = threading.Event(), threading.Event()
    sniff = threading.Thread(
        target=_sniff,
        args=(recorder, cfg["iface"], stop, sniff_ready),
        name="verify-sniffer",
        daemon=True,
    )
    if cfg.get("sniffer", True):
        sniff.start()
    else:
        sniff_ready.set()

    raw = RawRecorder(recorder)
    # Offline the gateway has a namespace of its own: every address is ours. Online it
    # shares the host's, and listens only on the command link's address.
    hosts = cfg.get("listen") or ["0.0.0.0", "::"]
    servers = [await asyncio.start_server(raw.handle, host=h, port=cfg["raw_port"]) for h in hosts]

    opts = options.Options()
    master = DumpMaster(opts, with_termlog=bool(cfg.get("verbose")), with_dumper=False)
    # mitmproxy's own resolver would answer (or forward) first; the pool is the only resolver.
    resolver = master.addons.get("dnsresolver")
    if resolver is not None:
        master.addons.remove(resolver)
    master.addons.add(PoolDns(recorder))
    master.addons.add(EgressWatch(recorder, NullSink()))
    if online:
        master.addons.add(OnlineUpstream(pool))
    listen = cfg.get("listen")
    opts.update(
        mode=[f"transparent@{cfg['proxy_port']}", f"dns@{cfg['dns_port']}"],
        listen_host=listen[0] if listen else "",
        confdir=cfg["confdir"],
        connection_strategy="lazy",
        egresswatch_process_lookup=False,
        dns_use_hosts_file=False,
        dns_name_servers=["127.0.0.9"],  # never asked: PoolDns answers first
    )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    run = asyncio.create_task(master.run())
    # Ready when both mitmproxy listeners exist (servers addon starts them on "running").
    for _ in range(600):
        await asyncio.sleep(0.05)
        if run.done():
            break
        if (
            sniff_ready.is_set()
            and _listening(cfg["proxy_port"], "tcp")
            and _listening(cfg["dns_port"], "udp")
        ):
            print("READY", flush=True)
            break
    try:
        await run
    finally:
        stop.set()
        for server in servers:
            server.close()
        if sniff.is_alive():
            sniff.join(3)
        recorder.close()


def _listening(port: int, proto: str) -> bool:
    want = f":{port:04X}"
    for table in (proto, proto + "6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        if any(line.split()[1].endswith(want) for line in lines if len(line.split()) > 3):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the gateway process: ``python -m egresswatch.verifylab CONFIG.json``."""
    args = sys.argv[1:] if argv is None else argv
    cfg = json.loads(Path(args[0]).read_text())
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_serve(cfg))
    except Exception as e:
        print(f"gateway failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DEFAULT_POOL",
    "NamePool",
    "NetnsOwners",
    "Recorder",
    "main",
    "raw_observation",
    "record_of",
]

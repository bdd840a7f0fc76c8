"""The gateway of ``egresswatch verify``: runs inside the gateway namespace, answers everything.

Started by :func:`egresswatch.verify.run_verify` as
``ip netns exec <gateway> python -m egresswatch.verify.gateway CONFIG.json``. Both
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
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egresswatch.model import (
    Decision,
    Observation,
    Protocol,
)
from egresswatch.verify.addons import OnlineUpstream, PoolDns
from egresswatch.verify.owners import NetnsOwners
from egresswatch.verify.pool import DEFAULT_POOL, NamePool
from egresswatch.verify.raw import RawRecorder
from egresswatch.verify.recorder import NullSink, Recorder

log = logging.getLogger(__name__)


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

    from egresswatch import runtime
    from egresswatch.mitmmaster import sensor_master
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
    master = sensor_master(opts, verbose=bool(cfg.get("verbose")))
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
    """Entry point of the gateway process: ``python -m egresswatch.verify.gateway CONFIG.json``."""
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

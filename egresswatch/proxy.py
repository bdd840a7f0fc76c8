"""The inline sensor: a mitmproxy addon that judges each flow before its payload leaves.

The addon converts mitmproxy objects into :class:`~egresswatch.model.Observation`
values, asks the :class:`~egresswatch.inspector.Inspector` for a Decision at the
earliest point that has enough information (DESIGN.md, "Verdicts and where they
bite"), acts on the verdict, and hands every Decision to the sinks, which never
block the event loop.

- ``tls_clienthello``: SNI and destination address. A blocked destination gets
  no TLS handshake (the client connection is closed before a ServerHello) and,
  with ``connection_strategy=lazy``, no upstream connection. Passthrough hosts are
  judged and recorded, then relayed without interception.
- ``requestheaders``: host, path, headers. ``request``: the body (first
  ``egresswatch_body_limit`` bytes). Bodies up to ``egresswatch_stream_above``
  are buffered, so a block answers 451 and nothing leaves; larger ones are
  streamed, holding back their first ``egresswatch_body_limit`` bytes until judged
  (the request line and headers have left by then; no body byte has).
- ``response`` / ``error`` / ``websocket_end`` / ``tcp_end`` / ``udp_end``: a
  FlowClosed with byte counts and duration.
- WebSocket messages are judged one by one; a blocked message is dropped.
- Raw TCP/UDP (transparent and WireGuard modes) is judged by address and port;
  QUIC (UDP/443) is refused unless ``egresswatch_allow_quic`` is set, so clients
  fall back to TCP where they can be inspected.

Results for other addons are in ``flow.metadata["egresswatch"]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mitmproxy import connection, ctx, dns, exceptions, http, tcp, tls, udp, websocket
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from egresswatch.clientinfo import ProcessInfo, ProcessLookup, app_hint, is_local_client
from egresswatch.model import Decision, FlowClosed, Mode, Observation, Sensor, Stage, Transport
from egresswatch.model import Protocol as Proto
from egresswatch.ports import Sink
from egresswatch.proxy_options import (
    STORE_PROCESS,
    AddonConfig,
    build_from_options,
    host_matches,
    parse_options,
)

log = logging.getLogger(__name__)

#: metadata key shared with other addons
META = "egresswatch"
#: HTTP 451 Unavailable For Legal Reasons (RFC 7725): a jurisdiction rule refused the request.
BLOCK_STATUS = 451
#: how long a name resolved for judging stays cached, and how long a lookup may take
_DNS_TTL = 60.0
_DNS_TIMEOUT = 2.0
#: Firefox's DoH canary domain: an NXDOMAIN answer tells Firefox not to switch on DNS over
#: HTTPS by itself (support.mozilla.org, "Canary domain - use-application-dns.net").
DOH_CANARY = "use-application-dns.net"
#: address -> name learned from relayed DNS answers: at most this many entries ...
_NAMES_MAX = 65_536
#: ... each kept for its record's TTL, clamped: clients often cache past a short TTL
#: (and connect after it), and a long TTL must not pin a stale name for a day.
_NAME_TTL_MIN, _NAME_TTL_MAX = 300.0, 3600.0


class InspectorLike(Protocol):
    """What the addon needs from the core (``egresswatch.inspector.Inspector``)."""

    def inspect(self, obs: Observation) -> Decision: ...


def block_body(decision: Decision) -> bytes:
    """The JSON a person sees in an app's error message when a request is blocked."""
    a = decision.assessment
    service = a.service.service if a.service is not None else None
    doc = {
        "error": "blocked by egresswatch",
        "rule": decision.verdict.rule,
        "reason": decision.verdict.reason,
        "service": service.name if service else None,
        "operator": service.operator if service else None,
        "operator_country": a.operator_country,
        "address_country": a.geo.country,
        "host": a.host,
        "payload_types": [str(t) for t in a.payload_types],
        "decision_id": decision.id,
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def _is_ip(host: str | None) -> bool:
    return host is not None and host != "" and _is_ip_cached(host)


@functools.lru_cache(maxsize=4096)
def _is_ip_cached(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _host_of(authority: str) -> str:
    """``Host`` header value without its port (``[v6]:443`` -> ``v6``), lower case."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")].lower()
    if authority.count(":") == 1:
        authority = authority.split(":", 1)[0]
    return authority.lower().rstrip(".")


#: Raw header names as sent -> lower-case str; clients send the same few names every time.
_HEADER_NAMES: dict[bytes, str] = {}


def _header_name(raw: bytes) -> str:
    name = raw.decode("latin-1").lower()
    if len(_HEADER_NAMES) < 1024:  # bounded: odd names from one client cannot grow it
        _HEADER_NAMES[raw] = name
    return name


def _headers(h: http.Headers) -> tuple[tuple[str, str], ...]:
    # Straight from the raw fields: several times cheaper than Headers.items(multi=True).
    names = _HEADER_NAMES
    return tuple(
        [
            (names.get(k) or _header_name(k), v.decode("utf-8", "surrogateescape"))
            for k, v in h.fields
        ]
    )


def _framing(h: http.Headers) -> tuple[str | None, str]:
    """Content-Length and Transfer-Encoding as ``Headers.get`` gives them, in one pass.

    Repeated fields are joined with ", " like mitmproxy's multidict does, so a doubled
    Content-Length is still not a number.
    """
    length: list[bytes] = []
    coding: list[bytes] = []
    for k, v in h.fields:
        if len(k) == 14 and k.lower() == b"content-length":
            length.append(v)
        elif len(k) == 17 and k.lower() == b"transfer-encoding":
            coding.append(v)
    return (
        b", ".join(length).decode("utf-8", "surrogateescape") if length else None,
        b", ".join(coding).decode("utf-8", "surrogateescape"),
    )


#: ALPN offers as sent -> as text; clients offer the same few lists on every connection.
_ALPN: dict[tuple[bytes, ...], tuple[str, ...]] = {}


def _alpn(offers: Sequence[bytes]) -> tuple[str, ...]:
    if not offers:
        return ()
    key = tuple(offers)
    hit = _ALPN.get(key)
    if hit is None:
        hit = tuple(a.decode("ascii", "replace") for a in key)
        if len(_ALPN) < 256:  # bounded: odd lists from one client cannot grow it
            _ALPN[key] = hit
    return hit


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _meta(decision: Decision) -> dict[str, Any]:
    """Plain values only: metadata is serialised when flows are saved (``-w``)."""
    a = decision.assessment
    return {
        "decision_id": decision.id,
        "verdict": decision.verdict.label,
        "rule": decision.verdict.rule,
        "reason": decision.verdict.reason,
        "stage": str(decision.observation.stage),
        "payload_types": [str(t) for t in a.payload_types],
        "address_country": a.geo.country,
        "operator_country": a.operator_country,
    }


class _HeadHold:
    """``request.stream`` callable: holds back the first ``limit`` bytes, judges, then releases.

    Only the request line and headers leave before the verdict; if the head of the body is
    blocked, no body byte is sent and the flow is killed at its end.
    """

    def __init__(self, limit: int, judge: Callable[[bytes, bool], bool]) -> None:
        self.limit = limit
        self.judge = judge
        self.held = bytearray()
        self.total = 0
        self.decided = False
        self.blocked = False

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        self.total += len(chunk)
        if self.blocked:
            return []
        if self.decided:
            return chunk
        self.held += chunk
        end = chunk == b""
        # Hold until past the limit (or the end), so "truncated" is known, not guessed.
        if len(self.held) <= self.limit and not end:
            return []
        self.decided = True
        self.blocked = self.judge(bytes(self.held[: self.limit]), len(self.held) > self.limit)
        out = b"" if self.blocked else bytes(self.held)
        self.held.clear()
        return [out] if out else []


def answer_doh_canary(flow: dns.DNSFlow, *, replace: bool = False) -> bool:
    """NXDOMAIN for Firefox's DoH canary (and names below it). True if answered."""
    if not flow.live or (flow.response is not None and not replace):
        return False
    if not any(host_matches(q.name, (DOH_CANARY,)) for q in flow.request.questions):
        return False
    flow.response = flow.request.fail(dns.response_codes.NXDOMAIN)
    flow.metadata[META] = {"doh_canary": True}
    return True


class DohCanary:
    """mitmproxy addon: answer the DoH canary before mitmproxy's ``DnsResolver`` asks upstream.

    Addons see a hook in the order they were added, and the resolver is one of mitmproxy's
    default addons: :func:`install_doh_canary` puts this one just before it.
    """

    def dns_request(self, flow: dns.DNSFlow) -> None:
        answer_doh_canary(flow)


def install_doh_canary(master: Any) -> DohCanary:
    """Add :class:`DohCanary` to ``master`` ahead of its DNS resolver (if it has one)."""
    canary = DohCanary()
    master.addons.add(canary)
    resolver = master.addons.get("dnsresolver")
    chain: list[Any] = master.addons.chain
    if resolver is not None and resolver in chain:
        chain.remove(canary)
        chain.insert(chain.index(resolver), canary)
    return canary


class EgressWatch:
    """mitmproxy addon: judge, enforce and record each flow (see the module docstring)."""

    def __init__(
        self,
        inspector: InspectorLike | None = None,
        sinks: Sink | None = None,
        *,
        builder: Callable[[Any], tuple[InspectorLike, Sink]] | None = None,
        exit_on_bad_options: bool = False,
    ) -> None:
        # Injected parts (tests, `egresswatch run`) win over ones built from options.
        self._inspector = inspector
        self._sinks = sinks
        self._injected = inspector is not None
        self._builder = builder
        #: the `mitmdump -s` entry script: a bad option at start-up ends the process with one
        #: line (mitmproxy would print a traceback for the script, then exit 1)
        self._exit_on_bad_options = exit_on_bad_options
        self._running = False
        self._cfg = AddonConfig()
        self._procs = ProcessLookup()
        self._attr: dict[str, asyncio.Future[ProcessInfo | None]] = {}
        #: records and closes waiting for a process lookup, in order; done() fires the rest
        self._deferred: dict[object, Callable[[], None]] = {}
        self._dns: dict[str, tuple[str | None, float]] = {}
        #: address -> (name, expiry), learned from the DNS answers this proxy relayed
        self._names: dict[str, tuple[str, float]] = {}
        self._blocked_clients: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- options ---------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "egresswatch_policy", str, "", "Policy file (TOML). Empty: the shipped default policy."
        )
        loader.add_option(
            "egresswatch_mode",
            str,
            "",
            "monitor or enforce: overrides the policy file's mode. Empty: as the policy says.",
        )
        loader.add_option(
            "egresswatch_catalog", str, "", "Extra service catalog file(s), comma-separated."
        )
        loader.add_option(
            "egresswatch_db",
            str,
            "",
            "Database URL (sqlite:///path or postgresql+psycopg://...). "
            "Empty: the default SQLite file; none: record nothing.",
        )
        loader.add_option(
            "egresswatch_geoip_dir", str, "", "Directory holding MaxMind-format GeoIP databases."
        )
        loader.add_option(
            "egresswatch_country_db",
            str,
            "",
            "Country database (.mmdb); overrides the one in the GeoIP dir.",
        )
        loader.add_option("egresswatch_asn_db", str, "", "ASN database (.mmdb).")
        loader.add_option(
            "egresswatch_overrides",
            str,
            "",
            "GeoIP overrides file (CIDR -> country or label), consulted first.",
        )
        loader.add_option(
            "egresswatch_metrics_listen",
            str,
            "",
            "Serve Prometheus /metrics on HOST:PORT (127.0.0.1 when no host is given). Empty: off.",
        )
        loader.add_option(
            "egresswatch_sensor_name",
            str,
            "",
            "Name of this sensor in records and metrics. Empty: the host name.",
        )
        loader.add_option(
            "egresswatch_body_limit",
            str,
            "256k",
            "Request body bytes read for classification (the first bytes of larger ones).",
        )
        loader.add_option(
            "egresswatch_stream_above",
            str,
            "16m",
            "Bodies larger than this are streamed instead of held in memory; their first "
            "egresswatch_body_limit bytes are held back until judged.",
        )
        loader.add_option(
            "egresswatch_allow_quic",
            bool,
            False,
            "Let QUIC (UDP/443) through uninspected. "
            "Off: QUIC is refused so clients fall back to TCP.",
        )
        loader.add_option(
            "egresswatch_passthrough",
            Sequence[str],
            [],
            "Hosts relayed without TLS interception (certificate pinning); "
            "still judged and recorded by SNI and address.",
        )
        loader.add_option(
            "egresswatch_store_process",
            str,
            "auto",
            "Write the database from a child process, so SQL never holds mitmproxy's "
            "interpreter lock; false: from a thread of this process; auto: a child only "
            "when this process may use more than one CPU (affinity, cgroup CPU quota).",
            choices=tuple(STORE_PROCESS),
        )
        loader.add_option(
            "egresswatch_process_lookup",
            bool,
            True,
            "Attribute local clients to a process name and pid (reads /proc).",
        )
        self._check_command_line()

    def _check_command_line(self) -> None:
        """Stop start-up on an ``egresswatch_*`` value mitmproxy will not be able to apply.

        mitmproxy applies ``--set`` values for a script's options only after ``load``;
        when one fails (``egresswatch_process_lookup=maybe``, or an option given twice) it
        drops the whole script without a word and proxies every flow unjudged. Parse
        them here first, and exit with status 1 and the reason.
        """
        opts = ctx.options
        deferred = getattr(opts, "deferred", None)
        known = getattr(opts, "_options", None)
        if not isinstance(deferred, dict) or not isinstance(known, dict):
            return  # a mitmproxy without these internals: nothing to check against
        problems = []
        for name, value in deferred.items():
            values = getattr(value, "val", None)
            if not name.startswith("egresswatch_") or name not in known or values is None:
                continue
            try:
                opts._parse_setval(known[name], values)
            except exceptions.OptionsError as e:
                problems.append(str(e).rstrip("."))
        if problems:
            log.error(
                "egresswatch: %s. Not starting: without its options egresswatch would not "
                "run and every flow would pass unjudged.",
                "; ".join(problems),
            )
            # Not an exception mitmproxy would log and carry on from: start-up ends here.
            raise SystemExit(1)

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        ours = {name for name in updated if name.startswith("egresswatch_")}
        if not ours:
            return
        try:
            self._apply_options(opts, ours)
        except exceptions.OptionsError as e:
            if self._exit_on_bad_options and not self._running:
                log.error("%s. Not starting.", str(e).rstrip("."))
                raise SystemExit(1) from None
            raise  # at run time mitmproxy refuses the change and keeps the old values
        self._require_lazy()

    def _apply_options(self, opts: Any, ours: set[str]) -> None:
        try:
            self._cfg = parse_options(
                opts.egresswatch_body_limit,
                opts.egresswatch_allow_quic,
                opts.egresswatch_passthrough,
                opts.egresswatch_process_lookup,
                opts.egresswatch_stream_above,
            )
        except ValueError as e:
            raise exceptions.OptionsError(f"egresswatch: {e}") from e
        building = ours - {
            "egresswatch_body_limit",
            "egresswatch_allow_quic",
            "egresswatch_passthrough",
            "egresswatch_process_lookup",
            "egresswatch_stream_above",
        }
        if building and not self._injected:
            self._build(opts)

    def _build(self, opts: Any) -> None:
        from egresswatch.errors import EgressWatchError

        builder = self._builder or build_from_options
        try:
            inspector, sinks = builder(opts)
        except (EgressWatchError, ValueError) as e:
            raise exceptions.OptionsError(f"egresswatch: {e}") from e
        if self._sinks is not None:
            self._sinks.close()
        self._inspector, self._sinks = inspector, sinks

    def _mode(self) -> Mode | None:
        policy = getattr(self._inspector, "policy", None)
        mode = getattr(policy, "mode", None)
        return mode if isinstance(mode, Mode) else None

    def _policy_passthrough(self, host: str | None) -> bool:
        check = getattr(getattr(self._inspector, "policy", None), "is_passthrough", None)
        return bool(check(host)) if check is not None and host else False

    def _require_lazy(self) -> None:
        # Enforce mode needs lazy upstream connections: with "eager", mitmproxy connects to the
        # server as soon as the client connects, before any verdict (lab-notes.md).
        opts = ctx.options
        if (
            self._mode() is Mode.ENFORCE
            and "connection_strategy" in opts  # defined by mitmproxy's proxyserver addon
            and opts.connection_strategy != "lazy"
        ):
            opts.update(connection_strategy="lazy")
            log.info(
                "egresswatch: enforce mode: set connection_strategy=lazy (no upstream "
                "contact before a verdict)"
            )

    def running(self) -> None:
        self._running = True
        self._require_lazy()
        _freeze_startup_objects()

    def done(self) -> None:
        # Records still waiting for a process lookup go out now, without the process:
        # nothing decided may be lost at shutdown.
        for fire in list(self._deferred.values()):
            fire()
        if self._sinks is not None:
            self._sinks.close()

    # -- helpers ---------------------------------------------------------------------------

    def _judge(self, obs: Observation) -> Decision | None:
        if self._inspector is None:
            return None
        return self._inspector.inspect(obs)

    def _record(self, decision: Decision, client: connection.Client | None = None) -> None:
        if self._sinks is None:
            return
        fut = self._attr.get(client.id) if client is not None else None
        if fut is None or fut.done() or decision.observation.client_pid is not None:
            self._sinks.record(decision)
            return
        # The process lookup is still running in its thread: the verdict did not wait for
        # it, the record does (bounded by the lookup's own budget).
        sinks = self._sinks
        key = object()

        def fire(proc: ProcessInfo | None = None) -> None:
            if self._deferred.pop(key, None) is not None:
                sinks.record(_with_process(decision, proc))

        def record_when_known(done: asyncio.Future[ProcessInfo | None]) -> None:
            fire(None if done.cancelled() or done.exception() else done.result())

        self._deferred[key] = fire
        fut.add_done_callback(record_when_known)

    def _closed(self, event: FlowClosed, client: connection.Client | None = None) -> None:
        if self._sinks is None:
            return
        fut = self._attr.get(client.id) if client is not None else None
        if fut is None or fut.done():
            self._sinks.flow_closed(event)
        else:
            # after the deferred record above (callbacks run in the order they were added)
            sinks = self._sinks
            key = object()

            def fire(_: object = None) -> None:
                if self._deferred.pop(key, None) is not None:
                    sinks.flow_closed(event)

            self._deferred[key] = fire
            fut.add_done_callback(fire)

    async def _resolve(self, host: str | None) -> str | None:
        """An address to judge for a destination known only by name (regular/upstream mode)."""
        if host is None or _is_ip(host):
            return host
        now = time.monotonic()
        hit = self._dns.get(host)
        if hit is not None and hit[1] > now:
            return hit[0]
        addr: str | None = None
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
                _DNS_TIMEOUT,
            )
            addr = str(infos[0][4][0]) if infos else None
        except (OSError, TimeoutError, UnicodeError):
            addr = None  # unknown address: the policy decides what unknown gets
        if len(self._dns) > 10_000:
            self._dns.clear()
        self._dns[host] = (addr, now + _DNS_TTL)
        return addr

    def _learn(self, addr: str, name: str, ttl: float, now: float) -> None:
        names = self._names
        if addr not in names and len(names) >= _NAMES_MAX:
            for key in [k for k, (_, exp) in names.items() if exp <= now]:
                del names[key]
            if len(names) >= _NAMES_MAX:  # all live: drop the oldest quarter (insertion order)
                for key in list(names)[: _NAMES_MAX // 4]:
                    del names[key]
        names.pop(addr, None)  # re-insert: newest last
        names[addr] = (name, now + min(max(ttl, _NAME_TTL_MIN), _NAME_TTL_MAX))

    def _destination(self, host: str | None) -> tuple[str | None, str | None]:
        """(address to judge, DNS name) of a destination known by address or by name.

        An address is judged as is, under the name DNS answers gave it; a name is judged
        at the address it last resolved (see _resolve), under itself. One address test.
        """
        if host is None:
            return None, None
        if host and _is_ip_cached(host):
            hit = self._names.get(host)
            return host, (hit[0] if hit is not None and hit[1] > time.monotonic() else None)
        known = self._dns.get(host)
        return (known[0] if known else None), host

    def _start_attribution(self, client: connection.Client) -> None:
        if not self._cfg.process_lookup or not client.peername:
            return
        addr, port = client.peername[0], client.peername[1]
        # Same host: loopback, or a connection from one of our own addresses to itself.
        same_host = is_local_client(addr) or bool(client.sockname and client.sockname[0] == addr)
        if not same_host:
            return
        # the address the client connected to: with it the kernel finds the client's
        # socket in one netlink request instead of a read of /proc/net/tcp (~10 ms here)
        peer = (client.sockname[0], client.sockname[1]) if client.sockname else None
        task = asyncio.ensure_future(asyncio.to_thread(self._procs.owner, addr, port, peer))
        self._attr[client.id] = task

    def _process_now(self, client: connection.Client) -> ProcessInfo | None:
        fut = self._attr.get(client.id)
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result()

    def _client_fields(self, client: connection.Client, ua: str | None) -> dict[str, Any]:
        proc = self._process_now(client)
        return {
            "client_addr": client.peername[0] if client.peername else None,
            "client_port": client.peername[1] if client.peername else None,
            "client_app": app_hint(ua) or (proc.name if proc else None),
            "client_pid": proc.pid if proc else None,
            "client_process": proc.name if proc else None,
        }

    def _http_obs(
        self, flow: http.HTTPFlow, stage: Stage, body: bytes = b"", truncated: bool = False
    ) -> Observation:
        # once per request: the client fields inline (_client_fields builds a dict to splat)
        req = flow.request
        client = flow.client_conn
        host, port = flow.server_conn.address or (req.host, req.port)
        dst_addr, dns_name = self._destination(host)
        headers = _headers(req.headers)
        ua = _first(headers, "user-agent")
        proc = self._process_now(client)
        peer = client.peername
        return Observation(
            sensor=Sensor.PROXY,
            transport=Transport.UDP if req.is_http3 else Transport.TCP,
            protocol=Proto.HTTPS if req.scheme == "https" else Proto.HTTP,
            dst_addr=dst_addr,
            dst_port=port,
            stage=stage,
            flow_id=flow.id,
            sni=client.sni,
            http_host=_host_of(_first(headers, "host") or req.authority or req.host),
            dns_name=dns_name,
            alpn=_alpn(client.alpn_offers),
            method=req.method,
            path=req.path,
            headers=headers,
            body=body,
            body_truncated=truncated,
            bytes_out=len(body),
            client_addr=peer[0] if peer else None,
            client_port=peer[1] if peer else None,
            client_app=app_hint(ua) or (proc.name if proc else None),
            client_pid=proc.pid if proc else None,
            client_process=proc.name if proc else None,
        )

    def _answer_blocked(self, flow: http.HTTPFlow, decision: Decision) -> None:
        flow.response = http.Response.make(
            BLOCK_STATUS,
            block_body(decision),
            {"content-type": "application/json", "x-egresswatch-rule": decision.verdict.rule},
        )
        flow.metadata[META]["blocked"] = True

    def _act(self, flow: http.HTTPFlow, decision: Decision) -> bool:
        """Store the verdict on the flow, answer 451 if enforced. True if blocked."""
        flow.metadata[META] = _meta(decision)
        if decision.verdict.enforced:
            self._answer_blocked(flow, decision)
            return True
        return False

    # -- connections -----------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self._start_attribution(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._attr.pop(client.id, None)
        self._blocked_clients.discard(client.id)

    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client, server = data.context.client, data.context.server
        host, port = server.address or (None, None)
        is_quic = server.transport_protocol == "udp" or client.transport_protocol == "udp"
        addr = await self._resolve(host)
        sni = data.client_hello.sni
        obs = Observation(
            sensor=Sensor.PROXY,
            transport=Transport.UDP if is_quic else Transport.TCP,
            protocol=Proto.QUIC if is_quic else Proto.TLS,
            dst_addr=addr,
            dst_port=port,
            stage=Stage.CLIENTHELLO,
            flow_id=client.id,
            sni=sni,
            dns_name=self._destination(host)[1],
            alpn=_alpn(data.client_hello.alpn_protocols),
            **self._client_fields(client, None),
        )
        decision = self._judge(obs)
        if decision is None:
            return
        passthrough = host_matches(sni or host, self._cfg.passthrough) or self._policy_passthrough(
            sni or host
        )
        blocked = decision.verdict.enforced or (is_quic and not self._cfg.allow_quic)
        if blocked:
            # No ServerHello: tls_start_client swaps in a TLS context that cannot handshake.
            # With lazy connections nothing went upstream.
            self._blocked_clients.add(client.id)
        elif passthrough:
            data.ignore_connection = True
        # Intercepted connections are recorded per request; record here what will not be.
        if blocked or passthrough or decision.verdict.label != "allow":
            self._record(decision, client)

    def tls_start_client(self, data: tls.TlsData) -> None:
        if data.context.client.id in self._blocked_clients:
            # Replace whatever TLS context mitmproxy's tlsconfig made (it may run before or
            # after us) with one that has no certificate: OpenSSL aborts the handshake with a
            # handshake_failure alert before any ServerHello, and mitmproxy closes the client.
            data.ssl_conn = _refusing_connection()

    # -- HTTP ------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not flow.live:
            return None
        host = (flow.server_conn.address or (flow.request.host, 0))[0]
        if not _is_ip(host) and host not in self._dns:
            # Only a name not yet resolved needs the event loop; mitmproxy awaits what a hook
            # returns, so the common case stays a plain call (no coroutine per request).
            return self._resolve_then_headers(flow, host)
        self._requestheaders(flow)
        return None

    async def _resolve_then_headers(self, flow: http.HTTPFlow, host: str) -> None:
        await self._resolve(host)
        self._requestheaders(flow)

    def _requestheaders(self, flow: http.HTTPFlow) -> None:
        length, coding = _framing(flow.request.headers)
        chunked = "chunked" in coding.lower()
        too_big = chunked or (
            length is not None and length.isdigit() and int(length) > self._cfg.stream_above
        )
        if not too_big:
            # mitmproxy buffers the body and, with lazy connections, sends nothing upstream
            # before the request hook: judging there, with the body, loses nothing and saves
            # a second inspection per request.
            return
        decision = self._judge(self._http_obs(flow, Stage.REQUEST_HEADERS))
        if decision is None:
            return
        if self._act(flow, decision):
            self._record(decision, flow.client_conn)
            return
        # A large upload: stream it, holding back its first body_limit bytes until judged.
        flow.request.stream = _HeadHold(
            self._cfg.body_limit, lambda head, more: self._judge_head(flow, head, more)
        )

    def _judge_head(self, flow: http.HTTPFlow, head: bytes, truncated: bool) -> bool:
        decision = self._judge(self._http_obs(flow, Stage.REQUEST, head, truncated))
        if decision is None:
            return False
        flow.metadata[META] = _meta(decision)
        flow.metadata[META]["streamed"] = True
        self._record(decision, flow.client_conn)
        if decision.verdict.enforced:
            flow.metadata[META]["blocked"] = True
            return True
        return False

    def request(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.response is not None:
            return
        stream = flow.request.stream
        if isinstance(stream, _HeadHold):
            if stream.blocked:
                flow.kill()  # headers left, no body byte did; end it here
                # mitmproxy 12 sends the end of a streamed message after this hook without
                # checking for a kill (layers/http state_stream_request_body): for a chunked
                # body that is the "0\r\n\r\n" terminator, and the server would take the
                # request as complete (with an empty body). Abort the upstream connection
                # first, so the server sees a reset mid-body, never a finished request.
                _abort_upstream(flow)
            return
        raw = flow.request.raw_content or b""
        limit = self._cfg.body_limit
        decision = self._judge(self._http_obs(flow, Stage.REQUEST, raw[:limit], len(raw) > limit))
        if decision is None:
            return
        self._act(flow, decision)
        self._record(decision, flow.client_conn)

    def response(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.response is None:
            return
        meta = flow.metadata.get(META)
        if meta is None:
            return
        req, resp = flow.request, flow.response
        blocked = bool(meta.get("blocked"))
        stream = req.stream
        out = stream.total if isinstance(stream, _HeadHold) else len(req.raw_content or b"")
        end = resp.timestamp_end or time.time()
        self._closed(
            FlowClosed(
                flow_id=flow.id,
                sensor=Sensor.PROXY,
                time=end,
                bytes_out=0 if blocked else out,
                bytes_in=0 if blocked else _body_len(resp),
                duration=max(0.0, end - req.timestamp_start),
                status=f"{resp.status_code}" + (" blocked" if blocked else ""),
            ),
            flow.client_conn,
        )

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if meta is None or meta.get("closed"):
            return
        meta["closed"] = True
        req = flow.request
        stream = req.stream
        out = stream.total if isinstance(stream, _HeadHold) else len(req.raw_content or b"")
        blocked = bool(meta.get("blocked"))
        if blocked and isinstance(stream, _HeadHold) and flow.error is not None:
            # The upstream reset (_abort_upstream) reports "server closed connection", which
            # mitmproxy would answer with a 502; a kill closes the client connection instead,
            # as for any other blocked stream (the request line and headers had left).
            flow.error = flow.error.__class__(flow.error.KILLED_MESSAGE)
        self._closed(
            FlowClosed(
                flow_id=flow.id,
                sensor=Sensor.PROXY,
                time=time.time(),
                bytes_out=0 if blocked else out,
                bytes_in=0,
                duration=max(0.0, time.time() - req.timestamp_start),
                status="blocked" if blocked else (flow.error.msg[:80] if flow.error else "error"),
            ),
            flow.client_conn,
        )

    # -- WebSocket -------------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.websocket is None:
            return
        message: websocket.WebSocketMessage = flow.websocket.messages[-1]
        if not message.from_client:
            return
        limit = self._cfg.body_limit
        content = message.content
        base = self._http_obs(flow, Stage.MESSAGE, content[:limit], len(content) > limit)
        obs = _replace_protocol(base, Proto.WEBSOCKET)
        decision = self._judge(obs)
        if decision is None:
            return
        self._record(decision, flow.client_conn)
        if decision.verdict.enforced:
            message.drop()

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or flow.response is None:
            return
        msgs = flow.websocket.messages
        start = flow.response.timestamp_end or flow.request.timestamp_start
        self._closed(
            FlowClosed(
                flow_id=flow.id,
                sensor=Sensor.PROXY,
                time=time.time(),
                bytes_out=sum(len(m.content) for m in msgs if m.from_client and not m.dropped),
                bytes_in=sum(len(m.content) for m in msgs if not m.from_client),
                duration=max(0.0, time.time() - start),
                status=f"ws {flow.websocket.close_code}",
            ),
            flow.client_conn,
        )

    # -- DNS (mitmproxy's dns mode: egresswatch serves the LAN's DNS) -------------------------

    def dns_request(self, flow: dns.DNSFlow) -> None:
        # Normally DohCanary, placed before mitmproxy's resolver, has answered already;
        # as a `mitmdump -s` script this addon runs after the resolver: answer all the same.
        answer_doh_canary(flow, replace=True)

    def dns_response(self, flow: dns.DNSFlow) -> None:
        resp = flow.response
        if resp is None or not resp.answers or not flow.request.questions:
            return
        # The name the client asked for, not a CNAME target: it is what the client meant
        # to reach (api.example.com -> CNAME cdn.net -> A): the catalog knows that name.
        name = flow.request.questions[0].name.lower().rstrip(".")
        now = time.monotonic()
        for rr in resp.answers:
            if rr.type == dns.types.A:
                self._learn(str(rr.ipv4_address), name, rr.ttl, now)
            elif rr.type == dns.types.AAAA:
                self._learn(str(rr.ipv6_address), name, rr.ttl, now)

    # -- raw TCP / UDP ---------------------------------------------------------------------

    def _raw_obs(self, flow: tcp.TCPFlow | udp.UDPFlow, transport: Transport) -> Observation:
        host, port = flow.server_conn.address or (None, None)
        dst_addr, dns_name = self._destination(host)
        return Observation(
            sensor=Sensor.PROXY,
            transport=transport,
            protocol=Proto.QUIC if transport is Transport.UDP and port == 443 else Proto.RAW,
            dst_addr=dst_addr,
            dst_port=port,
            stage=Stage.CONNECT,
            flow_id=flow.id,
            sni=flow.client_conn.sni,
            dns_name=dns_name,
            **self._client_fields(flow.client_conn, None),
        )

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if not flow.live:
            return
        decision = self._judge(self._raw_obs(flow, Transport.TCP))
        if decision is None:
            return
        flow.metadata[META] = _meta(decision)
        self._record(decision, flow.client_conn)
        if decision.verdict.enforced:
            flow.metadata[META]["blocked"] = True
            # mitmproxy's TCP layer opens the server connection right after this hook
            # whether or not the flow was killed: server_connect refuses it.
            self._blocked_clients.add(flow.client_conn.id)
            flow.kill()

    def udp_start(self, flow: udp.UDPFlow) -> None:
        if not flow.live:
            return
        decision = self._judge(self._raw_obs(flow, Transport.UDP))
        if decision is None:
            return
        flow.metadata[META] = _meta(decision)
        self._record(decision, flow.client_conn)
        quic = flow.server_conn.address is not None and flow.server_conn.address[1] == 443
        if decision.verdict.enforced or (quic and not self._cfg.allow_quic):
            flow.metadata[META]["blocked"] = True
            self._blocked_clients.add(flow.client_conn.id)
            flow.kill()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Last line: a connection whose raw flow was blocked never reaches the server.
        if data.client.id in self._blocked_clients:
            data.server.error = "blocked by egresswatch"

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._raw_closed(flow)

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._raw_closed(flow)

    def udp_end(self, flow: udp.UDPFlow) -> None:
        self._raw_closed(flow)

    def udp_error(self, flow: udp.UDPFlow) -> None:
        self._raw_closed(flow)

    def _raw_closed(self, flow: tcp.TCPFlow | udp.UDPFlow) -> None:
        meta = flow.metadata.get(META)
        if meta is None or meta.get("closed"):
            return
        meta["closed"] = True
        msgs = flow.messages
        start = flow.client_conn.timestamp_start
        self._closed(
            FlowClosed(
                flow_id=flow.id,
                sensor=Sensor.PROXY,
                time=time.time(),
                bytes_out=sum(len(m.content) for m in msgs if m.from_client),
                bytes_in=sum(len(m.content) for m in msgs if not m.from_client),
                duration=max(0.0, time.time() - start),
                status="blocked"
                if meta.get("blocked")
                else (flow.error.msg[:80] if flow.error else "closed"),
            ),
            flow.client_conn,
        )


_frozen = False


def _freeze_startup_objects() -> None:
    """Move what start-up built out of the cyclic garbage collector's sight, once.

    mitmproxy's and our own modules, the catalog, the GeoIP readers, the policy and
    the store's engine live as long as the process, and every full collection walked
    all of them again: 40-100 ms each in a loaded mitmdump on the bench machine, a
    stall for every request in flight. With the addon loaded, full collections took
    ~105 us per request where bare mitmdump took ~66; frozen, ~66 (docs/performance.md).
    Frozen objects are still freed by reference counting; only cycles among them
    would stay, and start-up objects do not become garbage.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()  # start-up's own garbage goes first, not into the permanent generation
    gc.freeze()


def _with_process(decision: Decision, proc: ProcessInfo | None) -> Decision:
    """The same decision (same id), its observation completed with the client's process."""
    if proc is None:
        return decision
    obs = decision.observation
    obs = dataclasses.replace(
        obs, client_pid=proc.pid, client_process=proc.name, client_app=obs.client_app or proc.name
    )
    return dataclasses.replace(
        decision, assessment=dataclasses.replace(decision.assessment, observation=obs)
    )


def _abort_upstream(flow: http.HTTPFlow) -> bool:
    """Reset the flow's server connection now (TCP RST). True if there was one to reset.

    mitmproxy has no public way to cancel a request in transit (mitmproxy issue #4711), so
    this reaches the connection's asyncio transport through the proxyserver addon. With
    HTTP/2 upstream the other streams on that connection fail too: a block wins.
    """
    try:
        server = ctx.master.addons.get("proxyserver")
    except (AttributeError, ValueError):  # no master (unit tests without taddons)
        return False
    handler = getattr(server, "connections", {}).get(flow.client_conn.id)
    io = getattr(handler, "transports", {}).get(flow.server_conn) if handler else None
    writer = getattr(io, "writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        return False
    writer.transport.abort()
    return True


def _refusing_connection() -> Any:
    """A server-side TLS connection that cannot complete a handshake (no certificate)."""
    from OpenSSL import SSL

    conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
    conn.set_accept_state()
    return conn


def _body_len(resp: http.Response) -> int:
    if resp.raw_content is not None:
        return len(resp.raw_content)
    length = resp.headers.get("content-length", "")
    return int(length) if length.isdigit() else 0


def _replace_protocol(obs: Observation, protocol: Proto) -> Observation:
    return dataclasses.replace(obs, protocol=protocol)

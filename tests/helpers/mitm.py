"""Wrappers around mitmproxy's test helpers (no stable API: an upgrade breaks only this file),
and fakes built on egresswatch's real interfaces for the proxy addon's unit tests.
"""

from __future__ import annotations

import contextlib
import inspect
import ssl
from dataclasses import dataclass, field

from mitmproxy import connection, http, options, tcp, tls, udp
from mitmproxy.proxy import context as mcontext
from mitmproxy.test import taddons, tflow

from egresswatch.inspector import Inspector
from egresswatch.model import (
    Action,
    Assessment,
    Decision,
    FlowClosed,
    GeoAnswer,
    GeoSource,
    MatchKind,
    Mode,
    Observation,
    PayloadType,
    Service,
    ServiceMatch,
    Verdict,
)

DEEPSEEK = Service(
    id="deepseek",
    name="DeepSeek API",
    operator="Hangzhou DeepSeek Artificial Intelligence Co., Ltd.",
    operator_country="CN",
    category="chat-api",
    domains=("api.deepseek.com",),
)
OPENAI = Service(
    id="openai",
    name="OpenAI API",
    operator="OpenAI, L.L.C.",
    operator_country="US",
    category="chat-api",
    domains=("api.openai.com",),
)

#: documentation addresses (RFC 5737) mapped like the lab GeoIP database
GEO = {"203.0.113.10": "CN", "198.51.100.20": "US", "192.0.2.30": "DE"}


class FakeGeo:
    def lookup(self, addr: str) -> GeoAnswer:
        if addr.startswith("127."):
            return GeoAnswer(country=None, source=GeoSource.LOCAL)
        country = GEO.get(addr)
        return GeoAnswer(country=country, source=GeoSource.OVERRIDE if country else GeoSource.NONE)


class FakeCatalog:
    def match(self, host: str) -> ServiceMatch | None:
        for service in (DEEPSEEK, OPENAI):
            for domain in service.domains:
                if host == domain or host.endswith("." + domain):
                    return ServiceMatch(service, MatchKind.OFFICIAL, host, domain)
        return None


@dataclass
class FakeClassification:
    payload_types: tuple[PayloadType, ...]
    findings: tuple = ()
    flags: tuple[str, ...] = ()


def fake_classify(obs: Observation, category: str | None) -> FakeClassification:
    """Enough of the classifier's behaviour for the addon's tests: prompts, secrets, telemetry."""
    types: list[PayloadType] = []
    if b'"messages"' in obs.body:
        types.append(PayloadType.CHAT_PROMPT)
    if b"sk-secret" in obs.body:
        types.append(PayloadType.CREDENTIAL)
    if obs.path and "telemetry" in obs.path:
        types.append(PayloadType.TELEMETRY)
    return FakeClassification(tuple(types) or (PayloadType.OTHER,))


@dataclass
class FakePolicy:
    """Approved: US and DE. Block CN addresses or CN operators, credentials, and port 6666."""

    mode: Mode = Mode.ENFORCE

    def decide(self, a: Assessment) -> Verdict:
        if a.observation.dst_port == 6666:
            return Verdict(Action.BLOCK, "no-port-6666", "raw port 6666 is closed", self.mode)
        if a.geo.country == "CN" or a.operator_country == "CN":
            return Verdict(Action.BLOCK, "approved-countries", "CN is not approved", self.mode)
        if PayloadType.CREDENTIAL in a.payload_types:
            return Verdict(Action.BLOCK, "no-credentials", "credential in payload", self.mode)
        if PayloadType.TELEMETRY in a.payload_types:
            return Verdict(Action.ALERT, "telemetry", "telemetry seen", self.mode)
        return Verdict(Action.ALLOW, "default", "approved destination", self.mode)


def fake_inspector(mode: Mode = Mode.ENFORCE) -> Inspector:
    """The real Inspector over fake adapters."""
    return Inspector(
        FakeGeo(),
        FakeCatalog(),
        FakePolicy(mode),
        classifier=fake_classify,
        normalizer=lambda h: h.lower().rstrip("."),
    )


@dataclass
class RecordingSink:
    """A ports.Sink that keeps what it gets."""

    decisions: list[Decision] = field(default_factory=list)
    closed: list[FlowClosed] = field(default_factory=list)
    closes: int = 0

    def record(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def flow_closed(self, event: FlowClosed) -> None:
        self.closed.append(event)

    def close(self) -> None:
        self.closes += 1


# -- mitmproxy test objects ----------------------------------------------------------------


async def hook(result: object) -> None:
    """Await what a hook returned, if anything (mitmproxy does the same)."""
    if inspect.isawaitable(result):
        await result


def context(*addons: object) -> taddons.context:
    """A taddons context that also has the proxy server's ``connection_strategy`` option."""
    tctx = taddons.context()
    tctx.options.add_option("connection_strategy", str, "eager", "as in mitmproxy's proxyserver")
    for addon in addons:
        tctx.master.addons.add(addon)
    return tctx


def http_flow(
    *,
    host: str = "api.deepseek.com",
    addr: str | None = "203.0.113.10",
    port: int = 443,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: bytes = b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}',
    headers: dict[str, str] | None = None,
    response: bool = False,
    live: bool = True,
    client: tuple[str, int] = ("10.77.1.2", 40000),
) -> http.HTTPFlow:
    hdrs = {"host": host, "user-agent": "OpenAI/Python 1.51.0", "content-type": "application/json"}
    hdrs.update(headers or {})
    req = http.Request.make(method, f"https://{host}:{port}{path}", body, hdrs)
    req.timestamp_start = 1.0
    f = tflow.tflow(req=req, resp=response, live=live)
    f.server_conn.address = (addr or host, port)
    f.client_conn.peername = client
    f.client_conn.sni = host
    return f


def answer(f: http.HTTPFlow, body: bytes, status: int = 200) -> None:
    """Give a flow the server's response, as mitmproxy does before the response hook."""
    f.response = http.Response.make(status, body, {"content-type": "application/json"})


def ws_flow(message: bytes, *, host: str = "api.openai.com", addr: str = "198.51.100.20"):
    f = tflow.tflow(ws=True, resp=True)
    f.request.host = host
    f.request.headers["host"] = host
    f.server_conn.address = (addr, 443)
    f.client_conn.peername = ("10.77.1.2", 40001)
    f.websocket.messages.clear()
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    f.websocket.messages.append(WebSocketMessage(Opcode.TEXT, True, message))
    return f


def tcp_flow(addr: str, port: int) -> tcp.TCPFlow:
    f = tflow.ttcpflow()
    f.server_conn.address = (addr, port)
    return f


def udp_flow(addr: str, port: int) -> udp.UDPFlow:
    f = tflow.tudpflow()
    f.server_conn.address = (addr, port)
    return f


def real_client_hello_bytes(sni: str, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> bytes:
    """The first flight of a TLS client (record layer included), as Python's OpenSSL writes it."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def real_client_hello(sni: str, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> tls.ClientHello:
    """A ClientHello as Python's OpenSSL writes it, parsed the way mitmproxy parses the wire."""
    from mitmproxy.proxy.layers.tls import parse_client_hello

    hello = parse_client_hello(real_client_hello_bytes(sni, alpn))
    assert hello is not None
    return hello


def clienthello_data(
    sni: str, addr: str | None, port: int = 443, *, udp: bool = False
) -> tls.ClientHelloData:
    client = tflow.tclient_conn()
    client.peername = ("10.77.1.2", 40002)
    server = connection.Server(address=(addr or sni, port))
    if udp:
        client.transport_protocol = "udp"
        server.transport_protocol = "udp"
    ctx = mcontext.Context(client, options.Options())
    ctx.server = server
    return tls.ClientHelloData(ctx, real_client_hello(sni))


def tls_start(data: tls.ClientHelloData) -> tls.TlsData:
    return tls.TlsData(data.context.client, data.context, ssl_conn=object())  # type: ignore[arg-type]

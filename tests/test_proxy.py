"""Unit tests of the proxy addon with mitmproxy's taddons/tflow and fakes on the real interfaces."""

from __future__ import annotations

import itertools
import json

import pytest
from helpers import mitm
from helpers.fresh import fresh_python
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import exceptions, hooks
from mitmproxy.proxy import server_hooks

from egresswatch import proxy, proxy_options
from egresswatch.clientinfo import app_hint
from egresswatch.model import Mode, Stage

pytestmark = pytest.mark.anyio

CHAT = b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(mode: Mode = Mode.ENFORCE, **opts: object):
    sink = mitm.RecordingSink()
    addon = proxy.EgressWatch(mitm.fake_inspector(mode), sink)
    tctx = mitm.context(addon)
    tctx.configure(addon, egresswatch_process_lookup=False, **opts)
    return addon, sink, tctx


def _cannot_handshake(conn: object) -> bool:
    """True if ``conn`` is a server TLS connection that fails a real client's handshake."""
    from OpenSSL import SSL

    if not isinstance(conn, SSL.Connection):
        return False
    hello = mitm.real_client_hello_bytes("api.deepseek.com")
    conn.bio_write(hello)
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    except SSL.Error:
        return True
    return False


def test_public_names_are_hooks_load_configure() -> None:
    public = {n for n in dir(proxy.EgressWatch) if not n.startswith("_")}
    unknown = public - set(hooks.all_hooks) - {"load", "configure"}
    assert not unknown, f"public non-hook names would be called or are typos: {unknown}"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("egresswatch_body_limit", "lots", "not a size"),
        ("egresswatch_body_limit", "-5", "negative"),
        ("egresswatch_passthrough", ["bad host/x"], "not a host pattern"),
        ("egresswatch_stream_above", "1k", "must not be below"),
    ],
)
def test_bad_option_stops_startup(option: str, value: object, message: str) -> None:
    addon = proxy.EgressWatch(mitm.fake_inspector(), mitm.RecordingSink())
    with mitm.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: value})


def test_entry_script_addon_exits_on_a_bad_option_only_at_startup() -> None:
    addon = proxy.EgressWatch(mitm.fake_inspector(), mitm.RecordingSink(), exit_on_bad_options=True)
    with mitm.context(addon) as tctx:
        with pytest.raises(SystemExit) as stopped:
            tctx.configure(addon, egresswatch_body_limit="lots")
        assert stopped.value.code == 1
        tctx.configure(addon, egresswatch_body_limit="64k")
        addon.running()
        # once running, a bad change is refused and the proxy keeps its options
        with pytest.raises(exceptions.OptionsError, match="not a size"):
            tctx.configure(addon, egresswatch_body_limit="lots")


def test_bad_build_option_is_options_error() -> None:
    # Not injected: the addon builds its parts from options; a bad mode is a clear error.
    addon = proxy.EgressWatch()
    with mitm.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="egresswatch"):
        tctx.configure(addon, egresswatch_mode="strict", egresswatch_db="none")


@pytest.mark.parametrize(
    ("text", "size"), [("4096", 4096), ("64k", 65536), ("1m", 1 << 20), ("2KiB", 2048)]
)
def test_parse_size(text: str, size: int) -> None:
    assert proxy_options.parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "pair"),
    [("9721", ("127.0.0.1", 9721)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9", ("::1", 9))],
)
def test_parse_listen(text: str, pair: tuple[str, int]) -> None:
    assert proxy_options.parse_listen(text) == pair


@pytest.mark.parametrize("text", ["", "x", "1.2.3.4:99999", "[::1]9"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        proxy_options.parse_listen(text)


def test_enforce_mode_switches_to_lazy_connections() -> None:
    _addon, _, tctx = make(Mode.ENFORCE)
    assert tctx.options.connection_strategy == "lazy"
    _addon2, _, tctx2 = make(Mode.MONITOR)
    assert tctx2.options.connection_strategy == "eager"


async def test_blocked_request_gets_451_with_reasons() -> None:
    addon, sink, _tctx = make()
    f = mitm.http_flow()
    await mitm.hook(addon.requestheaders(f))
    assert f.response is None and sink.decisions == []  # buffered body: judged once, below
    addon.request(f)
    assert f.response is not None and f.response.status_code == 451
    doc = json.loads(f.response.content or b"")
    assert doc["rule"] == "approved-countries"
    assert doc["service"] == "DeepSeek API"
    assert doc["operator_country"] == "CN"
    assert doc["address_country"] == "CN"
    assert doc["payload_types"] == ["chat-prompt"]
    assert f.metadata["egresswatch"]["verdict"] == "block"
    assert [d.observation.stage for d in sink.decisions] == [Stage.REQUEST]
    obs = sink.decisions[0].observation
    assert obs.client_app == "openai-python"
    assert obs.http_host == "api.deepseek.com" and obs.dst_addr == "203.0.113.10"
    addon.response(f)
    assert sink.closed[0].status == "451 blocked" and sink.closed[0].bytes_out == 0


async def test_large_upload_blocked_at_headers_before_its_body() -> None:
    addon, sink, _tctx = make(egresswatch_body_limit="1k", egresswatch_stream_above="1m")
    f = mitm.http_flow(body=b"")
    f.request.headers["content-length"] = str(10 * 1024 * 1024)
    await mitm.hook(addon.requestheaders(f))
    assert f.response is not None and f.response.status_code == 451
    assert f.request.stream is False or f.request.stream is None
    assert [d.observation.stage for d in sink.decisions] == [Stage.REQUEST_HEADERS]
    addon.request(f)  # the request hook sees the answer and does nothing more
    assert len(sink.decisions) == 1


async def test_monitor_mode_records_would_block_and_goes_on() -> None:
    addon, sink, _tctx = make(Mode.MONITOR)
    f = mitm.http_flow()
    await mitm.hook(addon.requestheaders(f))
    addon.request(f)
    assert f.response is None
    assert f.metadata["egresswatch"]["verdict"] == "would-block"
    assert [d.verdict.label for d in sink.decisions] == ["would-block"]


async def test_body_block_at_request_hook() -> None:
    addon, sink, _tctx = make()
    body = b'{"messages": [], "api_key": "sk-secret-123"}'
    f = mitm.http_flow(host="api.openai.com", addr="198.51.100.20", body=body)
    await mitm.hook(addon.requestheaders(f))
    assert f.response is None  # headers alone are fine
    addon.request(f)
    assert f.response is not None and f.response.status_code == 451
    assert json.loads(f.response.content or b"")["rule"] == "no-credentials"
    assert sink.decisions[-1].observation.stage is Stage.REQUEST
    assert sink.decisions[-1].observation.body == body


async def test_allowed_request_records_once_and_closes_with_bytes() -> None:
    addon, sink, _tctx = make()
    f = mitm.http_flow(host="api.openai.com", addr="198.51.100.20", body=CHAT)
    await mitm.hook(addon.requestheaders(f))
    addon.request(f)
    mitm.answer(f, b'{"choices": []}')
    addon.response(f)
    assert [d.verdict.label for d in sink.decisions] == ["allow"]
    closed = sink.closed[0]
    assert closed.flow_id == f.id and closed.bytes_out == len(CHAT)
    assert closed.bytes_in == len(b'{"choices": []}') and closed.status == "200"


async def test_body_limit_bounds_what_is_classified() -> None:
    addon, _sink, _tctx = make(egresswatch_body_limit="16", egresswatch_stream_above="32")
    f = mitm.http_flow(host="api.openai.com", addr="198.51.100.20", body=CHAT)
    f.request.headers["content-length"] = str(len(CHAT))
    await mitm.hook(addon.requestheaders(f))
    assert isinstance(f.request.stream, proxy._HeadHold)


async def test_medium_body_is_buffered_and_judged_on_its_head() -> None:
    addon, sink, _tctx = make(egresswatch_body_limit="64", egresswatch_stream_above="1m")
    body = b'{"messages": [{"content": "' + b"a" * 200 + b' sk-secret"}]}'
    f = mitm.http_flow(host="api.openai.com", addr="198.51.100.20", body=body)
    await mitm.hook(addon.requestheaders(f))
    assert not f.request.stream
    addon.request(f)
    obs = sink.decisions[-1].observation
    assert obs.body == body[:64] and obs.body_truncated
    assert f.response is None  # the secret is past the judged head: allowed, and recorded so


def test_head_hold_releases_after_judging() -> None:
    seen: list[bytes] = []

    def judge(head: bytes, more: bool) -> bool:
        seen.append(head)
        return False

    hold = proxy._HeadHold(8, judge)
    assert hold(b"abcd") == []  # held: not yet judged
    assert hold(b"efghij") == [b"abcdefghij"]
    assert hold(b"kl") == b"kl"
    assert seen == [b"abcdefgh"] and hold.total == 12


def test_head_hold_blocks_every_body_byte() -> None:
    hold = proxy._HeadHold(4, lambda head, more: True)
    assert hold(b"secret-") == []
    assert hold(b"more") == []
    assert hold(b"") == []
    assert hold.blocked


def test_head_hold_judges_short_body_at_end() -> None:
    hold = proxy._HeadHold(100, lambda head, more: head != b"ok")
    assert hold(b"ok") == []
    assert hold(b"") == [b"ok"]


async def test_streamed_upload_blocked_on_its_head() -> None:
    addon, sink, _tctx = make(egresswatch_body_limit="32", egresswatch_stream_above="64")
    body = b'{"messages": [], "x": "' + b"sk-secret" + b"A" * 100 + b'"}'
    f = mitm.http_flow(host="api.openai.com", addr="198.51.100.20", body=b"")
    f.request.headers["content-length"] = str(len(body))
    await mitm.hook(addon.requestheaders(f))
    stream = f.request.stream
    assert isinstance(stream, proxy._HeadHold)
    sent = [stream(body[i : i + 10]) for i in range(0, len(body), 10)]
    sent.append(stream(b""))
    assert all(s in ([], b"") for s in sent), "no body byte may leave"
    addon.request(f)
    assert f.error is not None  # killed
    assert sink.decisions[-1].verdict.rule == "no-credentials"
    assert sink.decisions[-1].observation.body_truncated


async def test_clienthello_block_refuses_handshake() -> None:
    addon, sink, _tctx = make()
    data = mitm.clienthello_data("api.deepseek.com", "203.0.113.10")
    await addon.tls_clienthello(data)
    assert not data.ignore_connection
    start = mitm.tls_start(data)
    addon.tls_start_client(start)
    assert _cannot_handshake(start.ssl_conn)  # no certificate: no ServerHello
    d = sink.decisions[0]
    assert d.observation.stage is Stage.CLIENTHELLO and d.observation.sni == "api.deepseek.com"
    assert d.observation.alpn == ("h2", "http/1.1")
    assert d.verdict.enforced


async def test_clienthello_allowed_is_not_recorded_and_not_touched() -> None:
    addon, sink, _tctx = make()
    data = mitm.clienthello_data("api.openai.com", "198.51.100.20")
    await addon.tls_clienthello(data)
    start = mitm.tls_start(data)
    addon.tls_start_client(start)
    assert start.ssl_conn is not None
    assert sink.decisions == []  # recorded per request instead


async def test_passthrough_host_is_judged_recorded_and_ignored() -> None:
    addon, sink, _tctx = make(egresswatch_passthrough=["openai.com"])
    data = mitm.clienthello_data("api.openai.com", "198.51.100.20")
    await addon.tls_clienthello(data)
    assert data.ignore_connection
    assert len(sink.decisions) == 1 and sink.decisions[0].verdict.label == "allow"


async def test_passthrough_does_not_bypass_a_block() -> None:
    addon, sink, _tctx = make(egresswatch_passthrough=["deepseek.com"])
    data = mitm.clienthello_data("api.deepseek.com", "203.0.113.10")
    await addon.tls_clienthello(data)
    assert not data.ignore_connection
    assert sink.decisions[0].verdict.enforced


@pytest.mark.parametrize(("allow_quic", "blocked"), [(False, True), (True, False)])
async def test_quic_clienthello(allow_quic: bool, blocked: bool) -> None:
    addon, _sink, _tctx = make(egresswatch_allow_quic=allow_quic)
    data = mitm.clienthello_data("api.openai.com", "198.51.100.20", udp=True)
    await addon.tls_clienthello(data)
    start = mitm.tls_start(data)
    addon.tls_start_client(start)
    assert _cannot_handshake(start.ssl_conn) is blocked


async def test_websocket_message_judged_and_dropped() -> None:
    addon, sink, _tctx = make()
    f = mitm.ws_flow(b'{"token": "sk-secret-1"}')
    addon.websocket_message(f)
    assert f.websocket is not None and f.websocket.messages[-1].dropped
    d = sink.decisions[-1]
    assert d.observation.protocol == "websocket" and d.observation.stage is Stage.MESSAGE
    ok = mitm.ws_flow(b'{"text": "hello"}')
    addon.websocket_message(ok)
    assert ok.websocket is not None and not ok.websocket.messages[-1].dropped
    addon.websocket_end(ok)
    assert sink.closed[-1].bytes_out == len(b'{"text": "hello"}')


@pytest.mark.parametrize(
    ("addr", "port", "killed"),
    [("198.51.100.20", 22, False), ("198.51.100.20", 6666, True), ("203.0.113.10", 22, True)],
)
def test_raw_tcp_judged_by_address_and_port(addr: str, port: int, killed: bool) -> None:
    addon, sink, _tctx = make()
    f = mitm.tcp_flow(addr, port)
    addon.tcp_start(f)
    assert (f.error is not None) is killed
    assert sink.decisions[0].observation.dst_port == port
    # the TCP layer connects after tcp_start even for a killed flow: server_connect refuses
    data = server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn)
    addon.server_connect(data)
    assert (data.server.error is not None) is killed
    addon.tcp_end(f)
    assert sink.closed[0].flow_id == f.id


@pytest.mark.parametrize(
    ("port", "allow_quic", "killed"), [(443, False, True), (443, True, False), (53, False, False)]
)
def test_udp_quic_refused_by_default(port: int, allow_quic: bool, killed: bool) -> None:
    addon, _sink, _tctx = make(egresswatch_allow_quic=allow_quic)
    f = mitm.udp_flow("198.51.100.20", port)
    addon.udp_start(f)
    assert (f.error is not None) is killed


async def test_replayed_flows_are_not_egress() -> None:
    addon, sink, _tctx = make()
    f = mitm.http_flow(live=False)
    await mitm.hook(addon.requestheaders(f))
    addon.request(f)
    assert sink.decisions == [] and f.response is None


def test_done_closes_sinks() -> None:
    addon, sink, _tctx = make()
    addon.done()
    assert sink.closes == 1


@pytest.mark.parametrize(
    ("ua", "hint"),
    [
        ("OpenAI/Python 1.51.0", "openai-python"),
        ("Anthropic/Python 0.40.0", "anthropic-python"),
        ("ollama-python/0.4.4 (x86_64 linux) Python/3.12.8", "ollama"),
        ("unknown/None; hf_hub/0.26.2; python/3.12.8", "huggingface_hub"),
        ("huggingface_hub/0.26.2; python/3.12", "huggingface_hub"),
        ("curl/7.88.1", "curl"),
        ("python-httpx/0.28.1", "httpx"),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "browser:firefox",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/131.0 Safari/537.36 Edg/131.0",
            "browser:edge",
        ),
        (None, None),
    ],
)
def test_app_hint(ua: str | None, hint: str | None) -> None:
    assert app_hint(ua) == hint


def test_block_body_is_readable_json() -> None:
    inspector = mitm.fake_inspector()
    from egresswatch.model import Observation, Protocol, Sensor, Transport

    d = inspector.inspect(
        Observation(
            sensor=Sensor.PROXY,
            transport=Transport.TCP,
            protocol=Protocol.HTTPS,
            dst_addr="203.0.113.10",
            dst_port=443,
            http_host="api.deepseek.com",
            body=CHAT,
        )
    )
    doc = json.loads(proxy.block_body(d))
    assert doc["payload_types"] == ["chat-prompt"] and doc["reason"] == "CN is not approved"


@given(
    body=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    limit=st.integers(min_value=1, max_value=300),
    block=st.booleans(),
)
def test_head_hold_property(body: bytes, cuts: list[int], limit: int, block: bool) -> None:
    """Any chunking: judged once on the first ``limit`` bytes; all or nothing goes out."""
    seen: list[tuple[bytes, bool]] = []

    def judge(head: bytes, more: bool) -> bool:
        seen.append((head, more))
        return block

    hold = proxy._HeadHold(limit, judge)
    points = sorted({0, len(body), *[c for c in cuts if c <= len(body)]})
    out = bytearray()
    for a, b in itertools.pairwise(points):
        res = hold(body[a:b])
        out += res if isinstance(res, bytes) else b"".join(res)
    end = hold(b"")
    out += end if isinstance(end, bytes) else b"".join(end)
    assert seen == [(body[:limit], len(body) > limit)]
    assert bytes(out) == (b"" if block else body)
    assert hold.total == len(body)


async def test_record_waits_for_process_lookup_but_verdict_does_not() -> None:
    import asyncio

    from egresswatch.clientinfo import ProcessInfo

    addon, sink, _tctx = make()
    f = mitm.http_flow(host="api.openai.com", addr="198.51.100.20", body=CHAT)
    pending: asyncio.Future[ProcessInfo | None] = asyncio.get_running_loop().create_future()
    addon._attr[f.client_conn.id] = pending
    await mitm.hook(addon.requestheaders(f))
    addon.request(f)
    assert f.metadata["egresswatch"]["verdict"] == "allow"  # judged already
    mitm.answer(f, b"{}")
    addon.response(f)
    assert sink.decisions == [] and sink.closed == []  # records wait for the lookup
    pending.set_result(ProcessInfo(pid=4242, name="python3"))
    await asyncio.sleep(0)
    assert [d.observation.client_pid for d in sink.decisions] == [4242]
    assert sink.decisions[0].observation.client_process == "python3"
    assert sink.decisions[0].id == f.metadata["egresswatch"]["decision_id"]
    assert [c.flow_id for c in sink.closed] == [f.id]  # and in order: decision, then close


async def test_destination_known_by_name_is_resolved_once_for_judging() -> None:
    # Regular mode: the CONNECT/absolute-form name, not an address. "localhost" resolves from
    # /etc/hosts, so no DNS query leaves the machine.
    addon, sink, _tctx = make()
    f = mitm.http_flow(host="localhost", addr=None, port=80, body=CHAT)
    pending = addon.requestheaders(f)
    assert pending is not None  # the name needs the event loop once
    await pending
    addon.request(f)
    assert sink.decisions[0].observation.dst_addr in ("127.0.0.1", "::1")
    assert sink.decisions[0].observation.dns_name == "localhost"
    g = mitm.http_flow(host="localhost", addr=None, port=80, body=CHAT)
    assert addon.requestheaders(g) is None  # cached: a plain call


@given(st.text(max_size=12))
def test_parse_size_returns_bytes_or_value_error(text: str) -> None:
    try:
        value = proxy_options.parse_size(text)
    except ValueError:
        return
    assert isinstance(value, int) and value >= 0


async def test_records_waiting_for_a_process_lookup_are_flushed_at_shutdown() -> None:
    """SIGTERM right after a response: the decision and its close still reach the sinks."""
    import asyncio

    from egresswatch.model import FlowClosed, Sensor

    addon, sink, _tctx = make()
    f = mitm.http_flow()
    decision = addon._judge(addon._http_obs(f, Stage.REQUEST, CHAT))
    assert decision is not None
    client = f.client_conn
    pending: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    addon._attr[client.id] = pending  # the lookup thread has not answered yet
    addon._record(decision, client)
    addon._closed(FlowClosed(decision.observation.flow_id, Sensor.PROXY, 0.0, 1, 2, 0.1), client)
    assert sink.decisions == [] and sink.closed == []  # held for the process name
    addon.done()
    assert sink.decisions == [decision] and len(sink.closed) == 1 and sink.closes == 1
    pending.set_result(None)  # the lookup answers late: nothing is recorded twice
    await asyncio.sleep(0)
    assert sink.decisions == [decision] and len(sink.closed) == 1


def test_alpn_offers_as_text_and_bounded() -> None:
    assert proxy._alpn(()) == ()
    assert proxy._alpn([b"h2", b"http/1.1"]) == ("h2", "http/1.1")
    assert proxy._alpn([b"h2", b"\xff"]) == ("h2", "\ufffd")
    for i in range(600):  # odd lists from one client must not grow the cache without end
        assert proxy._alpn([f"x{i}".encode()]) == (f"x{i}",)
    assert len(proxy._ALPN) <= 256


def test_running_freezes_startup_objects_once() -> None:
    # in a fresh interpreter: freezing this test process would touch every other test
    code = (
        "import gc\n"
        "from egresswatch import proxy\n"
        "before = gc.get_freeze_count()\n"
        "proxy._freeze_startup_objects()\n"
        "first = gc.get_freeze_count() - before\n"
        "junk = [[i] for i in range(1000)]\n"
        "proxy._freeze_startup_objects()\n"
        "print(first, gc.get_freeze_count() - before - first)\n"
    )
    out = fresh_python(code)
    first, again = (int(x) for x in out.split())
    assert first > 10_000  # mitmproxy's and egresswatch's modules, at least
    assert again == 0  # once per process: later objects stay collectable

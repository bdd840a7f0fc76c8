"""DNS served by egresswatch: the DoH canary, names learned from answers, the listener flags.

Unit tests drive the addon's ``dns_request`` / ``dns_response`` hooks with mitmproxy's
``tdnsflow``; the lab test at the end runs ``egresswatch gateway setup --dns`` and
``egresswatch run --dns-listen`` for real in network namespaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import egresswatch_bin, is_root
from helpers import mitm
from mitmproxy import dns, tls
from mitmproxy.test import tflow

from egresswatch import config as cfg
from egresswatch import proxy
from egresswatch.commands.proxy import ProxyConfig, dns_mode
from egresswatch.model import Mode, Stage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(mode: Mode = Mode.ENFORCE):
    sink = mitm.RecordingSink()
    addon = proxy.EgressWatch(mitm.fake_inspector(mode), sink)
    tctx = mitm.context(addon)
    tctx.configure(addon, egresswatch_process_lookup=False)
    return addon, sink, tctx


def query(name: str, qtype: int = dns.types.A) -> dns.DNSFlow:
    f = tflow.tdnsflow()
    f.request.questions = [dns.Question(name, qtype, dns.classes.IN)]
    return f


def answered(name: str, *records: dns.ResourceRecord) -> dns.DNSFlow:
    f = query(name)
    f.response = f.request.succeed(list(records))
    return f


def a(name: str, addr: str, ttl: int = 60) -> dns.ResourceRecord:
    return dns.ResourceRecord.A(name, ipaddress.IPv4Address(addr), ttl=ttl)


def no_sni_clienthello(addr: str) -> tls.ClientHelloData:
    """A real ClientHello with no SNI (Python's OpenSSL, server_hostname=None), to ``addr``."""
    from mitmproxy import connection, options
    from mitmproxy.proxy import context as mcontext
    from mitmproxy.proxy.layers.tls import parse_client_hello

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=None)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = parse_client_hello(outgoing.read())
    assert hello is not None and hello.sni is None
    client = tflow.tclient_conn()
    client.peername = ("10.77.1.2", 40003)
    mctx = mcontext.Context(client, options.Options())
    mctx.server = connection.Server(address=(addr, 443))
    return tls.ClientHelloData(mctx, hello)


# -- the Firefox DoH canary --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["use-application-dns.net", "USE-APPLICATION-DNS.NET.", "x.use-application-dns.net"]
)
def test_doh_canary_answered_nxdomain_without_upstream(name: str) -> None:
    addon, _sink, _tctx = make()
    f = query(name)
    addon.dns_request(f)
    # A response set in dns_request is sent as is: mitmproxy asks no upstream resolver.
    assert f.response is not None
    assert f.response.response_code == dns.response_codes.NXDOMAIN
    assert f.response.id == f.request.id and not f.response.query
    assert f.metadata[proxy.META]["doh_canary"] is True


@pytest.mark.parametrize("name", ["application-dns.net", "use-application-dns.net.evil.com"])
def test_other_names_are_asked_upstream(name: str) -> None:
    addon, _sink, _tctx = make()
    f = query(name)
    addon.dns_request(f)
    assert f.response is None


# -- address -> name learned from relayed answers ----------------------------------------


async def test_learned_name_judges_an_ip_literal_http_request() -> None:
    addon, sink, _tctx = make()
    # 192.0.2.30 is DE (approved) for the fake GeoIP: by address alone the request passes ...
    f = mitm.http_flow(host="192.0.2.30", addr="192.0.2.30")
    await mitm.hook(addon.requestheaders(f))
    addon.request(f)
    assert f.response is None
    assert sink.decisions[-1].observation.dns_name is None
    # ... once the proxy relayed api.deepseek.com -> 192.0.2.30, the same request is judged
    # by that name too: DeepSeek's operator is in CN.
    addon.dns_response(answered("api.deepseek.com", a("api.deepseek.com", "192.0.2.30")))
    g = mitm.http_flow(host="192.0.2.30", addr="192.0.2.30")
    await mitm.hook(addon.requestheaders(g))
    addon.request(g)
    assert g.response is not None and g.response.status_code == 451
    d = sink.decisions[-1]
    assert d.observation.dns_name == "api.deepseek.com"
    assert d.assessment.operator_country == "CN"


async def test_learned_name_judges_a_no_sni_clienthello() -> None:
    addon, sink, _tctx = make()
    data = no_sni_clienthello("192.0.2.30")
    await addon.tls_clienthello(data)
    assert sink.decisions == []  # allowed by address, intercepted: recorded per request
    addon.dns_response(answered("API.DeepSeek.com.", a("api.deepseek.com", "192.0.2.30")))
    data = no_sni_clienthello("192.0.2.30")
    await addon.tls_clienthello(data)
    d = sink.decisions[-1]
    assert d.observation.stage is Stage.CLIENTHELLO and d.observation.sni is None
    assert d.observation.dns_name == "api.deepseek.com"
    assert d.verdict.enforced and d.verdict.rule == "approved-countries"


def test_question_name_is_learned_not_the_cname_target() -> None:
    addon, _sink, _tctx = make()
    cname = dns.ResourceRecord.CNAME("api.deepseek.com", "edge.cdn.example", ttl=60)
    addon.dns_response(answered("api.deepseek.com", cname, a("edge.cdn.example", "192.0.2.30")))
    assert addon._destination("192.0.2.30")[1] == "api.deepseek.com"
    assert addon._destination("api.openai.com")[1] == "api.openai.com"  # a name is its own name
    assert addon._destination("198.51.100.99")[1] is None


def test_aaaa_answers_are_learned() -> None:
    addon, _sink, _tctx = make()
    rr = dns.ResourceRecord.AAAA("api.deepseek.com", ipaddress.IPv6Address("2001:db8::30"))
    addon.dns_response(answered("api.deepseek.com", rr))
    assert addon._destination("2001:db8::30")[1] == "api.deepseek.com"


def test_learned_names_expire_with_ttl_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    addon, _sink, _tctx = make()
    now = [1000.0]
    monkeypatch.setattr(proxy.time, "monotonic", lambda: now[0])
    addon.dns_response(answered("a.example", a("a.example", "192.0.2.1", ttl=5)))
    addon.dns_response(answered("b.example", a("b.example", "192.0.2.2", ttl=86_400)))
    now[0] += proxy._NAME_TTL_MIN - 1  # a 5 s TTL is kept for the minimum
    assert addon._destination("192.0.2.1")[1] == "a.example"
    now[0] += 2
    assert addon._destination("192.0.2.1")[1] is None
    now[0] = 1000.0 + proxy._NAME_TTL_MAX + 1  # a day-long TTL is cut to the maximum
    assert addon._destination("192.0.2.2")[1] is None


def test_learned_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "_NAMES_MAX", 64)
    addon, _sink, _tctx = make()
    net = ipaddress.ip_network("198.51.100.0/24")
    for i, host in enumerate(list(net.hosts())[:200]):
        addon.dns_response(answered(f"h{i}.example", a(f"h{i}.example", str(host))))
        assert len(addon._names) <= 64
    # the newest answers are kept, the oldest dropped
    assert addon._destination("198.51.100.200")[1] == "h199.example"
    assert addon._destination("198.51.100.1")[1] is None


def test_failed_or_empty_answers_teach_nothing() -> None:
    addon, _sink, _tctx = make()
    f = query("api.deepseek.com")
    f.response = f.request.fail(dns.response_codes.SERVFAIL)
    addon.dns_response(f)
    g = query("api.deepseek.com")
    addon.dns_response(g)  # no response at all
    assert addon._names == {}


# -- the listener: flags, config, mitmproxy mode ------------------------------------------


@pytest.mark.parametrize(
    ("listen", "spec"),
    [(("127.0.0.1", 5353), "dns@127.0.0.1:5353"), (("::1", 5353), "dns@[::1]:5353")],
)
def test_dns_mode_spec_parses_in_mitmproxy(listen: tuple[str, int], spec: str) -> None:
    from mitmproxy.proxy.mode_specs import ProxyMode

    assert dns_mode(listen) == spec
    mode = ProxyMode.parse(spec)
    assert mode.type_name == "dns" and mode.listen_port() == listen[1]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("", None),
        ("off", None),
        (None, None),
        ("5353", ("127.0.0.1", 5353)),
        ("0.0.0.0:53", ("0.0.0.0", 53)),
    ],
)
def test_dns_listen_config_value(value: object, parsed: object) -> None:
    assert cfg.parse_optional_host_port(value) == parsed


def test_dns_listen_config_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        cfg.parse_optional_host_port("dns.example")


def test_dns_listen_is_off_by_default() -> None:
    assert ProxyConfig(settings=None).dns_listen is None  # type: ignore[arg-type]
    field = next(f for f in cfg.FIELDS if f.key == "proxy.dns_listen")
    assert field.default is None


async def test_proxy_master_gets_the_dns_mode(tmp_path: Path) -> None:
    from egresswatch.commands.proxy import build_master
    from egresswatch.runtime import Settings

    sink = mitm.RecordingSink()
    conf = ProxyConfig(
        settings=Settings(store=False), dns_listen=("127.0.0.1", 5399), confdir=tmp_path
    )
    master = build_master(conf, mitm.fake_inspector(), sink)
    assert list(master.options.mode) == ["regular", "dns@127.0.0.1:5399"]
    plain = build_master(dataclasses.replace(conf, dns_listen=None), mitm.fake_inspector(), sink)
    assert list(plain.options.mode) == ["regular"]


async def test_canary_addon_runs_before_mitmproxys_resolver(tmp_path: Path) -> None:
    from mitmproxy.addons.dns_resolver import DnsResolver

    from egresswatch.commands.proxy import build_master
    from egresswatch.runtime import Settings

    conf = ProxyConfig(
        settings=Settings(store=False), dns_listen=("127.0.0.1", 5399), confdir=tmp_path
    )
    master = build_master(conf, mitm.fake_inspector(), mitm.RecordingSink())
    kinds = [type(a) for a in master.addons.chain]
    # addons see dns_request in chain order: the canary is answered before any upstream lookup
    assert kinds.index(proxy.DohCanary) < kinds.index(DnsResolver)
    assert kinds.index(DnsResolver) < kinds.index(proxy.EgressWatch)


def test_egresswatch_answers_the_canary_even_after_a_resolver() -> None:
    # As a `mitmdump -s` script the addon runs after the resolver: the answer is replaced.
    addon, _sink, _tctx = make()
    f = query("use-application-dns.net")
    f.response = f.request.succeed([a("use-application-dns.net", "192.0.2.99")])
    addon.dns_request(f)
    assert f.response.response_code == dns.response_codes.NXDOMAIN and not f.response.answers
    g = query("api.openai.com")
    g.response = g.request.succeed([a("api.openai.com", "198.51.100.20")])
    addon.dns_request(g)
    assert g.response.answers  # other answers untouched


# -- for real: gateway setup --dns + run --dns-listen in the namespace lab ----------------

DNSLAB = str(Path(__file__).parent / "helpers" / "dnslab.py")
#: the lab's upstream resolver, on a documentation address in the "internet" namespace
RESOLVER = "192.0.2.53"


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60
    )


def _resolve(ns: str, server: str, name: str) -> dict[str, object]:
    res = _in(ns, sys.executable, DNSLAB, "query", server, name)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.skipif(not is_root(), reason="needs root for namespaces and nftables")
@pytest.mark.root
@pytest.mark.slow
def test_gateway_dns_canary_and_learned_names_for_real(tmp_path: Path) -> None:
    from helpers.geoip import build_lab_db
    from helpers.lab import INTERNET_V4, internet_lab, wait_for
    from helpers.runmon import flow_rows, start_run
    from helpers.servers import make_pki, read_log

    us = INTERNET_V4["us"]  # api.deepseek.com resolves to a US address in this lab
    pki = make_pki(tmp_path / "pki", ["api.deepseek.com"], [us])
    geo = build_lab_db(tmp_path / "lab.mmdb")
    server_log, dns_log = tmp_path / "server.jsonl", tmp_path / "dns.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "EGRESSWATCH_CONFIG": "",
        "EGRESSWATCH_DB": "",
        "EGRESSWATCH_POLICY": "",
    }
    db = tmp_path / "data" / "egresswatch" / "egresswatch.db"
    with internet_lab("pdn", v6=False) as net:
        lab = net.lab
        lab.add_addr(net.internet, f"{RESOLVER}/32")
        lab.spawn(
            net.internet,
            [
                sys.executable,
                DNSLAB,
                "serve",
                RESOLVER,
                "53",
                str(dns_log),
                f"api.deepseek.com={us}",
            ],
            ready="READY",
        )
        lab.spawn(
            net.internet,
            [
                sys.executable,
                str(Path(__file__).parent / "helpers/servers.py"),
                "--bind",
                us,
                "--https",
                "443",
                "--cert",
                str(pki.cert),
                "--key",
                str(pki.key),
                "--log",
                str(server_log),
            ],
            ready="READY",
        )
        # The gateway's own resolver is the lab's (mitmproxy asks the system's name servers;
        # `ip netns exec` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf).
        (Path("/etc/netns") / net.gateway / "resolv.conf").write_text(
            f"nameserver {RESOLVER}\noptions timeout:1 attempts:1\n"
        )
        lab.tables.append((net.gateway, "inet egresswatch"))
        res = _in(
            net.gateway,
            egresswatch_bin(),
            "gateway",
            "setup",
            "--lan",
            net.client_iface,
            "--block-quic",
            "--dns",
            "--dns-port",
            "5353",
        )
        assert res.returncode == 0, res.stderr
        rp = start_run(
            lab,
            net.gateway,
            [
                egresswatch_bin(),
                "run",
                "--proxy-mode",
                "transparent",
                "--listen",
                "0.0.0.0:8080",
                "--dns-listen",
                "0.0.0.0:5353",
                "--mode",
                "enforce",
                "--upstream-ca",
                str(pki.ca_cert),
                "--country-db",
                str(geo),
                "--no-metrics",
            ],
            env,
        )
        assert rp.wait_line("DNS: serving on 0.0.0.0:5353", 5)
        ca = home / ".mitmproxy" / "mitmproxy-ca-cert.pem"
        curl = [
            "curl",
            "-sS",
            "--max-time",
            "15",
            "--noproxy",
            "*",
            "--cacert",
            str(ca),
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            f"https://{us}/v1/chat/completions",
        ]  # an address: curl sends no SNI
        # 1. Before any DNS answer the bare address is only a US address: allowed.
        res = _in(net.client, *curl)
        assert res.returncode == 0, res.stderr
        assert [e for e in read_log(server_log) if e["event"] == "request"]
        assert not [e for e in read_log(server_log) if e["event"] == "tls" and e.get("sni")]
        # 2. The client asks "its" resolver (any address: port 53 goes to the gateway).
        answer = _resolve(net.client, RESOLVER, "api.deepseek.com")
        assert answer == {"rcode": 0, "id_ok": True, "addrs": [us]}, answer
        asked = [json.loads(line) for line in dns_log.read_text().splitlines()]
        # relayed by egresswatch on the gateway, not sent by the client itself
        assert {(q["name"], q["peer"]) for q in asked} == {("api.deepseek.com", "10.77.2.1")}
        # 3. The DoH canary: NXDOMAIN, and the upstream resolver never hears of it.
        for name in ("use-application-dns.net", "x.use-application-dns.net"):
            answer = _resolve(net.client, RESOLVER, name)
            assert answer["rcode"] == 3 and answer["addrs"] == [], answer  # NXDOMAIN
        other = _resolve(net.client, RESOLVER, "nothing.example")
        assert other["rcode"] == 3  # a real NXDOMAIN, from upstream
        assert wait_for(lambda: "nothing.example" in dns_log.read_text(), 5)
        assert "use-application-dns" not in dns_log.read_text()
        # 4. The same bare-address HTTPS request is now judged by the learned name:
        # DeepSeek's operator is in CN, so enforce mode refuses the ClientHello.
        before = len(read_log(server_log))
        res = _in(net.client, *curl)
        assert res.returncode != 0, res.stdout
        time.sleep(0.5)
        assert not [e for e in read_log(server_log)[before:] if e["event"] == "connect"]
        os.kill(rp.proc.pid, signal.SIGTERM)
        assert rp.proc.wait(60) == 0, rp.output()
        rows = [r for r in flow_rows(db) if r.sensor == "proxy" and r.dst_addr == us]
        named = [r for r in rows if r.dns_name == "api.deepseek.com"]
        assert named, [(r.stage, r.dns_name, r.verdict) for r in rows]
        row = named[-1]
        assert row.sni is None and row.stage == "clienthello"
        assert (row.verdict, row.operator_country, row.country) == ("block", "CN", "US")
        # the allowed request before the answer carried no name
        assert any(r.dns_name is None and r.verdict == "allow" for r in rows)
